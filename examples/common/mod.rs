//! Code shared by the examples: the reference reverse proxy, the RTP media source and server, the
//! latency-bound experiment, and a small stderr logger.
//!
//! Each example includes this folder with `#[path = "common/mod.rs"] mod common;` and uses the
//! parts it needs, so items one example does not use are expected.
#![allow(dead_code)]

pub mod latency_lab;
pub mod logger;
pub mod media;
pub mod reverse_proxy;
