//! The pre-tokenizer of `o200k_base` and `cl100k_base`, with a hand-written fast path for ASCII.
//!
//! BPE never merges across the pieces the pre-tokenizer's regex cuts a text into, so a count is
//! the sum of the counts of the pieces. `bpe-openai` finds each piece with an anchored search of
//! a `regex_automata::meta::Regex` with Unicode classes; on English prose that search is about a
//! third of the counting time. [`Pieces`] decides most pieces of ASCII text with a few table
//! lookups instead, and asks `bpe-openai`'s regex for every piece it cannot decide.
//!
//! # Why this is exact
//! `bpe-openai` searches each piece anchored at the end of the previous one, on the rest of the
//! text (`&text[last..]`): the piece that starts at a boundary depends only on the text from that
//! boundary on. [`Pieces`] walks the same boundaries. At each one it either decides the piece
//! from ASCII bytes alone, or hands the rest of the text to `bpe-openai`'s pre-tokenizer and takes
//! its first piece. The fast path gives up (returns `None`) whenever a byte it must look at to
//! decide is not ASCII: such a byte could be a letter, a mark, a digit, a space or punctuation
//! under the regex's Unicode classes, or a case-insensitive contraction letter (`'ſ` matches
//! `(?i:'s)`). So a text with a few non-ASCII characters (curly quotes, dashes, accented names)
//! only sends the pieces next to them to the regex.
//!
//! The ASCII rules follow the patterns in `bpe-openai` 0.3.2's `lib.rs`, tried in order
//! (leftmost-first), where `\s+(?!\S)` is emulated by `\s+\s` minus its last character:
//! - `o200k_base`: `[^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]*[Ll Lm Lo M]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
//!   `|[^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]+[Ll Lm Lo M]*(?i:'s|...)?|\p{N}{1,3}`
//!   `| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+$`, then `\s+\s` (look-ahead), then `\s+`.
//! - `cl100k_base`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}`
//!   `| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+$`, then `\s+\s` (look-ahead), then `\s+`.
//!
//! The differential tests below compare [`Pieces`] with `bpe-openai`'s own split on exhaustive
//! short strings and on random strings mixing ASCII rules with non-ASCII letters, marks, spaces
//! and punctuation.

use bpe_openai::Tokenizer;

/// The BPE vocabularies with an exact pre-tokenizer here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vocabulary {
    O200kBase,
    Cl100kBase,
}

impl Vocabulary {
    /// `bpe-openai`'s tokenizer: the BPE itself and the reference pre-tokenizer.
    pub(crate) fn tokenizer(self) -> &'static Tokenizer {
        match self {
            Vocabulary::O200kBase => bpe_openai::o200k_base(),
            Vocabulary::Cl100kBase => bpe_openai::cl100k_base(),
        }
    }

    /// The pieces of `text`, exactly those of `bpe-openai`'s `split`.
    pub(crate) fn pieces(self, text: &str) -> Pieces<'_> {
        Pieces {
            vocabulary: self,
            text,
            pos: 0,
        }
    }
}

/// An iterator over the pre-tokenizer's pieces of a text (see the module documentation).
pub(crate) struct Pieces<'a> {
    vocabulary: Vocabulary,
    text: &'a str,
    /// Start of the next piece: always a piece boundary of the reference split.
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        if start >= bytes.len() {
            return None;
        }
        let fast = match self.vocabulary {
            Vocabulary::O200kBase => o200k_piece_end(bytes, start),
            Vocabulary::Cl100kBase => cl100k_piece_end(bytes, start),
        };
        let end = match fast {
            Some(end) => end,
            // The reference split of the rest of the text, from this boundary: its first piece
            // is the piece the reference finds here (it searches `&text[last..]` itself).
            None => {
                let rest = &self.text[start..];
                start + self.vocabulary.tokenizer().split(rest).next()?.len()
            }
        };
        self.pos = end;
        Some(&self.text[start..end])
    }
}

/// `[a-z]`: `\p{Ll}` among ASCII bytes.
const LOWER: u8 = 1;
/// `[A-Z]`: `\p{Lu}` among ASCII bytes.
const UPPER: u8 = 1 << 1;
/// `[0-9]`: `\p{N}` among ASCII bytes.
const DIGIT: u8 = 1 << 2;
/// `\s` among ASCII bytes (Unicode `White_Space`): `\t \n \x0B \x0C \r` and the space.
const SPACE: u8 = 1 << 3;
/// `\r` and `\n` (also `SPACE`).
const NEWLINE: u8 = 1 << 4;
/// Every other ASCII byte: `[^\s\p{L}\p{N}]` among ASCII bytes (punctuation, symbols, controls).
const OTHER: u8 = 1 << 5;
/// A byte of a non-ASCII character, whose Unicode class the fast path does not know.
const NON_ASCII: u8 = 1 << 6;
const LETTER: u8 = LOWER | UPPER;

/// The class of each byte.
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b'a'..=b'z' => LOWER,
            b'A'..=b'Z' => UPPER,
            b'0'..=b'9' => DIGIT,
            b'\r' | b'\n' => SPACE | NEWLINE,
            b'\t' | 0x0B | 0x0C | b' ' => SPACE,
            0x80..=0xFF => NON_ASCII,
            _ => OTHER,
        };
        byte += 1;
    }
    table
};

#[inline(always)]
fn class(byte: u8) -> u8 {
    CLASSES[byte as usize]
}

/// The end of the run of bytes of `classes` that starts at `pos`, or `None` if the run stops at a
/// non-ASCII byte (under Unicode classes, its character might continue the run).
#[inline(always)]
fn run_end(bytes: &[u8], mut pos: usize, classes: u8) -> Option<usize> {
    while let Some(&byte) = bytes.get(pos) {
        let c = class(byte);
        if c & classes == 0 {
            return if c == NON_ASCII { None } else { Some(pos) };
        }
        pos += 1;
    }
    Some(pos)
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `pos`: the end of the contraction there, `pos` if there is
/// none, `None` if a non-ASCII byte decides it (`(?i:s)` also matches `ſ`, U+017F).
#[inline]
fn contraction_end(bytes: &[u8], pos: usize) -> Option<usize> {
    if bytes.get(pos) != Some(&b'\'') {
        return Some(pos);
    }
    let Some(&first) = bytes.get(pos + 1) else {
        return Some(pos);
    };
    let second = match first.to_ascii_lowercase() {
        b's' | b't' | b'm' | b'd' => return Some(pos + 2),
        b'r' | b'v' => b'e',
        b'l' => b'l',
        _ if first >= 0x80 => return None,
        _ => return Some(pos),
    };
    match bytes.get(pos + 2) {
        Some(&byte) if byte.to_ascii_lowercase() == second => Some(pos + 3),
        Some(&byte) if byte >= 0x80 => None,
        _ => Some(pos),
    }
}

/// `\p{N}{1,3}` at `pos` (an ASCII digit).
#[inline]
fn digits_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let mut end = pos + 1;
    while end < pos + 3 {
        match bytes.get(end).map(|&byte| class(byte)) {
            Some(DIGIT) => end += 1,
            Some(NON_ASCII) => return None,
            _ => break,
        }
    }
    Some(end)
}

/// The whitespace alternatives at `pos` (an ASCII `\s`), once the others have failed:
/// `\s*[\r\n]+` (up to the run's last newline), `\s+$`, `\s+(?!\S)` (the run but its last
/// character) and `\s+` (one character).
#[inline]
fn whitespace_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let end = run_end(bytes, pos, SPACE)?;
    if let Some(last_newline) = bytes[pos..end]
        .iter()
        .rposition(|&byte| byte == b'\r' || byte == b'\n')
    {
        return Some(pos + last_newline + 1);
    }
    if end == bytes.len() {
        return Some(end);
    }
    Some(if end - pos >= 2 { end - 1 } else { pos + 1 })
}

/// Where the first of `[^\r\n\p{L}\p{N}]?` letters, ` ?[^\s\p{L}\p{N}]+` may start at `pos`:
/// the byte after a prefix (a non-letter, non-digit, non-newline byte), else `pos` itself.
#[inline(always)]
fn after_prefix(c: u8, pos: usize) -> usize {
    if c & LETTER != 0 {
        pos
    } else {
        pos + 1
    }
}

/// The end of the `o200k_base` piece that starts at `pos`, or `None` to ask the regex.
fn o200k_piece_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let c = class(bytes[pos]);
    if c == NON_ASCII {
        return None;
    }
    // `[^\r\n\p{L}\p{N}]?[Lu..]*[Ll..]+(contraction)?`, else `...[Lu..]+[Ll..]*(contraction)?`:
    // among ASCII letters both take the uppercase run then the lowercase run, if not both empty.
    if c & (DIGIT | NEWLINE) == 0 {
        let letters = after_prefix(c, pos);
        // Also checks that the byte after a prefix is ASCII, which the punctuation rule needs.
        let end = run_end(bytes, run_end(bytes, letters, UPPER)?, LOWER)?;
        if end > letters {
            return contraction_end(bytes, end);
        }
    }
    if c == DIGIT {
        return digits_end(bytes, pos);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    if let Some(start) = punctuation_start(bytes, pos, c) {
        let mut end = run_end(bytes, start, OTHER)?;
        while matches!(bytes.get(end), Some(b'\r' | b'\n' | b'/')) {
            end += 1;
        }
        return Some(end);
    }
    whitespace_end(bytes, pos)
}

/// Where the punctuation run of ` ?[^\s\p{L}\p{N}]+` starts, if that rule can match at `pos`
/// (whose byte has class `c`): at `pos`, or past one leading space.
fn punctuation_start(bytes: &[u8], pos: usize, c: u8) -> Option<usize> {
    if c == OTHER {
        Some(pos)
    } else if bytes[pos] == b' ' && bytes.get(pos + 1).map(|&b| class(b)) == Some(OTHER) {
        Some(pos + 1)
    } else {
        None
    }
}

/// The end of the `cl100k_base` piece that starts at `pos`, or `None` to ask the regex.
fn cl100k_piece_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let c = class(bytes[pos]);
    if c == NON_ASCII {
        return None;
    }
    // `(?i:'s|'t|'re|'ve|'m|'ll|'d)` comes first.
    let contraction = contraction_end(bytes, pos)?;
    if contraction > pos {
        return Some(contraction);
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if c & (DIGIT | NEWLINE) == 0 {
        let letters = after_prefix(c, pos);
        // Also checks that the byte after a prefix is ASCII, which the punctuation rule needs.
        let end = run_end(bytes, letters, LETTER)?;
        if end > letters {
            return Some(end);
        }
    }
    if c == DIGIT {
        return digits_end(bytes, pos);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    if let Some(start) = punctuation_start(bytes, pos, c) {
        let end = run_end(bytes, start, OTHER)?;
        return run_end(bytes, end, NEWLINE);
    }
    whitespace_end(bytes, pos)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const VOCABULARIES: [Vocabulary; 2] = [Vocabulary::O200kBase, Vocabulary::Cl100kBase];

    #[track_caller]
    fn assert_same_pieces(text: &str) {
        for vocabulary in VOCABULARIES {
            let fast: Vec<&str> = vocabulary.pieces(text).collect();
            let reference: Vec<&str> = vocabulary.tokenizer().split(text).collect();
            assert_eq!(fast, reference, "{vocabulary:?} pieces of {text:?}");
        }
    }

    /// Characters that exercise every rule: letters of both cases (and the contraction letters),
    /// digits, each ASCII space, apostrophes, punctuation and `/`, controls, and non-ASCII
    /// letters, marks, digits, spaces and punctuation (`ſ` is `s` case-insensitively).
    const ALPHABET: &[&str] = &[
        "a", "e", "s", "t", "l", "r", "v", "m", "d", "x", "S", "T", "L", "R", "E", "V", "M", "D",
        "Q", "0", "7", " ", " ", "\t", "\r", "\n", "\x0B", "\x0C", "\x1C", "\0", "'", "'", ",",
        ".", "!", "/", "-", "\"", "é", "É", "ß", "ſ", "中", "😀", "\u{301}", "\u{A0}", "\u{2003}",
        "\u{85}", "’", "—", "٣", "²", "ǅ", "ʰ",
    ];

    pub(crate) fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..48)
            .prop_map(|parts| parts.concat())
    }

    /// Runs of realistic pieces: words in each case, contractions, numbers, spacing, newlines.
    pub(crate) fn prose() -> impl Strategy<Value = String> {
        const WORDS: &[&str] = &[
            "the",
            "The",
            "THE",
            "don't",
            "DON'T",
            "I'm",
            "we'll",
            "You're",
            "they've",
            "He'd",
            "it's",
            "IT'S",
            "'s",
            "'LL",
            "'re",
            "'ve",
            "'x",
            "McDonald",
            "iPhone",
            "HTTPServer",
            "1234567",
            "3.14",
            " ",
            "  ",
            "   ",
            "\n",
            "\r\n",
            "\n\n",
            " \n ",
            "\t",
            ", ",
            ". ",
            "...",
            "!?",
            " (",
            ") ",
            "/",
            "//",
            " /usr/bin",
            "a/b\n/",
            "café",
            "naïve",
            "’s",
            " — ",
            "中文",
            "😀",
            "\u{A0}",
            "e\u{301}",
        ];
        prop::collection::vec(prop::sample::select(WORDS), 0..24).prop_map(|parts| parts.concat())
    }

    #[test]
    fn exhaustive_short_strings() {
        // Every string of up to 3 characters over a small alphabet that covers the ASCII rules.
        let alphabet = [
            "a", "A", "s", "S", "l", "e", "1", " ", "\t", "\r", "\n", "'", ".", "/", "é", "\u{A0}",
        ];
        let mut texts = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            for text in &longer {
                assert_same_pieces(text);
            }
            texts = longer;
        }
    }

    #[test]
    fn known_splits() {
        assert_same_pieces("Hello, world! It's 3:45pm, and we've got 1,234,567 reasons.");
        assert_same_pieces("  leading and trailing spaces   \n\n\n\tand tabs\t\t\r\nand CRLF\r\n");
        assert_same_pieces("I'm, you're, they've, she'll, he'd, it's, CAN'T, WON'T, Isn'T 'ſ");
        assert_same_pieces("https://example.com/path?query=1 /usr/local/bin/python3.11\n/x");
        assert_same_pieces("Emoji: 😀 — and accents: café, naïve, Zoë, façade. “Quoted”");
        assert_same_pieces(include_str!("../../benches/data/english_prose.txt"));
        let o200k: Vec<&str> = Vocabulary::O200kBase
            .pieces("HTTPServer's x  y\n")
            .collect();
        assert_eq!(o200k, ["HTTPServer's", " x", " ", " y", "\n"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn same_pieces_as_bpe_openai(text in text()) {
            assert_same_pieces(&text);
        }

        #[test]
        fn same_pieces_on_prose(text in prose()) {
            assert_same_pieces(&text);
        }
    }
}
