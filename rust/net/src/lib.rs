//! tollway's upstream transport: everything between the gateway and a provider's socket.
//!
//! - [`transport`]: a provider's pooled HTTP/1.1 and HTTP/2 client (hyper), the requests in
//!   flight per origin, timeouts, and bounded reading of an answer.
//! - [`connect`]: TCP without Nagle's delay, proxies (the environment's or a provider's own),
//!   TLS ([`tls`]: rustls, the system's roots plus a provider's CA, client certificates).
//! - [`decode`]: `Content-Encoding` decoding with size and ratio bounds.
//! - [`pump`]: the byte side of the stream pump, with backpressure.
//! - [`client_socket`]: how much of a stream has left the process for the client.
//! - [`runtime`]: the one runtime thread per process that drives all of it.
//!
//! No Python here: the `tollway-py` crate hands requests in and results back to asyncio.

pub mod client_socket;
pub mod connect;
pub mod decode;
pub mod error;
pub mod pump;
pub mod runtime;
pub mod tls;
pub mod transport;

pub use error::{ConfigError, FailureKind, NetError};
