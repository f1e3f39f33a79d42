//! The per-connection tables of one shard (users, subscriptions, the directory other
//! threads read for presence), driven without sockets: what subscribe/unsubscribe churn
//! and connection churn cost, and a publish's subscriber lookup.
//!
//! Each connection has its own user and three topics, as deployed: `global` (shared by
//! all) and two of its own. `cargo bench --bench tables`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use wshub::BenchTables;

const CONNS: usize = 10_000;

fn own_topics() -> Vec<[String; 2]> {
    (0..CONNS).map(|key| [format!("room.{key}.1"), format!("room.{key}.2")]).collect()
}

fn opened() -> BenchTables {
    let mut tables = BenchTables::new();
    for key in 0..CONNS {
        tables.open(key, Some(&format!("u{key}")));
    }
    tables
}

fn subscribe_all(tables: &mut BenchTables, topics: &[[String; 2]]) {
    for (key, own) in topics.iter().enumerate() {
        tables.subscribe(key, "global");
        tables.subscribe(key, &own[0]);
        tables.subscribe(key, &own[1]);
    }
}

fn tables(c: &mut Criterion) {
    let topics = own_topics();
    let mut group = c.benchmark_group("tables");
    group.sample_size(20);

    // Subscribe 10k connections to 3 topics each, then unsubscribe them all again.
    let mut tables = opened();
    group.bench_function("subscribe+unsubscribe 3 topics x 10k conns", |b| {
        b.iter(|| {
            subscribe_all(&mut tables, &topics);
            // Last in, first out for the shared topic: the cheap end of its list.
            for (key, own) in topics.iter().enumerate().rev() {
                tables.unsubscribe(key, "global");
                tables.unsubscribe(key, &own[0]);
                tables.unsubscribe(key, &own[1]);
            }
        })
    });

    // 10k connections open, subscribe to 3 topics each, and close (in opening order).
    group.bench_function("open+subscribe 3+close x 10k conns", |b| {
        b.iter_batched(
            BenchTables::new,
            |mut tables| {
                for key in 0..CONNS {
                    tables.open(key, Some(&format!("u{key}")));
                }
                subscribe_all(&mut tables, &topics);
                for key in 0..CONNS {
                    tables.close(key);
                }
                tables
            },
            BatchSize::LargeInput,
        )
    });

    // What a publish does before delivering: look up the topic's local subscribers.
    let mut tables = opened();
    subscribe_all(&mut tables, &topics);
    let mut keys = Vec::with_capacity(CONNS);
    group.bench_function("subscribers of an own topic", |b| {
        let mut key = 0;
        b.iter(|| {
            key = (key + 7) % CONNS;
            keys.clear();
            tables.subscribers(&topics[key][0], &mut keys);
            black_box(keys.len())
        })
    });
    group.bench_function("subscribers of global (10k)", |b| {
        b.iter(|| {
            keys.clear();
            tables.subscribers("global", &mut keys);
            black_box(keys.len())
        })
    });
    group.bench_function("presence of global (10k users)", |b| b.iter(|| black_box(tables.presence("global"))));
    group.finish();
}

criterion_group!(benches, tables);
criterion_main!(benches);
