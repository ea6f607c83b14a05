//! Stack use on small boards: the main types stay within fixed `size_of` bounds (buffers live
//! behind one allocation each, made when a tunnel opens, never on the stack).

use std::mem::size_of;

use connect_tunnel::{Config, Connector, Error, Proxy, Target, Tunnel, TunnelReader, TunnelWriter};

#[test]
fn main_types_stay_small() {
    let sizes = [
        ("Tunnel", size_of::<Tunnel>(), 160),
        ("TunnelReader", size_of::<TunnelReader>(), 96),
        ("TunnelWriter", size_of::<TunnelWriter>(), 32),
        ("Connector", size_of::<Connector>(), 600),
        ("Config", size_of::<Config>(), 448),
        ("Proxy", size_of::<Proxy>(), 96),
        ("Target", size_of::<Target>(), 48),
        ("Error", size_of::<Error>(), 64),
        (
            "Result<Tunnel, Error>",
            size_of::<Result<Tunnel, Error>>(),
            160,
        ),
    ];
    for (name, size, bound) in sizes {
        println!("{name}: {size} bytes (bound {bound})");
    }
    for (name, size, bound) in sizes {
        assert!(
            size <= bound,
            "{name} is {size} bytes, over its bound of {bound}"
        );
    }
}
