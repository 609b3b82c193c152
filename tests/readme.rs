//! README.md's quick start is the code of `examples/quickstart/src/main.rs`, which the
//! workspace build compiles and `cargo run -p quickstart` runs: a README change that no
//! longer compiles, or a change of the example not copied to the README, fails here.

#[test]
fn readme_quick_start_is_the_quickstart_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart/src/main.rs");
    let start = readme.find("```rust\n").expect("README has a rust block") + "```rust\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let code = example[example.find("\nuse ").unwrap() + 1..].trim_end();
    assert_eq!(block.trim_end(), code, "copy examples/quickstart/src/main.rs into README.md's quick start");
}
