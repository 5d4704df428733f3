//! Name templates: `"sync:{user.id}:{lang|region}"`.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use syn::{Expr, Ident, LitStr, Member};

/// A piece of a template.
pub(crate) enum Part {
    /// Literal text.
    Text(String),
    /// `{a}` (one alternative) or `{a|b|c}` (a priority list).
    Hole { alts: Vec<TokenStream> },
}

fn err(lit: &LitStr, msg: String) -> syn::Error {
    syn::Error::new(lit.span(), msg)
}

/// Gives every token of `tokens` the span `span`, so errors in the generated expression
/// (a missing field, a type without `Display`) point at the template.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut new = Group::new(g.delimiter(), respan(g.stream(), span));
                new.set_span(span);
                TokenTree::Group(new)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// The parameter an access path starts from, or why it is not one.
fn root(expr: &Expr) -> Result<Ident, &'static str> {
    match expr {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => p
            .path
            .get_ident()
            .cloned()
            .ok_or("a placeholder starts with a parameter name, not a path"),
        Expr::Field(f) => match &f.member {
            Member::Named(_) | Member::Unnamed(_) => root(&f.base),
        },
        Expr::Index(i) => match &*i.index {
            Expr::Lit(_) | Expr::Path(_) | Expr::Unary(_) => root(&i.expr),
            _ => Err("an index in a placeholder is a literal or a parameter, as in {items[2]}"),
        },
        _ => Err(
            "a placeholder is a parameter, its fields and indexes — {p}, {p.field}, {p.0}, {p[2]}, {self.id} — or a priority list {a|b|c}",
        ),
    }
}

/// Splits a template into text and holes, checking every hole against the parameters.
pub(crate) fn parse(lit: &LitStr, params: &[Ident], has_self: bool) -> syn::Result<Vec<Part>> {
    let text = lit.value();
    let mut parts = Vec::new();
    let mut buf = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                buf.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                buf.push('}');
            }
            '}' => {
                return Err(err(
                    lit,
                    format!(
                        "unmatched `}}` in the name template {text:?} — write `}}}}` for a literal brace"
                    ),
                ));
            }
            '{' => {
                let mut inner = String::new();
                let mut depth = 0usize;
                let mut closed = false;
                for c in chars.by_ref() {
                    match c {
                        '[' | '(' => depth += 1,
                        ']' | ')' => depth = depth.saturating_sub(1),
                        '}' if depth == 0 => {
                            closed = true;
                            break;
                        }
                        _ => {}
                    }
                    inner.push(c);
                }
                if !closed {
                    return Err(err(
                        lit,
                        format!(
                            "unclosed `{{` in the name template {text:?} — close the placeholder, or write `{{{{` for a literal brace"
                        ),
                    ));
                }
                if !buf.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut buf)));
                }
                parts.push(hole(lit, &inner, params, has_self)?);
            }
            c => buf.push(c),
        }
    }
    if !buf.is_empty() {
        parts.push(Part::Text(buf));
    }
    Ok(parts)
}

fn hole(lit: &LitStr, inner: &str, params: &[Ident], has_self: bool) -> syn::Result<Part> {
    let mut alts = Vec::new();
    for alt in inner.split('|') {
        let alt = alt.trim();
        if alt.is_empty() {
            return Err(err(
                lit,
                format!(
                    "empty placeholder `{{{inner}}}` in the name template — name a parameter, e.g. {{user_id}}"
                ),
            ));
        }
        let expr: Expr = syn::parse_str(alt).map_err(|_| {
            err(
                lit,
                format!(
                    "`{{{alt}}}` is not a placeholder — use a parameter, its fields and indexes: {{p}}, {{p.field}}, {{p.0}}, {{p[2]}}, {{self.id}}, or a priority list {{a|b|c}}"
                ),
            )
        })?;
        let root = root(&expr).map_err(|why| err(lit, format!("`{{{alt}}}`: {why}")))?;
        if root == "self" {
            if !has_self {
                return Err(err(
                    lit,
                    format!(
                        "`{{{alt}}}` names `self`, but this function has no `self` parameter — use one of its parameters"
                    ),
                ));
            }
        } else if !params.contains(&root) {
            let list = if params.is_empty() {
                "it has none".to_string()
            } else {
                let names: Vec<String> = params.iter().map(ToString::to_string).collect();
                format!("its parameters are {}", names.join(", "))
            };
            return Err(err(
                lit,
                format!(
                    "the name template names `{root}` in `{{{alt}}}`, but the function has no parameter `{root}` — {list}"
                ),
            ));
        }
        let tokens: TokenStream = alt.parse().expect("parsed as an expression above");
        alts.push(respan(tokens, lit.span()));
    }
    Ok(Part::Hole { alts })
}
