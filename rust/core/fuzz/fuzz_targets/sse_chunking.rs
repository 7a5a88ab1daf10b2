//! The SSE parser on arbitrary bytes split at arbitrary points: it never panics, its memory
//! stays bounded by the line cap, and the events (or the error) never depend on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_core::sse::{Event, SseError, SseParser};

const MAX_LINE: usize = 4096;

fn parse_in(chunks: &[&[u8]]) -> (Vec<Event>, Option<SseError>) {
    let mut parser = SseParser::new(MAX_LINE);
    let mut events = Vec::new();
    for chunk in chunks {
        // `feed_into` keeps the events completed before an error, so the lists compare fully.
        if let Err(err) = parser.feed_into(chunk, &mut events) {
            return (events, Some(err));
        }
    }
    match parser.finish() {
        Ok(more) => events.extend(more),
        Err(err) => return (events, Some(err)),
    }
    (events, None)
}

fuzz_target!(|input: &[u8]| {
    // The first byte seeds the split points; the rest is the stream.
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    let whole = parse_in(&[stream]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed % 17) + 1;
    while !rest.is_empty() {
        let cut = step.min(rest.len());
        chunks.push(&rest[..cut]);
        rest = &rest[cut..];
        step = (step * 7 + 3) % 23 + 1;
    }
    let split = parse_in(&chunks);
    assert_eq!(whole, split, "events depend on how the stream was split");
    for event in &whole.0 {
        // Every line of an event fit under the cap, so no event can be larger than the stream.
        assert!(event.data.len() <= stream.len());
    }
});
