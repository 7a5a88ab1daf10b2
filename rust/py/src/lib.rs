//! `tollway._native`: PyO3 bindings for `tollway-core`.
//!
//! This layer is a lookup table, not logic: it converts types, maps errors to the exceptions
//! of `tollway.errors`, and releases the GIL around work that can take more than a few
//! microseconds.

use pyo3::prelude::*;

mod admission;
mod chat_stream;
mod errors;
mod eventstream;
mod limiter;
mod policy;
mod sse;
mod tokens;
mod upstream;

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<admission::Admitter>()?;
    m.add_class::<admission::Admitted>()?;
    m.add_class::<admission::Holds>()?;
    m.add_function(wrap_pyfunction!(admission::output_bound, m)?)?;
    m.add_function(wrap_pyfunction!(admission::reset_text, m)?)?;
    m.add_class::<chat_stream::OpenAIChatStream>()?;
    m.add_class::<eventstream::EventStreamDecoder>()?;
    m.add_class::<eventstream::EventStreamMessage>()?;
    m.add_class::<limiter::RateLimiter>()?;
    m.add_class::<limiter::TokenBucket>()?;
    m.add_class::<limiter::ConcurrencyLimiter>()?;
    m.add_class::<limiter::BudgetWindow>()?;
    m.add_class::<limiter::Grant>()?;
    m.add_class::<limiter::Denial>()?;
    m.add_class::<policy::PolicySet>()?;
    m.add_class::<sse::SseEvent>()?;
    m.add_class::<sse::SseParser>()?;
    m.add_class::<tokens::TokenCounter>()?;
    m.add_class::<tokens::StreamTokenCounter>()?;
    m.add_class::<upstream::Transport>()?;
    m.add_class::<upstream::Endpoint>()?;
    m.add_class::<upstream::Upstream>()?;
    m.add_class::<upstream::UpstreamCall>()?;
    m.add_class::<upstream::UpstreamStream>()?;
    m.add_class::<upstream::ClientSocket>()?;
    m.add_function(wrap_pyfunction!(upstream::release_memory, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
