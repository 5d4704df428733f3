//! The `#[locked]` task attribute for locksmith. Use it through `locksmith::locked`.
//!
//! Work in progress (issue 15): this crate is being built.
