//! Token counting for Python: `TokenCounter`, `StreamTokenCounter`.

use std::sync::Mutex;

use pyo3::prelude::*;
use tollway_core::tokens::{self as core, chat, stream, Count, Encoding};

use crate::errors::token_error;

/// Texts at least this long are counted with the GIL released (about 20 us of work at the
/// counter's speed); shorter ones cost less than releasing and re-taking the GIL.
const DETACH_THRESHOLD: usize = 4 * 1024;

fn pair(count: Count) -> (u64, &'static str) {
    (count.tokens, count.exactness.as_str())
}

/// A tokenizer chosen once (from configuration or the pricing catalog), used per request.
#[pyclass(frozen, module = "tollway._native")]
pub struct TokenCounter {
    encoding: Encoding,
}

#[pymethods]
impl TokenCounter {
    #[new]
    fn new(encoding: &str) -> PyResult<Self> {
        Ok(Self {
            encoding: Encoding::from_name(encoding).map_err(token_error)?,
        })
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        self.encoding.name()
    }

    /// `"exact"` or `"approximate"`: what counts of plain text from this counter are.
    #[getter]
    fn exactness(&self) -> &'static str {
        self.encoding.exactness().as_str()
    }

    /// Tokens of a text.
    fn count(&self, py: Python<'_>, text: &str) -> u64 {
        if text.len() >= DETACH_THRESHOLD {
            py.detach(|| self.encoding.count_tokens(text))
        } else {
            self.encoding.count_tokens(text)
        }
    }

    /// Token ids of a text (exact encodings only, else `None`).
    fn encode(&self, py: Python<'_>, text: &str) -> Option<Vec<u32>> {
        py.detach(|| self.encoding.encode(text))
    }

    /// Prompt tokens of an OpenAI chat-completions request body: `(tokens, exactness)`.
    fn count_openai_chat(&self, py: Python<'_>, body: &[u8]) -> PyResult<(u64, &'static str)> {
        let counted = if body.len() >= DETACH_THRESHOLD {
            py.detach(|| chat::count_openai_chat(&self.encoding, body))
        } else {
            chat::count_openai_chat(&self.encoding, body)
        };
        counted.map(pair).map_err(token_error)
    }

    /// Prompt tokens of an Anthropic Messages request body: `(tokens, "approximate")`.
    fn count_anthropic_messages(
        &self,
        py: Python<'_>,
        body: &[u8],
    ) -> PyResult<(u64, &'static str)> {
        let counted = if body.len() >= DETACH_THRESHOLD {
            py.detach(|| chat::count_anthropic_messages(&self.encoding, body))
        } else {
            chat::count_anthropic_messages(&self.encoding, body)
        };
        counted.map(pair).map_err(token_error)
    }

    /// A fresh counter for one streamed answer.
    fn stream(&self) -> StreamTokenCounter {
        StreamTokenCounter {
            inner: Mutex::new(stream::StreamCounter::new(self.encoding)),
            exactness: self.encoding.exactness(),
        }
    }

    fn __repr__(&self) -> String {
        format!("TokenCounter({:?})", self.encoding.name())
    }
}

/// Running count of a streamed answer: `push` each text delta as it passes.
#[pyclass(frozen, module = "tollway._native")]
pub struct StreamTokenCounter {
    inner: Mutex<stream::StreamCounter>,
    exactness: core::Exactness,
}

#[pymethods]
impl StreamTokenCounter {
    /// Add a text delta; returns the running count.
    fn push(&self, delta: &str) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(delta)
    }

    #[getter]
    fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .total()
    }

    #[getter]
    fn exactness(&self) -> &'static str {
        self.exactness.as_str()
    }
}
