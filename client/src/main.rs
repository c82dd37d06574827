//! `ghostwire`, the terminal client (issue 3 builds it).
fn main() {}
