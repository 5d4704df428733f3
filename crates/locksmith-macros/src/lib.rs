//! The `#[locked]` task attribute for [locksmith](https://docs.rs/locksmith). Use it
//! through `locksmith::locked` (locksmith's `macros` feature, on by default); this crate's
//! generated code calls into `locksmith` and is not usable on its own.

#![warn(missing_docs)]

mod args;
mod expand;
mod template;

use proc_macro::TokenStream;

/// Runs a function under a named lock, so that duplicate runs — in this process or any
/// other using the same store — are skipped, waited for or refused.
///
/// Put it on an `async fn` (the body runs under [`LockBuilder::run`]: the lease is renewed
/// while it runs, and a lost lease stops it at its next `.await`) or on a plain `fn` (through
/// the blocking facade; the body runs on the calling thread, which blocks while it waits for
/// the store — so call a plain `#[locked]` fn from async code only inside
/// `spawn_blocking`). Free functions, methods (`&self`, `&mut self`, `self`) and generic
/// functions are all fine.
///
/// ```
/// use locksmith::{Locksmith, locked, stores};
///
/// #[locked(ttl = "5m", min_hold = "50m")]
/// async fn hourly_report(day: u32) -> Result<String, locksmith::Error> {
///     // Runs at most once per 50 minutes per `day`, across every process of the store.
///     Ok(format!("report for day {day}"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// stores::install("default", Locksmith::connect("memory://").await?);
/// assert_eq!(hourly_report(2).await?, "report for day 2");
/// // The lock is kept for min_hold after the first run: the second call is busy.
/// assert!(hourly_report(2).await.unwrap_err().is_locked());
/// # Ok(()) }
/// ```
///
/// # The lock name
///
/// - **Default:** `<module path>::<fn>`, then `:<value>` for every argument whose type
///   implements `Display`, in order: `my_app::jobs::sync(42, "fr")` locks
///   `my_app::jobs::sync:42:fr`. Arguments without `Display` (`Vec`, `Option`, your structs
///   without it) are left out — it never fails to compile. In a generic function the
///   bounds decide: `T: Display` is included, a bare `T` is not. `self` is never included;
///   `skip(a, b)` leaves out more; parameters written as patterns (`(a, b): (u8, u8)`) are
///   left out.
/// - **`name = "template"`** — a string literal is a template for the whole name:
///   `{param}`, `{param.field}`, `{param.0}`, `{param[2]}`, `{self.id}`; `{{` and `}}` are
///   literal braces. `{a|b|c}` is a priority list: the first value that is not empty, where
///   `None`, `""`, `false`, `0` (and anything that displays as nothing) are empty; if all
///   are, nothing is added and a `:` just before the placeholder is dropped too, so no
///   empty segment is left. A plain `{opt}` of an `Option` shows its value, or nothing for
///   `None`. Placeholders are checked at compile time: naming a missing parameter is an
///   error, and so is a value without `Display`.
/// - **`name = EXPR`** — any other expression is the name itself (anything `Display`):
///   `name = format!("tenant/{}/sync", t.id)`, `name = JOB_NAME`.
///
/// Names are 1 to 255 bytes; a longer one (a long argument) fails the call with
/// `Error::InvalidName`. Names are not secret — anyone who can read the store sees them in
/// `list` and `inspect` — so `skip` arguments such as passwords or tokens, or give a `name`.
///
/// # Options
///
/// | option | meaning |
/// |---|---|
/// | `ttl = "30s"` | the lease (default 60 s); renewed while the body runs |
/// | `wait = no` | skip at once when busy (the default) |
/// | `wait = "10s"` / `wait = forever` | wait that long / until free; an expression of type `Duration` or `locksmith::Wait` works too |
/// | `min_hold = "1h"` | keep the lock after the call until at least `acquired_at + min_hold`: run at most once per period (ShedLock's `lockAtLeastFor`) |
/// | `renew = false` | a bare lease: the body runs under `ttl` without renewal |
/// | `store = "alias"` | the store installed under `alias` with `locksmith::stores::install`; default `"default"`, connected from `LOCKSMITH_URL` on first use |
/// | `on_locked = EXPR` | the value returned when the lock is busy, evaluated only then |
/// | `crate = path` | where locksmith is, if not `::locksmith` (for re-exports) |
///
/// Durations are string literals, parsed at compile time (`"500ms"`, `"30s"`, `"1h 30m"`;
/// a bad one is a compile error pointing at it), or any expression of type
/// `std::time::Duration`.
///
/// # Busy calls and errors
///
/// When the lock is held elsewhere (or the wait runs out), the function returns
/// `on_locked` if given. Otherwise it must return a `Result` (any type named `Result`,
/// such as `io::Result` or `anyhow::Result`) whose error type implements
/// `From<locksmith::Error>`, and returns `Err(e.into())` — `e.is_contention()` tells a busy
/// lock from a failure. Other locksmith errors (the store is down, the lease was lost while
/// the body ran) take the same `Err` path; a function that has no `Result` (only allowed
/// with `on_locked`) logs them with `tracing` and returns its `on_locked` value — the body
/// never runs without the lock.
///
/// An early `return`, a `?` error and a panic in the body all release the lock (a panic
/// resumes after the release); with `min_hold`, "release" keeps the lock until the period
/// ends.
///
/// ```
/// use locksmith::{Locksmith, locked, stores};
///
/// struct Mailbox {
///     id: u64,
/// }
///
/// impl Mailbox {
///     // One sync per mailbox at a time; a second caller gets `false` at once.
///     #[locked(name = "mailbox:{self.id}", store = "mail", on_locked = false)]
///     fn sync(&self) -> bool {
///         true
///     }
/// }
///
/// let lm = locksmith::blocking::Locksmith::connect("memory://")?;
/// stores::install("mail", lm.as_async().clone());
/// let held = lm.lock("mailbox:7").acquire()?;
/// assert!(!Mailbox { id: 7 }.sync());
/// assert!(Mailbox { id: 8 }.sync());
/// drop(held);
/// assert!(Mailbox { id: 7 }.sync());
/// # Ok::<(), locksmith::Error>(())
/// ```
///
/// # Compile errors
///
/// Every misuse is a compile error pointing at its cause: an unknown or repeated option, a
/// bad duration or `wait` value, a template naming a missing parameter (or `self` in a free
/// function), `skip` naming a missing parameter or combined with `name`, an `on_locked`
/// value of the wrong type, a return type that is not a `Result` without `on_locked`, an
/// error type without `From<locksmith::Error>`, a `const fn`.
///
/// [`LockBuilder::run`]: https://docs.rs/locksmith/latest/locksmith/struct.LockBuilder.html#method.run
#[proc_macro_attribute]
pub fn locked(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut args = args::Args::default();
    let parser = syn::meta::parser(|meta| args.parse_entry(meta));
    if let Err(e) = syn::parse::Parser::parse(parser, attr) {
        return with_item(e, item);
    }
    let func: syn::ItemFn = match syn::parse(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let span = first_token_after_attributes(item.clone().into());
            let e = syn::Error::new(
                span,
                "#[locked] goes on a function (`fn` or `async fn`, free or a method with a body)",
            );
            return with_item(e, item);
        }
    };
    match expand::expand(args, func) {
        Ok(tokens) => tokens.into(),
        Err(e) => with_item(e, item),
    }
}

/// Where an item starts, past its outer attributes (`#[...]`), for errors about the item.
fn first_token_after_attributes(item: proc_macro2::TokenStream) -> proc_macro2::Span {
    use proc_macro2::{Delimiter, TokenTree};
    let mut tokens = item.into_iter().peekable();
    while let Some(tt) = tokens.next() {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                if let Some(TokenTree::Group(g)) = tokens.peek()
                    && g.delimiter() == Delimiter::Bracket
                {
                    tokens.next();
                }
            }
            _ => return tt.span(),
        }
    }
    proc_macro2::Span::call_site()
}

/// The error, plus the item unchanged, so one mistake in the attribute does not bury the
/// user under "cannot find function" errors elsewhere.
fn with_item(e: syn::Error, item: TokenStream) -> TokenStream {
    let mut out: TokenStream = e.to_compile_error().into();
    out.extend(item);
    out
}
