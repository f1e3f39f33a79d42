//! Cost of the JSON wire protocol, free of sockets: `protocol::decode` for typical client
//! frames, and the `message` and `batch` encoders for server frames.
//!
//! Decoding runs once per client frame on the shard thread, so it bounds how many frames a
//! shard can take in. Message encoding runs once per publish, never per delivery (every
//! receiver shares the encoded bytes), so its cost is divided over the fan-out.
//!
//! `cargo bench --bench protocol` measures; under `cargo test` each bench runs once.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use wshub::protocol;

/// A small application payload: a JSON object of about 60 bytes.
const DATA: &str = r#"{"user":"ann","text":"hello, world","seq":42,"tags":["a","b"]}"#;

fn decode(c: &mut Criterion) {
    let publish = format!(r#"{{"type":"publish","topic":"room/42","data":{DATA}}}"#);
    let frames = [
        ("publish", publish.as_str()),
        ("subscribe", r#"{"type":"subscribe","topic":"room/42"}"#),
        ("request", r#"{"type":"request","id":7,"method":"presence","params":{"topic":"room/42","limit":50}}"#),
        ("invalid", r#"{"type":"publish","topic":"room/42","data":"#),
    ];
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, text) in frames {
        group.bench_function(name, |b| b.iter(|| protocol::decode(black_box(text))));
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let data = RawValue::from_string(DATA.into()).expect("DATA is JSON");
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message", |b| {
        b.iter(|| {
            protocol::message(
                black_box(Some("room/42")),
                black_box("ann"),
                black_box(&data),
                black_box(1_700_000_000_000),
                None,
            )
        })
    });
    let items: Vec<String> = (0..100).map(|i| format!(r#"{{"p":{i},"q":"x"}}"#)).collect();
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("batch_100", |b| {
        b.iter(|| protocol::batch(black_box("room/42"), black_box(&items).iter().map(String::as_str)))
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
