//! Hugging Face `tokenizer.json` files, for open models (Llama, Mistral, Qwen, ...) served by
//! vLLM, Ollama and the like. The file comes from a path in configuration; nothing is
//! downloaded. Counts of text are the tokenizer's own (exact, without special tokens); chat
//! counts are approximate, since each model frames messages with its own chat template.

use std::path::Path;

use super::{Exactness, TextCounter, TokenError};

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer({})", self.name)
    }
}

impl HfTokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|err| TokenError::Load {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
        Ok(Self {
            inner,
            name: format!("hf:{}", path.display()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl TextCounter for HfTokenizer {
    fn count_tokens(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        // Encoding fails only for inputs the tokenizer cannot represent at all; count what the
        // provider would most likely see rather than fail the request: one token per 4 bytes.
        match self.inner.encode_fast(text, false) {
            Ok(encoding) => encoding.len() as u64,
            Err(_) => text.len().div_ceil(4) as u64,
        }
    }

    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }

    fn openai_framing(&self) -> bool {
        false
    }
}
