//! tollway's native kernels. Plain Rust with no Python types, so everything here is tested
//! with `cargo test`; the PyO3 bindings live in the `tollway-py` crate.
//!
//! - [`sse`]: an incremental server-sent-events parser (WHATWG event-stream semantics).
#![forbid(unsafe_code)]

pub mod sse;
