//! tollway's native kernels. Plain Rust with no Python types, so everything here is tested
//! with `cargo test`; the PyO3 bindings live in the `tollway-py` crate.
//!
//! - [`chat_stream`]: the OpenAI chat stream as the gateway relays it (SSE, usage, output text).
//! - [`eventstream`]: an incremental decoder for the AWS event-stream binary framing (Bedrock).
//! - [`limiter`]: rate limiters (GCRA, token bucket), concurrency leases and budget windows,
//!   with reservations.
//! - [`policy`]: the compiled policy selector index.
//! - [`sse`]: an incremental server-sent-events parser (WHATWG event-stream semantics).
//! - [`tokens`]: exact BPE token counting, chat-aware counting, streamed-output counting.
#![forbid(unsafe_code)]

pub mod chat_stream;
pub mod eventstream;
pub mod limiter;
pub mod policy;
pub mod sse;
pub mod tokens;
