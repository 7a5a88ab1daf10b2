//! A bounded, per-thread cache of the token counts of short pre-tokenizer pieces.
//!
//! BPE of a piece (`bpe`'s backtracking encoder: an Aho-Corasick search per step and two heap
//! allocations per piece) is about two thirds of the counting time on English prose, and prose
//! is mostly a few thousand distinct words: Hugging Face `tokenizers` keeps a word cache for the
//! same reason. The cache maps a piece's bytes to its count, so it cannot change a count: a hit
//! compares the whole piece, and a miss counts with `bpe` as before.
//!
//! # Bounds
//! A direct-mapped table of [`SLOTS`] slots of 32 bytes (128 KiB) per vocabulary, allocated on a
//! thread's first count with that vocabulary and freed when the thread ends; pieces longer than
//! [`MAX_PIECE_LEN`] bytes are never cached. A new piece overwrites the slot it hashes to. Being
//! per thread, it takes no lock, and threads counting at once never contend.

use std::cell::RefCell;

use super::pretokenize::Vocabulary;

/// Longest piece cached, in bytes. English words with their leading space are far shorter;
/// longer pieces (long runs of spaces or punctuation, identifiers) are rare and counted directly.
pub(crate) const MAX_PIECE_LEN: usize = 30;
/// Slots per vocabulary and thread: a power of two (the index is the hash's top bits).
pub(crate) const SLOTS: usize = 4096;

/// One cached piece: its bytes, zero-padded, its length (0: empty slot; pieces are never empty)
/// and its token count (at most `MAX_PIECE_LEN`, one per byte).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    bytes: [u8; MAX_PIECE_LEN],
    len: u8,
    tokens: u8,
}

const EMPTY: Slot = Slot {
    bytes: [0; MAX_PIECE_LEN],
    len: 0,
    tokens: 0,
};

/// The cache of one vocabulary in one thread.
pub(crate) struct PieceCache {
    slots: Box<[Slot]>,
}

impl PieceCache {
    fn new() -> Self {
        Self {
            slots: vec![EMPTY; SLOTS].into_boxed_slice(),
        }
    }

    /// The count of `piece`: cached, or computed by `count` (and cached if the piece is short).
    #[inline]
    pub(crate) fn count(&mut self, piece: &[u8], count: impl FnOnce(&[u8]) -> usize) -> usize {
        if piece.len() > MAX_PIECE_LEN {
            return count(piece);
        }
        let mut key = [0u8; MAX_PIECE_LEN];
        key[..piece.len()].copy_from_slice(piece);
        let slot = &mut self.slots[index(&key, piece.len())];
        if usize::from(slot.len) == piece.len() && slot.bytes == key {
            return usize::from(slot.tokens);
        }
        let tokens = count(piece);
        // A piece of n bytes has at most n tokens (every byte is a token), so this always fits.
        if let Ok(cached) = u8::try_from(tokens) {
            *slot = Slot {
                bytes: key,
                len: piece.len() as u8,
                tokens: cached,
            };
        }
        tokens
    }
}

/// The slot of a zero-padded key: a multiply-rotate hash (as `rustc-hash`'s) of its four words
/// and its length, top bits.
#[inline(always)]
fn index(key: &[u8; MAX_PIECE_LEN], len: usize) -> usize {
    const SEED: u64 = 0xf135_7aea_2e62_a9c5;
    let word = |i: usize| {
        let mut bytes = [0u8; 8];
        let end = (i + 8).min(MAX_PIECE_LEN);
        bytes[..end - i].copy_from_slice(&key[i..end]);
        u64::from_le_bytes(bytes)
    };
    let mut hash = len as u64;
    for i in [0, 8, 16, 24] {
        hash = (hash ^ word(i)).wrapping_mul(SEED).rotate_left(26);
    }
    (hash.wrapping_mul(SEED) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// Empty this thread's caches (keeping their memory), for benchmarks of never-seen text.
pub(crate) fn clear() {
    let _ = CACHES.try_with(|caches| {
        if let Ok(mut caches) = caches.try_borrow_mut() {
            for cache in caches.iter_mut().flatten() {
                cache.slots.fill(EMPTY);
            }
        }
    });
}

thread_local! {
    static CACHES: RefCell<[Option<PieceCache>; 2]> = const { RefCell::new([None, None]) };
}

/// Run `f` with this thread's cache for `vocabulary`, or with none if it is unavailable (the
/// thread is exiting, or a count is already running on this thread: never today).
pub(crate) fn with_cache<R>(
    vocabulary: Vocabulary,
    f: impl FnOnce(Option<&mut PieceCache>) -> R,
) -> R {
    let mut f = Some(f);
    let cached = CACHES.try_with(|caches| {
        let Ok(mut caches) = caches.try_borrow_mut() else {
            return None;
        };
        let slot = match vocabulary {
            Vocabulary::O200kBase => &mut caches[0],
            Vocabulary::Cl100kBase => &mut caches[1],
        };
        let f = f.take().expect("called once");
        Some(f(Some(slot.get_or_insert_with(PieceCache::new))))
    });
    match cached {
        Ok(Some(result)) => result,
        _ => (f.take().expect("called once"))(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_and_misses_give_the_computed_count() {
        let mut cache = PieceCache::new();
        let mut calls = 0;
        let long = [b'x'; MAX_PIECE_LEN + 1];
        // A NUL is a byte of the piece, not padding: same padded bytes, other length.
        let pieces: [&[u8]; 5] = [b" hello", b" hello", b" hello\0", &long, &long];
        let counts: Vec<usize> = pieces
            .iter()
            .map(|piece| {
                cache.count(piece, |p| {
                    calls += 1;
                    p.len()
                })
            })
            .collect();
        assert_eq!(counts, [6, 6, 7, MAX_PIECE_LEN + 1, MAX_PIECE_LEN + 1]);
        // The second " hello" is a hit; pieces too long to cache are counted each time.
        assert_eq!(calls, 4);
    }

    #[test]
    fn colliding_pieces_evict_each_other_and_stay_exact() {
        let mut cache = PieceCache::new();
        // More distinct pieces than slots: collisions must never return another piece's count.
        let pieces: Vec<String> = (0..SLOTS * 4).map(|i| format!(" w{i}")).collect();
        for _ in 0..2 {
            for piece in &pieces {
                let expected = piece.len() % 7;
                assert_eq!(cache.count(piece.as_bytes(), |p| p.len() % 7), expected);
            }
        }
    }
}
