//! The options of `#[locked(...)]`, parsed and checked.

use std::time::Duration;

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitStr, Path};

/// Every option, for "unknown option" messages.
pub(crate) const OPTIONS: &[&str] = &[
    "name",
    "skip",
    "ttl",
    "wait",
    "min_hold",
    "renew",
    "store",
    "on_locked",
    "crate",
];

/// The longest duration locksmith accepts (`locksmith::MAX_DURATION`): 100 years of 365.25 days.
const MAX_DURATION: Duration = Duration::from_secs(100 * 36_525 * 24 * 36);
/// The shortest TTL (`locksmith::MIN_TTL`).
const MIN_TTL: Duration = Duration::from_millis(50);

/// `name = …`.
pub(crate) enum NameOpt {
    /// A string literal: a template.
    Template(LitStr),
    /// Any other expression: the name itself.
    Expr(Expr),
}

/// A duration option.
pub(crate) enum DurOpt {
    /// A literal such as `"30s"`, parsed here, and where it was written.
    Lit(Duration, Span),
    /// A Rust expression of type `Duration`.
    Expr(Expr),
}

/// `wait = …`.
pub(crate) enum WaitOpt {
    No,
    Forever,
    Dur(DurOpt),
}

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<NameOpt>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) skip_span: Option<Span>,
    pub(crate) ttl: Option<DurOpt>,
    pub(crate) wait: Option<WaitOpt>,
    pub(crate) min_hold: Option<DurOpt>,
    pub(crate) renew: Option<LitBool>,
    pub(crate) store: Option<LitStr>,
    pub(crate) on_locked: Option<Expr>,
    pub(crate) krate: Option<Path>,
    seen: Vec<String>,
}

fn lit_of(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(g) => lit_of(&g.expr),
        _ => None,
    }
}

/// Parses a duration literal the way locksmith's URLs do (humantime: `500ms`, `30s`,
/// `1h 30m`, `2days`), or keeps an expression.
fn duration(option: &str, expr: Expr) -> syn::Result<DurOpt> {
    match lit_of(&expr) {
        Some(Lit::Str(s)) => {
            let text = s.value();
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                syn::Error::new(
                    s.span(),
                    format!(
                        "`{option}`: {text:?} is not a duration ({e}) — write it like \"500ms\", \"30s\", \"5m\" or \"1h 30m\", or give an expression of type Duration"
                    ),
                )
            })?;
            if d > MAX_DURATION {
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "`{option}`: {text:?} is longer than locksmith's 100-year limit (MAX_DURATION)"
                    ),
                ));
            }
            if option == "ttl" && d < MIN_TTL {
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "`ttl`: {text:?} is below locksmith's minimum TTL of 50ms (MIN_TTL): the lease would end before it could be used — use seconds"
                    ),
                ));
            }
            Ok(DurOpt::Lit(d, s.span()))
        }
        Some(lit) => Err(syn::Error::new(
            lit.span(),
            format!(
                "`{option}` takes a duration: a string literal such as \"30s\" or an expression of type std::time::Duration (a bare number has no unit)"
            ),
        )),
        None => Ok(DurOpt::Expr(expr)),
    }
}

fn wait(expr: Expr) -> syn::Result<WaitOpt> {
    if let Expr::Path(p) = &expr
        && p.qself.is_none()
        && let Some(ident) = p.path.get_ident()
    {
        if ident == "no" {
            return Ok(WaitOpt::No);
        }
        if ident == "forever" {
            return Ok(WaitOpt::Forever);
        }
    }
    match lit_of(&expr) {
        Some(Lit::Str(s)) => match humantime::parse_duration(s.value().trim()) {
            Ok(_) => Ok(WaitOpt::Dur(duration("wait", expr.clone())?)),
            Err(_) => Err(syn::Error::new(
                s.span(),
                format!(
                    "`wait`: {:?} is not a duration — write one like \"500ms\", \"10s\" or \"5m\", or `no` / `forever` without quotes",
                    s.value()
                ),
            )),
        },
        None => Ok(WaitOpt::Dur(duration("wait", expr)?)),
        Some(lit) => Err(syn::Error::new(
            lit.span(),
            "`wait` takes `no` (the default: skip when busy), `forever`, a duration such as \"5s\", or an expression of type Duration or locksmith::Wait",
        )),
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Args {
    /// Parses one `key = value` or `skip(...)` entry.
    pub(crate) fn parse_entry(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = match meta.path.get_ident() {
            Some(ident) => ident.to_string(),
            None => {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    "#[locked] options are single words such as `ttl = \"30s\"`",
                ));
            }
        };
        if !OPTIONS.contains(&key.as_str()) {
            let hint = OPTIONS
                .iter()
                .filter(|o| distance(o, &key) <= 2)
                .min_by_key(|o| distance(o, &key))
                .map(|o| format!(" — did you mean `{o}`?"))
                .unwrap_or_default();
            return Err(syn::Error::new_spanned(
                &meta.path,
                format!(
                    "unknown #[locked] option `{key}`{hint} (the options are {})",
                    OPTIONS.join(", ")
                ),
            ));
        }
        if self.seen.contains(&key) {
            return Err(syn::Error::new_spanned(
                &meta.path,
                format!("`{key}` is given twice — keep one"),
            ));
        }
        self.seen.push(key.clone());
        if key == "skip" {
            if !meta.input.peek(syn::token::Paren) {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    "`skip` lists parameters: `skip(a, b)`",
                ));
            }
            self.skip_span = Some(meta.path.span());
            return meta.parse_nested_meta(|inner| match inner.path.get_ident() {
                Some(ident) if inner.input.is_empty() || inner.input.peek(syn::Token![,]) => {
                    self.skip.push(ident.clone());
                    Ok(())
                }
                _ => Err(syn::Error::new_spanned(
                    &inner.path,
                    "`skip(...)` takes parameter names: `skip(a, b)`",
                )),
            });
        }
        let value: Expr = meta.value()?.parse()?;
        match key.as_str() {
            "name" => {
                self.name = Some(match lit_of(&value) {
                    Some(Lit::Str(s)) => NameOpt::Template(s.clone()),
                    _ => NameOpt::Expr(value),
                });
            }
            "ttl" => self.ttl = Some(duration("ttl", value)?),
            "min_hold" => self.min_hold = Some(duration("min_hold", value)?),
            "wait" => self.wait = Some(wait(value)?),
            "renew" => match lit_of(&value) {
                Some(Lit::Bool(b)) => self.renew = Some(b.clone()),
                _ => {
                    return Err(syn::Error::new_spanned(
                        &value,
                        "`renew` takes `true` (the default: renew the lease while the body runs) or `false` (a bare lease that ends at its TTL)",
                    ));
                }
            },
            "store" => match lit_of(&value) {
                Some(Lit::Str(s)) if !s.value().is_empty() => self.store = Some(s.clone()),
                _ => {
                    return Err(syn::Error::new_spanned(
                        &value,
                        "`store` takes the alias of a store installed with locksmith::stores::install, as a non-empty string literal, e.g. store = \"jobs\"",
                    ));
                }
            },
            "on_locked" => self.on_locked = Some(value),
            "crate" => match value {
                Expr::Path(p) if p.qself.is_none() => self.krate = Some(p.path),
                other => {
                    return Err(syn::Error::new_spanned(
                        &other,
                        "`crate` takes the path locksmith is reachable under, e.g. crate = ::my_reexports::locksmith",
                    ));
                }
            },
            _ => unreachable!("checked against OPTIONS"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("tll", "ttl"), 1);
        assert_eq!(distance("ttl", "ttl"), 0);
        assert_eq!(distance("min_hodl", "min_hold"), 2);
        assert_eq!(distance("", "abc"), 3);
    }
}
