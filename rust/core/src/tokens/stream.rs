//! Incremental counting of streamed output: feed text deltas, read the running count.
//!
//! BPE never merges across the pre-tokenizer's pieces, so the count of a text is the sum of
//! the counts of its pieces. As text arrives, only the last pieces can still change (a piece
//! at the end may grow, and whitespace before it splits by look-ahead), so the counter keeps
//! the last two pieces as an uncommitted tail and commits everything before them for good.
//! Each delta then costs work proportional to the delta plus the tail, not to the whole text,
//! and the running count always equals the count of the whole text so far (checked by a
//! property test against counting the concatenation at once).
//!
//! The tail is short in real text; a single piece that never ends (megabytes of letters with
//! no space or punctuation) stays in the tail and is recounted per delta.

use super::{Count, Encoding, TextCounter};

/// Commit pieces only once the tail is at least this long: small deltas just append.
const SPLIT_AT: usize = 256;

#[derive(Debug, Clone)]
pub struct StreamCounter {
    encoding: Encoding,
    tail: String,
    committed: u64,
    tail_tokens: u64,
}

impl StreamCounter {
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            tail: String::new(),
            committed: 0,
            tail_tokens: 0,
        }
    }

    /// Add a delta of output text; returns the running count.
    pub fn push(&mut self, delta: &str) -> u64 {
        if delta.is_empty() {
            return self.total();
        }
        self.tail.push_str(delta);
        if self.tail.len() >= SPLIT_AT {
            let pieces = self.encoding.pieces(&self.tail);
            if pieces.len() > 2 {
                let keep_from =
                    pieces[pieces.len() - 2].as_ptr() as usize - self.tail.as_ptr() as usize;
                let done: u64 = pieces[..pieces.len() - 2]
                    .iter()
                    .map(|piece| self.encoding.count_tokens(piece))
                    .sum();
                self.committed += done;
                self.tail.drain(..keep_from);
            }
        }
        self.tail_tokens = self.encoding.count_tokens(&self.tail);
        self.total()
    }

    /// The tokens of everything pushed so far.
    pub fn total(&self) -> u64 {
        self.committed + self.tail_tokens
    }

    pub fn count(&self) -> Count {
        Count {
            tokens: self.total(),
            exactness: self.encoding.exactness(),
        }
    }
}

/// Running count for tokenizers whose pieces cannot be counted apart (Hugging Face
/// tokenizers: a SentencePiece normalizer may prefix each piece, so the sum of the pieces is not
/// the count of the whole). It recounts the whole text once the uncounted part reaches a tenth
/// of it (at least 256 bytes), so the total work stays linear in the output; between recounts the
/// uncounted bytes are estimated at 4 per token, and [`RecountingCounter::finish`] gives the
/// exact count.
#[derive(Debug)]
pub struct RecountingCounter<T: TextCounter> {
    tokenizer: T,
    text: String,
    counted_len: usize,
    counted: u64,
}

impl<T: TextCounter> RecountingCounter<T> {
    pub fn new(tokenizer: T) -> Self {
        Self {
            tokenizer,
            text: String::new(),
            counted_len: 0,
            counted: 0,
        }
    }

    /// Add a delta; returns the running count (exact at each recount, estimated between).
    pub fn push(&mut self, delta: &str) -> u64 {
        self.text.push_str(delta);
        let pending = self.text.len() - self.counted_len;
        if pending >= SPLIT_AT.max(self.text.len() / 10) {
            self.recount();
        }
        self.total()
    }

    pub fn total(&self) -> u64 {
        self.counted + (self.text.len() - self.counted_len).div_ceil(4) as u64
    }

    /// Whether [`RecountingCounter::total`] is the tokenizer's count of all the text.
    pub fn is_exact(&self) -> bool {
        self.counted_len == self.text.len()
    }

    /// The exact count of everything pushed.
    pub fn finish(&mut self) -> u64 {
        if !self.is_exact() {
            self.recount();
        }
        self.counted
    }

    fn recount(&mut self) {
        self.counted = self.tokenizer.count_tokens(&self.text);
        self.counted_len = self.text.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recounting_counter_is_exact_at_finish() {
        let mut counter = RecountingCounter::new(Encoding::Cl100kBase);
        let text = "Streaming answers arrive in small deltas, word by word. ".repeat(40);
        for piece in text.split_inclusive(' ') {
            counter.push(piece);
        }
        assert_eq!(counter.finish(), Encoding::Cl100kBase.count_tokens(&text));
        assert!(counter.is_exact());
    }

    #[test]
    fn running_count_matches_whole_text() {
        let text =
            "The quick brown fox jumps over the lazy dog.  \n\n  Again: 12345 times!!! ".repeat(20);
        let mut counter = StreamCounter::new(Encoding::O200kBase);
        let mut seen = String::new();
        for piece in text.split_inclusive(' ') {
            seen.push_str(piece);
            assert_eq!(counter.push(piece), Encoding::O200kBase.count_tokens(&seen));
        }
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("([a-zA-Z]{0,8}|[0-9]{1,5}|[ ]{1,3}|\n{1,2}|[.,!?'/-]|\u{e9}t\u{e9}|\u{4e16}\u{754c}|\u{1f600})*")
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_deltas_give_the_whole_count(parts in proptest::collection::vec(text(), 0..60), o200k in any::<bool>()) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let mut counter = StreamCounter::new(encoding);
            let mut whole = String::new();
            for part in &parts {
                whole.push_str(part);
                counter.push(part);
            }
            prop_assert_eq!(counter.total(), encoding.count_tokens(&whole));
        }
    }
}
