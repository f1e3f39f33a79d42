//! Fan-out cost: one server, N idle receivers, M broadcasts of S bytes; and once the same
//! to a topic all N subscribe to (what a publish adds: the subscriber lookup).
//!
//! Reports delivered messages per second and, from the shard threads' own CPU counters
//! (/proc/self/task/*/stat), the server's user-space and kernel time per delivery: the
//! user-space figure is what wshub controls (the kernel's share is mostly the socket
//! writes). Receivers are drained by one reader thread so the load stays bounded.
//!
//! It also counts heap allocations made on the shard threads while the broadcasts are
//! delivered (a counting global allocator, per thread), to check the claim that a
//! delivery allocates nothing: every receiver's queue takes a reference to the one frame.
//! What remains is per connection, per burst: a receiver with several frames waiting
//! grows its queue's overflow (a few doublings, kept while it is busy), not per delivery.
//!
//! `cargo bench --bench fanout` runs the full sizes; under `cargo test` it is a smoke run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wshub::{Config, Context, Handler, Message, Target};

/// Counts allocations made by shard threads (named `wshub-shard-*`), so the reader thread
/// and the benchmark's own work do not blur the figure.
struct CountingAllocator;

static SHARD_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread is a shard: decided on the thread's first allocation.
    static IS_SHARD: Cell<Option<bool>> = const { Cell::new(None) };
}

fn on_shard_thread() -> bool {
    IS_SHARD
        .try_with(|flag| match flag.get() {
            Some(known) => known,
            None => {
                // Reading the name does not allocate: it is stored in the thread's handle.
                let shard = std::thread::current().name().is_some_and(|name| name.starts_with("wshub-shard"));
                flag.set(Some(shard));
                shard
            }
        })
        .unwrap_or(false)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only
// observes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

struct Case {
    receivers: usize,
    messages: usize,
    size: usize,
    /// To the subscribers of a topic instead of everyone.
    topic: bool,
}

/// The topic every receiver subscribes to in the topic cases.
const TOPIC: &str = "bench";

/// Echo's receivers, subscribed to [`TOPIC`] on open.
struct Subscriber;

impl Handler for Subscriber {
    fn on_open(&mut self, cx: &mut Context<'_>) {
        cx.subscribe(TOPIC).expect("one subscription");
    }

    fn on_message(&mut self, _cx: &mut Context<'_>, _message: Message) {}
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let cases = if full {
        vec![
            Case { receivers: 1_000, messages: 1_000, size: 64, topic: false },
            Case { receivers: 1_000, messages: 200, size: 1024, topic: false },
            Case { receivers: 5_000, messages: 200, size: 64, topic: false },
            Case { receivers: 5_000, messages: 200, size: 64, topic: true },
        ]
    } else {
        vec![
            Case { receivers: 50, messages: 20, size: 64, topic: false },
            Case { receivers: 50, messages: 20, size: 64, topic: true },
        ]
    };
    for case in cases {
        run(&case);
    }
}

fn run(case: &Case) {
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), shards: 1, ..Config::default() };
    let server = wshub::start(config, |_| Subscriber).expect("server starts");
    let addr = server.local_addr();
    let mut sockets: Vec<TcpStream> = (0..case.receivers)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap();
            let (ws, _) = tungstenite::client(format!("ws://{addr}/").as_str(), stream).unwrap();
            ws.into_inner()
        })
        .collect();
    for socket in &sockets {
        socket.set_nonblocking(true).unwrap();
    }
    let header = if case.size < 126 { 2 } else { 4 };
    let expected = case.messages * (case.size + header);
    let reader = std::thread::spawn(move || {
        let mut received = vec![0usize; sockets.len()];
        let mut done = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(120);
        while done < sockets.len() {
            assert!(Instant::now() < deadline, "fan-out did not complete");
            for (socket, got) in sockets.iter_mut().zip(received.iter_mut()) {
                if *got >= expected {
                    continue;
                }
                match socket.read(&mut buf) {
                    Ok(0) => panic!("server closed a receiver"),
                    Ok(n) => {
                        *got += n;
                        if *got >= expected {
                            done += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("receiver failed: {e}"),
                }
            }
        }
        sockets
    });

    let hub = server.hub();
    // Subscribed on open, on the shard's thread: wait until every receiver is.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.presence(TOPIC).count < case.receivers {
        assert!(Instant::now() < deadline, "receivers did not all subscribe");
        std::thread::sleep(Duration::from_millis(5));
    }
    let payload = "x".repeat(case.size);
    let (user_before, system_before) = shard_cpu();
    let allocations_before = SHARD_ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..case.messages {
        let frame = Message::text(payload.as_str());
        if case.topic {
            // The payload as the whole frame, so receivers count the same bytes.
            hub.route(Target::Topic { topic: TOPIC.into(), data: "0".into() }, frame).unwrap();
        } else {
            hub.broadcast(frame).unwrap();
        }
    }
    let sockets = reader.join().unwrap();
    let elapsed = started.elapsed();
    let (user_after, system_after) = shard_cpu();
    let allocations = SHARD_ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let deliveries = (case.receivers * case.messages) as f64;
    let tick_us = 1e6 / clock_ticks_per_second();
    println!(
        "fanout {}{} receivers x {} msgs of {} B: {:.0} deliveries/s; shard CPU per delivery: user {:.3} us, kernel {:.3} us; shard allocations: {} ({:.4} per delivery)",
        if case.topic { "(topic) " } else { "" },
        case.receivers,
        case.messages,
        case.size,
        deliveries / elapsed.as_secs_f64(),
        (user_after - user_before) as f64 * tick_us / deliveries,
        (system_after - system_before) as f64 * tick_us / deliveries,
        allocations,
        allocations as f64 / deliveries,
    );
    drop(sockets);
    server.shutdown();
    server.join().unwrap();
}

/// User and system clock ticks of this process's shard threads.
fn shard_cpu() -> (u64, u64) {
    let mut totals = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("wshub-shard") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        totals.0 += fields[11].parse::<u64>().unwrap();
        totals.1 += fields[12].parse::<u64>().unwrap();
    }
    totals
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
