//! How an upstream exchange failed, in one enum, and the failure kind each variant is.
//!
//! Messages are written to follow "provider `NAME` ": the Python side prefixes them. They never
//! contain a header value, a body, a credential or a proxy's userinfo.

use std::time::Duration;

/// The failure kinds the gateway distinguishes for transport failures (the Python
/// `FailureKind` values of the same names; status-code failures are classified in Python).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connect refused, DNS, TLS, proxy, or the connection closed before any answer.
    Unreachable,
    /// The pool wait, first-byte, idle or total timeout.
    Timeout,
    /// The provider answered something that is not its protocol, or over a size bound.
    BadResponse,
    /// The body ended or failed part-way.
    BrokenStream,
    /// The gateway's own client left while the request waited for a connection: it was not sent.
    CallerGone,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::Timeout => "timeout",
            FailureKind::BadResponse => "bad_response",
            FailureKind::BrokenStream => "broken_stream",
            FailureKind::CallerGone => "caller_gone",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("could not be reached: no connection within {}s (connect timeout)", secs(*.0))]
    ConnectTimeout(Duration),
    #[error("could not be reached: {0}")]
    Connect(String),
    #[error("could not be reached: TLS handshake failed: {0}")]
    Tls(String),
    #[error("could not be reached through proxy `{proxy}`: {reason}")]
    Proxy { proxy: String, reason: String },
    #[error(
        "had no connection free within {}s ({limit} requests already in flight to it, `max_connections_per_host`)",
        secs(*.waited)
    )]
    PoolTimeout { waited: Duration, limit: usize },
    #[error("sent no response within {}s (first-byte timeout)", secs(*.0))]
    FirstByteTimeout(Duration),
    #[error("sent nothing for {}s (idle timeout)", secs(*.0))]
    IdleTimeout(Duration),
    #[error("did not finish within {}s (total timeout)", secs(*.0))]
    TotalTimeout(Duration),
    #[error("sent response headers over {0} bytes (`max_header_bytes`)")]
    HeadersTooLarge(usize),
    #[error("sent a body over {0} bytes (`max_body_bytes`)")]
    BodyTooLarge(usize),
    #[error("sent a `{encoding}` body expanding more than {ratio}x (`max_decompressed_ratio`)")]
    DecompressionBomb { encoding: &'static str, ratio: u64 },
    #[error("sent a body encoded as `{0}`, which the gateway does not decode")]
    UnknownEncoding(String),
    #[error("sent a corrupt `{encoding}` body: {reason}")]
    CorruptEncoding {
        encoding: &'static str,
        reason: String,
    },
    #[error("answered with something that is not HTTP: {0}")]
    Protocol(String),
    #[error("closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("broke off its response: {0}")]
    BrokenBody(String),
    #[error("sent a malformed stream: {0}")]
    MalformedStream(String),
    #[error("sent an event that is not JSON: {0}")]
    EventNotJson(String),
    #[error("was not called: the client left while the request waited for a connection")]
    CallerGone,
}

impl NetError {
    /// A total match: a new variant must be given its kind here.
    pub fn kind(&self) -> FailureKind {
        match self {
            NetError::ConnectTimeout(_)
            | NetError::Connect(_)
            | NetError::Tls(_)
            | NetError::Proxy { .. }
            | NetError::ClosedBeforeResponse => FailureKind::Unreachable,
            NetError::PoolTimeout { .. }
            | NetError::FirstByteTimeout(_)
            | NetError::IdleTimeout(_)
            | NetError::TotalTimeout(_) => FailureKind::Timeout,
            NetError::HeadersTooLarge(_)
            | NetError::BodyTooLarge(_)
            | NetError::DecompressionBomb { .. }
            | NetError::UnknownEncoding(_)
            | NetError::CorruptEncoding { .. }
            | NetError::Protocol(_)
            | NetError::MalformedStream(_)
            | NetError::EventNotJson(_) => FailureKind::BadResponse,
            NetError::BrokenBody(_) => FailureKind::BrokenStream,
            NetError::CallerGone => FailureKind::CallerGone,
        }
    }
}

/// Seconds as the config writes them (`5`, `0.25`).
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// A configuration the transport cannot be built from (a certificate that does not parse, a
/// proxy URL it cannot use). Raised once, when the provider is configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
