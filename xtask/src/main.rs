//! xtask: `cargo xtask test|lab|bench`.
fn main() {}
