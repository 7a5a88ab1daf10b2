//! Core errors -> the exceptions defined in `python/tollway/errors.py`.

use pyo3::PyErr;
use tollway_core::{chat_stream, eventstream, limiter, policy, sse, tokens};
use tollway_net::NetError;

pyo3::import_exception!(tollway.errors, PolicyError);
pyo3::import_exception!(tollway.errors, SseError);
pyo3::import_exception!(tollway.errors, EventStreamError);
pyo3::import_exception!(tollway.errors, StreamFormatError);
pyo3::import_exception!(tollway.errors, TokenizerError);
pyo3::import_exception!(tollway.errors, TokenCountError);
pyo3::import_exception!(tollway.errors, LimiterConfigError);
pyo3::import_exception!(tollway.errors, LimiterFullError);
pyo3::import_exception!(tollway.errors, ConfigError);
pyo3::import_exception!(tollway.errors, TransportError);

/// A total match: a new core error variant must be given its Python exception here.
pub fn sse_error(err: sse::SseError) -> PyErr {
    match err {
        sse::SseError::LineTooLong { .. }
        | sse::SseError::LineBreakInField { .. }
        | sse::SseError::NulInId => SseError::new_err(err.to_string()),
    }
}

/// A total match, as above.
pub fn token_error(err: tokens::TokenError) -> PyErr {
    match err {
        tokens::TokenError::UnknownEncoding(_) | tokens::TokenError::Load { .. } => {
            TokenizerError::new_err(err.to_string())
        }
        tokens::TokenError::InvalidRequest(_) => TokenCountError::new_err(err.to_string()),
    }
}

/// A total match, as above.
pub fn policy_error(err: policy::PolicyError) -> PyErr {
    match err {
        policy::PolicyError::UnknownAttribute { .. }
        | policy::PolicyError::BadOperator { .. }
        | policy::PolicyError::BadNetwork { .. }
        | policy::PolicyError::BadValue { .. } => PolicyError::new_err(err.to_string()),
    }
}

/// A total match, as above.
pub fn limiter_error(err: limiter::LimiterError) -> PyErr {
    match err {
        limiter::LimiterError::InvalidConfig { .. } => LimiterConfigError::new_err(err.to_string()),
        limiter::LimiterError::TooManyKeys { .. } => LimiterFullError::new_err(err.to_string()),
    }
}

/// A total match, as above.
pub fn chat_stream_error(err: chat_stream::ChatStreamError) -> PyErr {
    match err {
        chat_stream::ChatStreamError::Sse(err) => sse_error(err),
        chat_stream::ChatStreamError::NotJson { .. } => StreamFormatError::new_err(err.to_string()),
    }
}

/// A total match, as above.
pub fn eventstream_error(err: eventstream::EventStreamError) -> PyErr {
    match err {
        eventstream::EventStreamError::PreludeCrc { .. }
        | eventstream::EventStreamError::MessageCrc { .. }
        | eventstream::EventStreamError::TooShort { .. }
        | eventstream::EventStreamError::TooLarge { .. }
        | eventstream::EventStreamError::HeadersTooLong { .. }
        | eventstream::EventStreamError::TruncatedHeader { .. }
        | eventstream::EventStreamError::EmptyHeaderName { .. }
        | eventstream::EventStreamError::NotUtf8 { .. }
        | eventstream::EventStreamError::UnknownHeaderType { .. } => {
            EventStreamError::new_err(err.to_string())
        }
    }
}

/// A transport's configuration it cannot be built from: `ConfigError([message])`.
pub fn config_error(err: tollway_net::ConfigError) -> PyErr {
    ConfigError::new_err((vec![err.0],))
}

/// How an upstream exchange failed: `TransportError(kind, message)`, the kind decided by the
/// net crate's total match (`NetError::kind`).
pub fn transport_error(err: NetError) -> PyErr {
    TransportError::new_err((err.kind().as_str(), err.to_string()))
}
