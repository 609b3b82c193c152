//! Compile-fail tests of `#[derive(Event)]` and `#[event_handler]`: each error message
//! and its span are checked in `ui/*.stderr`.

#[test]
fn macro_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
