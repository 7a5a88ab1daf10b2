//! Token counting: exact BPE counts for OpenAI's encodings, documented approximations for
//! providers without a public tokenizer, chat-aware counting of a request's messages, and
//! incremental counting of streamed output.
//!
//! # Crate choice
//! BPE counting uses GitHub's `bpe-openai` (the `bpe` crate's linear-time algorithm with the
//! `o200k_base` and `cl100k_base` vocabularies serialized into the crate at build time, so
//! nothing is downloaded at run time). It counts without materializing token ids, and its
//! results are tested upstream, and here (`tests/test_native_tokens.py`), against tiktoken
//! loaded from the same vocabulary files.
//!
//! # Performance
//! `bpe-openai`'s own `count` spent about a third of its time in its pre-tokenizer regex and two
//! thirds in BPE per piece (profiled on English prose). [`Encoding::count_tokens`] computes the
//! same count faster, three ways, each exact by construction and tested against `bpe-openai`:
//! - `pretokenize`: a hand-written splitter decides the pieces of ASCII text and asks
//!   `bpe-openai`'s regex for any piece next to a non-ASCII byte;
//! - a piece that is itself a token counts 1 without BPE (as tiktoken does), looked up in a hash
//!   set of the vocabulary's token bytes (built on first use: ~4.5 MB for `o200k_base`, ~2.2 MB
//!   for `cl100k_base`);
//! - `piece_cache`: a per-thread, direct-mapped cache of the counts of pieces up to 30 bytes
//!   (128 KiB per vocabulary and thread, no lock).
//!
//! On the 118 KB varied English corpus of `benches/tokens.rs` this is about 2x `bpe-openai`'s
//! `count` with the cache emptied before each count, 3x with it warm (`docs/benchmarks.md`).
//!
//! # Exactness
//! Every count says whether it is [`Exactness::Exact`] or [`Exactness::Approximate`]:
//! - `o200k_base` / `cl100k_base` counts of text are exact.
//! - Chat counts follow OpenAI's published rule (3 tokens per message, 1 more per `name`, 3 to
//!   prime the reply) and are exact for text-only messages; images, tool definitions and tool
//!   calls are estimated (see [`chat`]) and make the count approximate.
//! - [`Encoding::Approx`] (Anthropic, Gemini: no public tokenizer) is always approximate.
//! - [`hf::HfTokenizer`] (a `tokenizer.json` of an open model) counts text exactly; its chat
//!   counts are approximate (each model has its own chat template).

pub mod chat;
pub mod hf;
mod piece_cache;
mod pretokenize;
pub mod stream;

use std::fmt;
use std::sync::LazyLock;

use ahash::AHashSet;
use pretokenize::Vocabulary;

/// Errors of the token counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// An encoding name that is not known.
    #[error(
        "unknown tokenizer `{0}`; expected `o200k_base`, `cl100k_base`, `anthropic` or `gemini`"
    )]
    UnknownEncoding(String),
    /// A request body that is not the JSON the chat counter expects.
    #[error("cannot count tokens of this request: {0}")]
    InvalidRequest(String),
    /// A tokenizer file that cannot be loaded.
    #[error("cannot load tokenizer `{path}`: {reason}")]
    Load { path: String, reason: String },
}

/// What the chat and stream counters need of a tokenizer.
pub trait TextCounter: Send + Sync {
    /// Tokens of a text, without special tokens.
    fn count_tokens(&self, text: &str) -> u64;
    /// Whether counts of plain text are the provider's own.
    fn exactness(&self) -> Exactness;
    /// Whether OpenAI's published per-message framing applies (only to OpenAI's encodings);
    /// otherwise chat counts are approximate whatever the text counts are.
    fn openai_framing(&self) -> bool;
}

impl<T: TextCounter + ?Sized> TextCounter for std::sync::Arc<T> {
    fn count_tokens(&self, text: &str) -> u64 {
        (**self).count_tokens(text)
    }

    fn exactness(&self) -> Exactness {
        (**self).exactness()
    }

    fn openai_framing(&self) -> bool {
        (**self).openai_framing()
    }
}

impl TextCounter for Encoding {
    fn count_tokens(&self, text: &str) -> u64 {
        Encoding::count_tokens(self, text)
    }

    fn exactness(&self) -> Exactness {
        Encoding::exactness(self)
    }

    fn openai_framing(&self) -> bool {
        !matches!(self, Encoding::Approx(_))
    }
}

/// Whether a count is the provider's own tokenization or an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exactness {
    Exact,
    Approximate,
}

impl Exactness {
    /// Exact only if both parts are exact.
    pub fn and(self, other: Exactness) -> Exactness {
        match (self, other) {
            (Exactness::Exact, Exactness::Exact) => Exactness::Exact,
            _ => Exactness::Approximate,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exactness::Exact => "exact",
            Exactness::Approximate => "approximate",
        }
    }
}

/// A token count and how far to trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub tokens: u64,
    pub exactness: Exactness,
}

/// How providers without a public tokenizer are estimated. The factor scales an exact
/// `cl100k_base` count; it is a documented heuristic, never presented as exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Approximation {
    /// Scale applied to the `cl100k_base` count (rounded up).
    pub factor: f64,
}

/// Anthropic's Claude tokenizers are not public; on English prose and code they produce
/// somewhat more tokens than `cl100k_base`. tollway estimates 1.15x, rounded up: an estimate
/// that leans high, so budgets reserved on it rarely fall short.
pub const ANTHROPIC_APPROXIMATION: Approximation = Approximation { factor: 1.15 };
/// Gemini's tokenizer is not public either; its large SentencePiece vocabulary counts close to
/// `cl100k_base` on English. tollway estimates 1.0x, rounded up.
pub const GEMINI_APPROXIMATION: Approximation = Approximation { factor: 1.0 };

/// A tokenizer: an exact BPE encoding or an approximation.
#[derive(Clone, Copy, PartialEq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
    Approx(Approximation),
}

impl fmt::Debug for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Encoding {
    /// Look up an encoding by the name used in configuration and the pricing catalog.
    pub fn from_name(name: &str) -> Result<Self, TokenError> {
        match name {
            "o200k_base" => Ok(Encoding::O200kBase),
            "cl100k_base" => Ok(Encoding::Cl100kBase),
            "anthropic" => Ok(Encoding::Approx(ANTHROPIC_APPROXIMATION)),
            "gemini" => Ok(Encoding::Approx(GEMINI_APPROXIMATION)),
            other => Err(TokenError::UnknownEncoding(other.to_owned())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::Approx(a) if *a == ANTHROPIC_APPROXIMATION => "anthropic",
            Encoding::Approx(a) if *a == GEMINI_APPROXIMATION => "gemini",
            Encoding::Approx(_) => "approximate",
        }
    }

    pub fn exactness(&self) -> Exactness {
        match self {
            Encoding::O200kBase | Encoding::Cl100kBase => Exactness::Exact,
            Encoding::Approx(_) => Exactness::Approximate,
        }
    }

    /// The tokenizer's raw count of `text`; see [`Encoding::count`] for the count with its
    /// exactness.
    pub fn count_tokens(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match self {
            Encoding::O200kBase => count_bpe(Vocabulary::O200kBase, text),
            Encoding::Cl100kBase => count_bpe(Vocabulary::Cl100kBase, text),
            Encoding::Approx(a) => {
                let base = count_bpe(Vocabulary::Cl100kBase, text) as f64;
                (base * a.factor).ceil() as u64
            }
        }
    }

    /// Count the tokens of a text.
    pub fn count(&self, text: &str) -> Count {
        Count {
            tokens: self.count_tokens(text),
            exactness: self.exactness(),
        }
    }

    /// Token ids of a text (exact encodings only; used to check against other implementations).
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        match self {
            Encoding::O200kBase => Some(bpe_openai::o200k_base().encode(text)),
            Encoding::Cl100kBase => Some(bpe_openai::cl100k_base().encode(text)),
            Encoding::Approx(_) => None,
        }
    }

    /// Split text into the pre-tokenizer's pieces (BPE never merges across them).
    pub(crate) fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        self.vocabulary().pieces(text).collect()
    }

    /// The BPE vocabulary behind this encoding (approximations scale `cl100k_base`).
    fn vocabulary(&self) -> Vocabulary {
        match self {
            Encoding::O200kBase => Vocabulary::O200kBase,
            Encoding::Cl100kBase | Encoding::Approx(_) => Vocabulary::Cl100kBase,
        }
    }
}

/// Empty this thread's caches of piece counts, so that a benchmark measures counting text never
/// seen before (the conservative case). Counting never needs it: the caches are bounded.
#[doc(hidden)]
pub fn clear_piece_caches() {
    piece_cache::clear();
}

/// The exact count of `text`: what `bpe-openai`'s `Tokenizer::count` returns (these two
/// vocabularies do not normalize), with a faster pre-tokenizer ([`pretokenize`]) and a per-thread
/// cache of the counts of short pieces ([`piece_cache`]).
fn count_bpe(vocabulary: Vocabulary, text: &str) -> u64 {
    let bpe = &vocabulary.tokenizer().bpe;
    let tokens = match vocabulary {
        Vocabulary::O200kBase => &*O200K_TOKENS,
        Vocabulary::Cl100kBase => &*CL100K_TOKENS,
    };
    // A piece that is itself a token is one token: tiktoken looks each piece up before running
    // BPE, and `whole_tokens_count_one` checks that `bpe` agrees for every token. The lookup
    // (a hash and one comparison) is much cheaper than BPE of a word seen for the first time.
    let count_piece = |piece: &[u8]| {
        if tokens.contains(piece) {
            1
        } else {
            bpe.count(piece)
        }
    };
    let pieces = vocabulary.pieces(text);
    let total: usize = piece_cache::with_cache(vocabulary, |cache| match cache {
        Some(cache) => pieces
            .map(|piece| cache.count(piece.as_bytes(), count_piece))
            .sum(),
        None => pieces.map(|piece| count_piece(piece.as_bytes())).sum(),
    });
    total as u64
}

/// The bytes of every `o200k_base` token (about 200,000; some 4.5 MB), built on first use.
static O200K_TOKENS: LazyLock<AHashSet<&'static [u8]>> =
    LazyLock::new(|| token_bytes(Vocabulary::O200kBase));
/// The bytes of every `cl100k_base` token (about 100,000; some 2.2 MB), built on first use.
static CL100K_TOKENS: LazyLock<AHashSet<&'static [u8]>> =
    LazyLock::new(|| token_bytes(Vocabulary::Cl100kBase));

fn token_bytes(vocabulary: Vocabulary) -> AHashSet<&'static [u8]> {
    let bpe = &vocabulary.tokenizer().bpe;
    (0..bpe.num_tokens() as u32)
        .map(|token| bpe.token_bytes(token))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `count_tokens` against `bpe-openai`'s own count (pre-tokenizer regex, BPE per piece, no
    /// cache), for both vocabularies, twice each so the second count comes from the cache.
    #[track_caller]
    fn assert_exact(text: &str) {
        for (encoding, tokenizer) in [
            (Encoding::O200kBase, bpe_openai::o200k_base()),
            (Encoding::Cl100kBase, bpe_openai::cl100k_base()),
        ] {
            let expected = tokenizer.count(text) as u64;
            assert_eq!(
                encoding.count_tokens(text),
                expected,
                "{encoding:?}: {text:?}"
            );
            assert_eq!(
                encoding.count_tokens(text),
                expected,
                "{encoding:?} again: {text:?}"
            );
        }
    }

    #[test]
    fn counts_match_bpe_openai_on_the_benchmark_corpus() {
        let corpus = include_str!("../../benches/data/english_prose.txt");
        assert_exact(corpus);
        // Typographic quotes and dashes send the pieces next to them to the regex.
        assert_exact(
            &corpus
                .replace('\'', "\u{2019}")
                .replace(" - ", " \u{2014} "),
        );
    }

    #[test]
    fn whole_tokens_count_one() {
        // What the whole-piece lookup in `count_bpe` relies on, for every token.
        for vocabulary in [Vocabulary::O200kBase, Vocabulary::Cl100kBase] {
            let bpe = &vocabulary.tokenizer().bpe;
            for token in 0..bpe.num_tokens() as u32 {
                assert_eq!(
                    bpe.count(bpe.token_bytes(token)),
                    1,
                    "{vocabulary:?} {token}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn counts_match_bpe_openai(text in pretokenize::tests::text()) {
            assert_exact(&text);
        }

        #[test]
        fn counts_match_bpe_openai_on_prose(text in pretokenize::tests::prose()) {
            assert_exact(&text);
        }
    }

    #[test]
    fn known_counts() {
        // Reference counts from tiktoken for the same encodings.
        assert_eq!(Encoding::O200kBase.count_tokens("Hello, world!"), 4);
        assert_eq!(Encoding::Cl100kBase.count_tokens("Hello, world!"), 4);
        assert_eq!(Encoding::Cl100kBase.count_tokens("tiktoken is great!"), 6);
        assert_eq!(Encoding::O200kBase.count_tokens(""), 0);
    }

    #[test]
    fn names_round_trip() {
        for name in ["o200k_base", "cl100k_base", "anthropic", "gemini"] {
            assert_eq!(Encoding::from_name(name).unwrap().name(), name);
        }
        assert_eq!(
            Encoding::from_name("p50k").unwrap_err().to_string(),
            "unknown tokenizer `p50k`; expected `o200k_base`, `cl100k_base`, `anthropic` or `gemini`"
        );
    }

    #[test]
    fn approximations_are_marked_and_lean_high() {
        let text = "The quick brown fox jumps over the lazy dog.";
        let exact = Encoding::Cl100kBase.count(text);
        let approx = Encoding::from_name("anthropic").unwrap().count(text);
        assert_eq!(exact.exactness, Exactness::Exact);
        assert_eq!(approx.exactness, Exactness::Approximate);
        assert!(approx.tokens >= exact.tokens);
    }
}
