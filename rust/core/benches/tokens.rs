//! Token counting throughput on English prose (o200k_base, cl100k_base) and the chat counter.
//!
//! The headline case is `english_prose_varied_cold`: 118 KB of license texts that never repeat
//! (`benches/data/README.md`), counted with the per-thread piece cache emptied before each
//! count, as if the text and every word in it were new to the thread. `english_prose_varied`
//! counts it with the cache as the previous count left it (warm with these very words: an upper
//! bound). `repeated_paragraph` repeats one paragraph 128 times; it is kept for comparison with
//! older figures, but it flatters anything that caches per-word results.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tollway_core::tokens::{chat, clear_piece_caches, Encoding};

/// Varied, non-repeating English prose (see `benches/data/README.md` for its origin).
const VARIED_PROSE: &str = include_str!("data/english_prose.txt");

pub const PROSE: &str = "It was late in the afternoon when the gateway finally went quiet. \
The engineers had spent the week chasing a latency regression that only appeared under load, \
and every theory they tried seemed to explain half of the evidence and contradict the other half. \
In the end the cause was mundane: a connection pool that was too small for the traffic it served, \
so requests queued for a free socket while the servers behind it sat idle. They raised the limit, \
wrote a test that would have caught it, and went home. The next morning, the graphs were flat again, \
and nobody remembered how worried they had been. Good infrastructure is like that: when it works, \
it is invisible, and when it fails, everyone suddenly learns its name. ";

fn bench(c: &mut Criterion) {
    let repeated = PROSE.repeat(128); // ~90 KB
    let mut group = c.benchmark_group("tokens");
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        encoding.count_tokens("warm up the lazily loaded vocabulary");
        group.throughput(Throughput::Bytes(VARIED_PROSE.len() as u64));
        group.bench_function(
            format!("{}/english_prose_varied_cold", encoding.name()),
            |b| {
                b.iter_batched(
                    clear_piece_caches,
                    |()| encoding.count_tokens(black_box(VARIED_PROSE)),
                    BatchSize::PerIteration,
                )
            },
        );
        for (case, text) in [
            ("english_prose_varied", VARIED_PROSE),
            ("repeated_paragraph", repeated.as_str()),
        ] {
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(format!("{}/{case}", encoding.name()), |b| {
                b.iter(|| encoding.count_tokens(black_box(text)))
            });
        }
    }
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{}"}}]}}"#,
        &PROSE.repeat(2)[..1000]
    );
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("openai_chat_1kb_prompt", |b| {
        b.iter(|| chat::count_openai_chat(&Encoding::O200kBase, black_box(body.as_bytes())))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
