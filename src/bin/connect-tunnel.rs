//! The connect-tunnel command-line tool (being written).
fn main() {}
