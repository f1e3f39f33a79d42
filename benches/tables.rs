//! The per-connection tables of one shard (users, subscriptions, the directory other
//! threads read for presence), driven without sockets: what subscribe/unsubscribe churn
//! and connection churn cost, and a publish's subscriber lookup.
//!
//! Each connection has its own user and three topics, as deployed: `global` (shared by
//! all) and two of its own. `cargo bench --bench tables`.
//!
//! It first reports the resident memory of one shard's tables holding 1,000,000 distinct
//! topics (1,000 connections with 1,000 topics each; 10,000 topics under `cargo test`).

use criterion::{criterion_group, BatchSize, Criterion};
use std::hint::black_box;
use wshub::BenchTables;

const CONNS: usize = 10_000;

fn own_topics() -> Vec<[String; 2]> {
    (0..CONNS).map(|key| [format!("room.{key}.1"), format!("room.{key}.2")]).collect()
}

fn opened() -> BenchTables {
    opened_n(CONNS)
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

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok());
    kib.unwrap_or(0) * 1024
}

/// What one shard's tables take for `topics` distinct topics, each with one subscriber.
fn memory(topics: usize) {
    let conns = 1_000.min(topics);
    let per_conn = topics / conns;
    let names: Vec<String> = (0..conns * per_conn).map(|t| format!("chat.{t}")).collect();
    let before = rss();
    let mut tables = opened_n(conns);
    for (t, name) in names.iter().enumerate() {
        tables.subscribe(t / per_conn, name);
    }
    let held = rss() - before;
    for key in 0..conns {
        tables.close(key);
    }
    let after = rss().saturating_sub(before);
    println!(
        "tables memory: {} topics on {conns} connections: {} KiB, {} B per topic; {} KiB still resident after all closed",
        names.len(),
        held / 1024,
        held / names.len(),
        after / 1024
    );
}

fn opened_n(conns: usize) -> BenchTables {
    let mut tables = BenchTables::new();
    for key in 0..conns {
        tables.open(key, Some(&format!("u{key}")));
    }
    tables
}

criterion_group!(benches, tables);

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    memory(if full { 1_000_000 } else { 10_000 });
    benches();
    Criterion::default().configure_from_args().final_summary();
}
