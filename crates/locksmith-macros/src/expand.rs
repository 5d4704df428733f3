//! The expansion of `#[locked]`.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::args::{Args, DurOpt, NameOpt, WaitOpt};
use crate::template::{self, Part};

/// What the function returns, as far as the attribute needs to know.
enum Ret {
    /// No return type: `()`.
    Unit,
    /// A type whose last path segment is `Result` (`Result<T, E>`, `io::Result<T>`,
    /// `anyhow::Result<T>`): locksmith's errors go to `Err(e.into())`.
    Result(Box<Type>),
    /// Anything else: needs `on_locked`.
    Other(Box<Type>),
}

impl Ret {
    fn of(output: &ReturnType) -> Ret {
        match output {
            ReturnType::Default => Ret::Unit,
            ReturnType::Type(_, ty) => {
                let mut inner: &Type = ty;
                while let Type::Paren(p) = inner {
                    inner = &p.elem;
                }
                match inner {
                    Type::Path(p)
                        if p.qself.is_none()
                            && p.path.segments.last().is_some_and(|s| s.ident == "Result") =>
                    {
                        Ret::Result(ty.clone())
                    }
                    Type::Tuple(t) if t.elems.is_empty() => Ret::Unit,
                    _ => Ret::Other(ty.clone()),
                }
            }
        }
    }

    fn ty(&self) -> Option<&Type> {
        match self {
            Ret::Unit => None,
            Ret::Result(t) | Ret::Other(t) => Some(t),
        }
    }

    /// Whether the type can be written in a `let` (no `impl Trait`).
    fn nameable(&self) -> bool {
        fn has_impl(tokens: TokenStream) -> bool {
            tokens.into_iter().any(|tt| match tt {
                TokenTree::Ident(i) => i == "impl",
                TokenTree::Group(g) => has_impl(g.stream()),
                _ => false,
            })
        }
        match self.ty() {
            None => true,
            Some(t) => !has_impl(quote!(#t)),
        }
    }
}

fn duration(d: &DurOpt) -> TokenStream {
    match d {
        DurOpt::Lit(d, _) => {
            let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
            quote!(::core::time::Duration::new(#secs, #nanos))
        }
        DurOpt::Expr(e) => {
            quote_spanned!(e.span()=> {
                let __ls_duration: ::core::time::Duration = #e;
                __ls_duration
            })
        }
    }
}

fn opt_duration(d: Option<&DurOpt>) -> TokenStream {
    match d {
        Some(d) => {
            let d = duration(d);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// The statements that build `__ls_name`.
fn name_code(
    krate: &TokenStream,
    args: &Args,
    func: &ItemFn,
    params: &[Ident],
    has_self: bool,
) -> syn::Result<TokenStream> {
    let private = quote!(#krate::__private);
    match &args.name {
        Some(NameOpt::Expr(e)) => Ok(quote_spanned! {e.span()=>
            #[allow(clippy::needless_borrow, clippy::useless_conversion)]
            let __ls_name: ::std::string::String = ::std::string::ToString::to_string(&(#e));
        }),
        Some(NameOpt::Template(lit)) => {
            let mut stmts = Vec::new();
            for part in template::parse(lit, params, has_self)? {
                match part {
                    Part::Text(t) => stmts.push(quote!(__ls_name.push_str(#t);)),
                    Part::Hole { alts } if alts.len() == 1 => {
                        let a = &alts[0];
                        stmts.push(quote_spanned! {lit.span()=>
                            __ls_name.push_str(&(&&&#private::Arg(&(#a))).text_of());
                        });
                    }
                    Part::Hole { alts } => {
                        let first = &alts[0];
                        let rest = &alts[1..];
                        stmts.push(quote_spanned! {lit.span()=>
                            let __ls_segment = (&&&#private::Arg(&(#first))).segment_of()
                                #( .or_else(|| (&&&#private::Arg(&(#rest))).segment_of()) )*;
                            #private::push_segment(&mut __ls_name, __ls_segment, true);
                        });
                    }
                }
            }
            Ok(quote! {
                #[allow(clippy::needless_borrow)]
                let __ls_name: ::std::string::String = {
                    #[allow(unused_imports)]
                    use #private::{DisplaySegment as _, KnownSegment as _, OptionSegment as _};
                    let mut __ls_name = ::std::string::String::new();
                    #(#stmts)*
                    __ls_name
                };
            })
        }
        None => {
            for s in &args.skip {
                if !params.contains(s) {
                    let names: Vec<String> = params.iter().map(ToString::to_string).collect();
                    return Err(syn::Error::new(
                        s.span(),
                        format!(
                            "`skip({s})`: the function has no parameter `{s}` — its parameters are {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
            }
            let base = format!("::{}", func.sig.ident.unraw());
            let pushes = params
                .iter()
                .filter(|p| !args.skip.contains(p))
                .map(|p| quote!((&&#private::Arg(&#p)).push_to(&mut __ls_name);));
            Ok(quote! {
                #[allow(clippy::needless_borrow)]
                let __ls_name: ::std::string::String = {
                    #[allow(unused_imports)]
                    use #private::{PushDisplay as _, SkipArg as _};
                    let mut __ls_name = ::std::string::String::from(::core::module_path!());
                    __ls_name.push_str(#base);
                    #(#pushes)*
                    __ls_name
                };
            })
        }
    }
}

/// `ident.unraw()` without the `IdentExt` import noise at the call site.
trait Unraw {
    fn unraw(&self) -> String;
}

impl Unraw for Ident {
    fn unraw(&self) -> String {
        let s = self.to_string();
        s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
    }
}

pub(crate) fn expand(args: Args, mut func: ItemFn) -> syn::Result<TokenStream> {
    let sig = &func.sig;
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span(),
            "#[locked] cannot go on a `const fn`: taking a lock happens at run time",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "#[locked] cannot go on a variadic function",
        ));
    }
    if args.name.is_some()
        && let Some(span) = args.skip_span
    {
        return Err(syn::Error::new(
            span,
            "`skip` only changes the default name — with `name = …` given, leave it out",
        ));
    }
    let krate = match &args.krate {
        Some(p) => quote!(#p),
        None => quote!(::locksmith),
    };
    let private = quote!(#krate::__private);

    let mut params = Vec::new();
    let mut has_self = false;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => has_self = true,
            FnArg::Typed(pt) => {
                if let Pat::Ident(pi) = &*pt.pat
                    && pi.subpat.is_none()
                {
                    params.push(pi.ident.clone());
                }
            }
        }
    }

    let ret = Ret::of(&sig.output);
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, t) => t.span(),
    };
    if args.on_locked.is_none() && !matches!(ret, Ret::Result(_)) {
        let msg = match &ret {
            Ret::Unit => format!(
                "#[locked] on `{}`, which returns nothing: say what a busy call returns with `on_locked = ()`, or return a Result whose error type implements From<locksmith::Error>",
                sig.ident
            ),
            _ => "#[locked] needs somewhere to report a busy lock: return a Result whose error type implements From<locksmith::Error>, or give `on_locked = VALUE` (the value returned when the lock is held elsewhere)".to_string(),
        };
        return Err(syn::Error::new(ret_span, msg));
    }

    let name = name_code(&krate, &args, &func, &params, has_self)?;

    let store = match &args.store {
        Some(s) => quote!(#s),
        None => quote!("default"),
    };
    let ttl = opt_duration(args.ttl.as_ref());
    let min_hold = opt_duration(args.min_hold.as_ref());
    let wait = match &args.wait {
        None | Some(WaitOpt::No) => quote!(#krate::Wait::No),
        Some(WaitOpt::Forever) => quote!(#krate::Wait::Forever),
        Some(WaitOpt::Dur(d @ DurOpt::Lit(..))) => {
            let d = duration(d);
            quote!(#krate::Wait::For(#d))
        }
        Some(WaitOpt::Dur(DurOpt::Expr(e))) => {
            quote_spanned!(e.span()=> #private::IntoWait::into_wait(#e))
        }
    };
    let renew = args.renew.as_ref().is_none_or(|b| b.value);
    // locksmith refuses this at run time (InvalidOption); with literals it is known now.
    if !renew && let Some(DurOpt::Lit(min_hold, span)) = &args.min_hold {
        let ttl = match &args.ttl {
            Some(DurOpt::Lit(ttl, _)) => Some(*ttl),
            Some(DurOpt::Expr(_)) => None,
            None => Some(std::time::Duration::from_secs(60)),
        };
        if let Some(ttl) = ttl
            && *min_hold > ttl
        {
            return Err(syn::Error::new(
                *span,
                format!(
                    "`min_hold` ({min_hold:?}) is longer than the TTL ({ttl:?}) with `renew = false`: the bare lease would end first — raise `ttl`, or drop `renew = false`"
                ),
            ));
        }
    }

    // The value of a busy call, checked against the return type where it can be named.
    let on_locked = args.on_locked.as_ref().map(|e| match ret.ty() {
        Some(t) if ret.nameable() => quote_spanned! {e.span()=>
            { let __ls_locked: #t = #e; __ls_locked }
        },
        _ => quote!(#e),
    });

    let contention = on_locked.as_ref().map(|v| {
        quote! {
            if __ls_error.is_contention() {
                return #v;
            }
        }
    });
    let other_error = match (&ret, &on_locked) {
        (Ret::Result(_), _) => quote_spanned! {ret_span=>
            return ::core::result::Result::Err(::core::convert::From::from(__ls_error));
        },
        (_, Some(v)) => quote! {
            #private::unreported(&__ls_label, &__ls_error);
            return #v;
        },
        (_, None) => unreachable!("checked above"),
    };
    let keep_label = if matches!(ret, Ret::Result(_)) {
        quote!()
    } else {
        quote!(let __ls_label = ::std::clone::Clone::clone(&__ls_name);)
    };

    // Pins the body's type to the return type, so `?` inside it converts as in the
    // original function.
    let pin_type = match ret.ty() {
        Some(t) if ret.nameable() => quote! {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
            if false {
                let __ls_unreachable: #t = loop {};
                return __ls_unreachable;
            }
        },
        _ => quote!(),
    };
    let block = &func.block;
    let run = if sig.asyncness.is_some() {
        quote! {
            #private::run_async(__ls_spec, __ls_name, async move {
                #pin_type
                #block
            }).await
        }
    } else {
        let arrow = match ret.ty() {
            Some(t) if ret.nameable() => quote!(-> #t),
            _ => quote!(),
        };
        quote! {
            #private::run_blocking(__ls_spec, __ls_name, || #arrow #block)
        }
    };

    let body = quote! {
        {
            #name
            let __ls_spec = #private::Spec {
                store: #store,
                ttl: #ttl,
                wait: #wait,
                min_hold: #min_hold,
                renew: #renew,
            };
            #keep_label
            // The user's tokens (on_locked, the return type) appear in here, so lints about
            // the generated shape would land on their code.
            #[allow(clippy::unused_unit, clippy::useless_conversion, clippy::needless_return)]
            let __ls_result = match #run {
                ::core::result::Result::Ok(__ls_value) => __ls_value,
                ::core::result::Result::Err(__ls_error) => {
                    #contention
                    #other_error
                }
            };
            __ls_result
        }
    };
    *func.block = syn::parse2(body)?;
    Ok(quote!(#func))
}
