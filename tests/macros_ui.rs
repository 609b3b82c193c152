//! UI tests of `#[derive(Event)]` and `#[event_handler]`: `ui/pass/*.rs` must compile
//! and run; each error message and its span of `ui/fail/*.rs` is checked against its
//! `.stderr` (regenerate with `TRYBUILD=overwrite` and review the diff).

#[test]
fn macros_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
