//! l2announcer: the node agent binary.
fn main() {}
