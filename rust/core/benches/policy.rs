//! Policy matching: 1,000 policies with typical selectors (per key, per team, per model,
//! model globs, tags, IP ranges and a parameter bound), one request evaluated against all.
//! Target: under 2 us per request.
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tollway_core::policy::{Condition, PolicySet, Request, Value};

fn cond(attribute: &str, operator: &str, value: Value) -> Condition {
    Condition::new(attribute, operator, value)
}

fn policies(n: usize) -> Vec<Vec<Condition>> {
    (0..n)
        .map(|i| match i % 10 {
            0..=3 => vec![cond("key", "exact", Value::Str(format!("key-{i}")))],
            4 | 5 => vec![
                cond("team", "exact", Value::Str(format!("team-{}", i % 50))),
                cond("model", "glob", Value::Str("gpt-4*".into())),
            ],
            6 => vec![cond(
                "model",
                "one_of",
                Value::List(vec![format!("model-{i}"), "gpt-4o".into()]),
            )],
            7 => vec![cond("tag", "exact", Value::Str(format!("tag-{}", i % 20)))],
            8 => vec![
                cond("key", "exact", Value::Str(format!("key-{}", i - 8))),
                cond("param:max_tokens", ">", Value::Num(4096.0)),
            ],
            _ => vec![
                cond(
                    "provider",
                    "exact",
                    Value::Str(format!("provider-{}", i % 5)),
                ),
                cond("ip", "cidr", Value::Str("10.0.0.0/8".into())),
            ],
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let set = PolicySet::new(&policies(1000)).unwrap();
    let tags = ["tag-3", "prod"];
    let params = [Some(8192.0)];
    let request = Request {
        strings: [
            Some("key-120"),
            Some("team-20"),
            Some("user-9"),
            Some("gpt-4o"),
            Some("gpt-4o-2024-08-06"),
            Some("provider-3"),
            Some("/v1/chat/completions"),
        ],
        tags: &tags,
        ip: Some("10.1.2.3".parse().unwrap()),
        params: &params,
    };
    let mut out = Vec::with_capacity(64);
    set.matches_into(&request, &mut out);
    assert!(!out.is_empty());
    c.bench_function("policy/1000_policies_one_request", |b| {
        b.iter(|| {
            set.matches_into(black_box(&request), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
