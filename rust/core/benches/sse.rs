//! Throughput of the SSE parser on a realistic OpenAI chat-completion stream: 500 chunk events
//! and `[DONE]`, fed in 1 KiB chunks (a busy connection) and one event per chunk (tokens
//! trickling in, one network read each).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tollway_core::sse::{Event, SseParser};

const EVENT: &[u8] =
    b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello \"},\
\"finish_reason\":null}]}\n\n";

fn openai_stream(events: usize) -> Vec<u8> {
    let mut out = EVENT.repeat(events);
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn parse_all<'a>(chunks: impl Iterator<Item = &'a [u8]>, events: &mut Vec<Event>) -> usize {
    let mut parser = SseParser::default();
    let mut count = 0;
    for chunk in chunks {
        parser
            .feed_into(black_box(chunk), events)
            .expect("the bench stream has no overlong line");
        count += events.len();
        events.clear();
    }
    count
}

fn bench(c: &mut Criterion) {
    let stream = openai_stream(500);
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("openai_500_events_1k_chunks", |b| {
        let mut events = Vec::with_capacity(16);
        b.iter(|| black_box(parse_all(stream.chunks(1024), &mut events)))
    });
    group.bench_function("openai_500_events_one_per_chunk", |b| {
        let mut events = Vec::with_capacity(16);
        b.iter(|| black_box(parse_all(stream.chunks(EVENT.len()), &mut events)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
