//! Token counting for Python: `TokenCounter`, `StreamTokenCounter`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use tollway_core::tokens::hf::HfTokenizer;
use tollway_core::tokens::stream::{RecountingCounter, StreamCounter};
use tollway_core::tokens::{chat, Count, Encoding, Exactness, TextCounter, TokenError};

use crate::errors::token_error;

/// Texts at least this long are counted with the GIL released (about 20 us of work at the
/// counter's speed); shorter ones cost less than releasing and re-taking the GIL.
const DETACH_THRESHOLD: usize = 4 * 1024;

fn pair(count: Count) -> (u64, &'static str) {
    (count.tokens, count.exactness.as_str())
}

#[derive(Clone)]
enum Inner {
    Builtin(Encoding),
    Hf(Arc<HfTokenizer>),
}

impl Inner {
    fn counter(&self) -> &dyn TextCounter {
        match self {
            Inner::Builtin(encoding) => encoding,
            Inner::Hf(tokenizer) => tokenizer.as_ref(),
        }
    }
}

/// The API format of a request body whose prompt is counted.
#[derive(Clone, Copy)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    /// The format of a client's API by name: `anthropic`, else OpenAI's (chat completions).
    pub(crate) fn from_name(api: &str) -> Self {
        if api == "anthropic" {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

/// A tokenizer chosen once (from configuration or the pricing catalog), used per request.
#[pyclass(frozen, module = "tollway._native")]
pub struct TokenCounter {
    inner: Inner,
}

#[pymethods]
impl TokenCounter {
    #[new]
    fn new(encoding: &str) -> PyResult<Self> {
        Ok(Self {
            inner: Inner::Builtin(Encoding::from_name(encoding).map_err(token_error)?),
        })
    }

    /// A counter from a Hugging Face `tokenizer.json` file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let tokenizer = py
            .detach(|| HfTokenizer::from_file(&path))
            .map_err(token_error)?;
        Ok(Self {
            inner: Inner::Hf(Arc::new(tokenizer)),
        })
    }

    #[getter]
    fn encoding(&self) -> String {
        match &self.inner {
            Inner::Builtin(encoding) => encoding.name().to_owned(),
            Inner::Hf(tokenizer) => tokenizer.name().to_owned(),
        }
    }

    /// `"exact"` or `"approximate"`: what this counter's counts of plain text are.
    #[getter]
    fn exactness(&self) -> &'static str {
        self.inner.counter().exactness().as_str()
    }

    /// Tokens of a text.
    fn count(&self, py: Python<'_>, text: &str) -> u64 {
        let counter = self.inner.counter();
        if text.len() >= DETACH_THRESHOLD {
            py.detach(|| counter.count_tokens(text))
        } else {
            counter.count_tokens(text)
        }
    }

    /// Token ids of a text (OpenAI encodings only, else `None`).
    fn encode(&self, py: Python<'_>, text: &str) -> Option<Vec<u32>> {
        match &self.inner {
            Inner::Builtin(encoding) => py.detach(|| encoding.encode(text)),
            Inner::Hf(_) => None,
        }
    }

    /// Prompt tokens of an OpenAI chat-completions request body: `(tokens, exactness)`.
    fn count_openai_chat(&self, py: Python<'_>, body: &[u8]) -> PyResult<(u64, &'static str)> {
        self.prompt(py, Api::OpenAi, body)
            .map(pair)
            .map_err(token_error)
    }

    /// Prompt tokens of an Anthropic Messages request body: `(tokens, "approximate")`.
    fn count_anthropic_messages(
        &self,
        py: Python<'_>,
        body: &[u8],
    ) -> PyResult<(u64, &'static str)> {
        self.prompt(py, Api::Anthropic, body)
            .map(pair)
            .map_err(token_error)
    }

    /// Prompt tokens of a request body in the format of the client's `api` (`anthropic`, else
    /// OpenAI's): `count_anthropic_messages` or `count_openai_chat`.
    fn count_prompt(
        &self,
        py: Python<'_>,
        api: &str,
        body: &[u8],
    ) -> PyResult<(u64, &'static str)> {
        self.prompt(py, Api::from_name(api), body)
            .map(pair)
            .map_err(token_error)
    }

    /// A fresh counter for one streamed answer.
    fn stream(&self) -> StreamTokenCounter {
        let inner = match &self.inner {
            Inner::Builtin(encoding) => Running::Pieces(StreamCounter::new(*encoding)),
            Inner::Hf(tokenizer) => Running::Recount(RecountingCounter::new(tokenizer.clone())),
        };
        StreamTokenCounter {
            inner: Mutex::new(inner),
            exactness: self.inner.counter().exactness(),
        }
    }

    fn __repr__(&self) -> String {
        format!("TokenCounter({:?})", self.encoding())
    }
}

impl TokenCounter {
    /// Prompt tokens of a request body in `api`'s format (`count_openai_chat`,
    /// `count_anthropic_messages`; the native admission counts with it too).
    pub(crate) fn prompt(
        &self,
        py: Python<'_>,
        api: Api,
        body: &[u8],
    ) -> Result<Count, TokenError> {
        let counter = self.inner.counter();
        let count = |body: &[u8]| match api {
            Api::OpenAi => chat::count_openai_chat(counter, body),
            Api::Anthropic => chat::count_anthropic_messages(counter, body),
        };
        if body.len() >= DETACH_THRESHOLD {
            py.detach(|| count(body))
        } else {
            count(body)
        }
    }
}

enum Running {
    Pieces(StreamCounter),
    Recount(RecountingCounter<Arc<HfTokenizer>>),
}

/// Running count of a streamed answer: `push` each text delta as it passes.
#[pyclass(frozen, module = "tollway._native")]
pub struct StreamTokenCounter {
    inner: Mutex<Running>,
    exactness: Exactness,
}

impl StreamTokenCounter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl StreamTokenCounter {
    /// Add a text delta; returns the running count.
    fn push(&self, delta: &str) -> u64 {
        match &mut *self.lock() {
            Running::Pieces(counter) => counter.push(delta),
            Running::Recount(counter) => counter.push(delta),
        }
    }

    /// The running count (see `exactness`).
    #[getter]
    fn total(&self) -> u64 {
        match &*self.lock() {
            Running::Pieces(counter) => counter.total(),
            Running::Recount(counter) => counter.total(),
        }
    }

    /// The exact count of everything pushed (recounts if the running count was estimated).
    fn finish(&self, py: Python<'_>) -> u64 {
        py.detach(|| match &mut *self.lock() {
            Running::Pieces(counter) => counter.total(),
            Running::Recount(counter) => counter.finish(),
        })
    }

    /// `"exact"` when `total` is the tokenizer's count of all the text so far.
    #[getter]
    fn exactness(&self) -> &'static str {
        let running_exact = match &*self.lock() {
            Running::Pieces(_) => true,
            Running::Recount(counter) => counter.is_exact(),
        };
        if running_exact {
            self.exactness.as_str()
        } else {
            Exactness::Approximate.as_str()
        }
    }
}
