//! Throughput of the SSE parser on a realistic OpenAI chat-completion stream: 500 chunk events
//! and `[DONE]`, fed in 1 KiB chunks (a busy connection) and one event per chunk (tokens
//! trickling in, one network read each); and of the gateway's relay of such a stream
//! (`OpenAIChatStream`: parse, strip the injected usage, capture it, write the client's bytes).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tollway_core::chat_stream::{OpenAIChatStream, DEFAULT_MAX_PENDING_BYTES};
use tollway_core::sse::{Event, SseParser, DEFAULT_MAX_LINE_BYTES};

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

const RELAY_EVENT: &[u8] =
    b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello \"},\
\"finish_reason\":null}],\"usage\":null}\n\n";
const RELAY_USAGE: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\
\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\
\"completion_tokens\":34,\"total_tokens\":46}}\n\n";

fn relay_stream(events: usize) -> Vec<u8> {
    let mut out = RELAY_EVENT.repeat(events - 2);
    out.extend_from_slice(RELAY_USAGE);
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn relay_all<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut stream = OpenAIChatStream::new(true, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PENDING_BYTES);
    let mut sent = 0;
    for chunk in chunks {
        sent += stream
            .feed(black_box(chunk))
            .expect("the bench stream is valid")
            .len();
    }
    sent
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
    let relay = relay_stream(500);
    group.throughput(Throughput::Bytes(relay.len() as u64));
    group.bench_function("relay_openai_500_events_1k_chunks", |b| {
        b.iter(|| black_box(relay_all(relay.chunks(1024))))
    });
    // The issue-3 comparison's size (`benches/test_sse_native_vs_python.py`).
    let relay = relay_stream(36);
    group.throughput(Throughput::Bytes(relay.len() as u64));
    group.bench_function("relay_openai_36_events_1k_chunks", |b| {
        b.iter(|| black_box(relay_all(relay.chunks(1024))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
