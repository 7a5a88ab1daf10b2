//! Throughput of the SSE parser on a realistic OpenAI chat-completion stream fed in 1 KiB chunks.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tollway_core::sse::SseParser;

fn openai_stream(events: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..events {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
                 \"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hello {i} \"}},\
                 \"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn bench(c: &mut Criterion) {
    let stream = openai_stream(500);
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("openai_500_events_1k_chunks", |b| {
        b.iter(|| {
            let mut parser = SseParser::default();
            let mut events = Vec::with_capacity(16);
            let mut count = 0;
            for chunk in stream.chunks(1024) {
                parser.feed_into(black_box(chunk), &mut events).unwrap();
                count += events.len();
                events.clear();
            }
            black_box(count)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
