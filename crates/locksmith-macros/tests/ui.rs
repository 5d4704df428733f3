//! Every misuse of `#[locked]` is a compile error pointing at its cause: one case per rule.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p locksmith-macros
//! --test ui`, then review the diff.

#[test]
fn misuse_is_a_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
