//! README.md's quick start is the code of `src/bin/readme-quickstart.rs`, which the
//! workspace build compiles: a README change that no longer compiles, or a change of
//! the binary not copied to the README, fails here.

#[test]
fn readme_quick_start_is_the_compiled_example() {
    let readme = include_str!("../README.md");
    let bin = include_str!("src/bin/readme-quickstart.rs");
    let start = readme.find("```rust\n").expect("README has a rust block") + "```rust\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let code_start = bin.find("use ").unwrap();
    let code = bin[code_start..bin.rfind("fn main() {}").unwrap()].trim_end();
    assert_eq!(block.trim_end(), code, "copy src/bin/readme-quickstart.rs into README.md's quick start");
}
