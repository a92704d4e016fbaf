//! Compile-time behaviour of `#[durable_object]`: what it accepts, and the
//! error (spanned at the user's token) for everything it rejects.
//!
//! Regenerate the expected errors with `TRYBUILD=overwrite cargo test --test ui`
//! and read every diff before committing it.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
