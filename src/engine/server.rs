//! Starting and stopping a server: binds one `SO_REUSEPORT` listener per shard (after
//! checking that no other server holds the address), spawns the shard threads, and turns
//! SIGINT/SIGTERM into a graceful shutdown. The entry point of the data flow; the binary
//! and the tests both come through [`run`] or [`start`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use mio::{Poll, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Gate;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::limits::PerIp;
use crate::engine::shard::{Shard, Shared, WAKER};
use crate::error::Error;
use crate::history;
use crate::hub::handler::Handler;
use crate::hub::{inbox, Filters, HistoryQueue, Hub, Remote, HISTORY_QUEUE};

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    hub: Hub,
    shared: Arc<Shared>,
    /// One per shard; each ends after shutdown.
    threads: Vec<JoinHandle<()>>,
    /// The cluster bus's threads (none without `--redis`); they end after shutdown.
    bus: Vec<JoinHandle<()>>,
    /// The history thread (`--history`); it commits what it holds and ends after shutdown.
    history: Option<JoinHandle<()>>,
}

/// Starts a server in the background: binds, spawns the shards and returns at once.
/// `make_handler` builds one handler per shard (it gets the shard index).
pub fn start<H, F>(config: Config, make_handler: F) -> Result<Server, Error>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    start_with(config, Filters::default(), make_handler)
}

/// [`start`] with the application's named filters, which deliveries from other
/// instances of a cluster name.
pub(crate) fn start_with<H, F>(config: Config, filters: Filters, make_handler: F) -> Result<Server, Error>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    config.validate().map_err(Error::Config)?;
    // The reuseport listeners below would quietly share the port with another server
    // already on it (the two splitting the traffic): refuse that first. Port 0 is always
    // a fresh port.
    if config.listen.port() != 0 {
        refuse_if_taken(config.listen)?;
    }
    // Port 0 is resolved by the first listener; the others join that port.
    let first = reuseport_listener(config.listen)?;
    let local_addr = first.local_addr().map_err(Error::Startup)?;
    let mut listeners = vec![first];
    for _ in 1..config.shards {
        listeners.push(reuseport_listener(local_addr)?);
    }

    let mut polls = Vec::new();
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..config.shards {
        let poll = Poll::new().map_err(Error::Startup)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(Error::Startup)?;
        let (sender, receiver) = inbox(waker, config.inbox_capacity);
        polls.push(poll);
        inboxes.push(sender);
        receivers.push(receiver);
    }
    let cluster = match &config.cluster {
        Some(settings) => Some(Cluster::new(settings, config.inbox_capacity)?),
        None => None,
    };
    let remote = cluster.as_ref().map(|(cluster, _)| cluster.clone() as Arc<dyn Remote>);
    let mut hub = Hub::new(inboxes, remote, filters);
    // Opened before any thread starts, so a bad `--store` fails the start.
    let mut history_parts = None;
    if !config.history.is_empty() {
        let store = history::Store::open(&config.store).map_err(Error::Store)?;
        let (jobs, queue) = crossbeam_channel::bounded(HISTORY_QUEUE);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        hub = hub.with_history(HistoryQueue::new(config.history.clone(), jobs, stop));
        history_parts = Some((store, queue, stopped));
    }
    let gate = match &cluster {
        Some(_) => Gate::new(&config.auth).in_cluster(),
        None => Gate::new(&config.auth),
    };
    let per_ip = (config.max_connections_per_ip > 0).then(|| PerIp::new(config.max_connections_per_ip));
    let member = cluster.as_ref().map(|(cluster, _)| cluster.clone());
    let shared = Arc::new(Shared { config, live: AtomicUsize::new(0), gate: Arc::new(gate), per_ip, cluster: member });

    let history = match history_parts {
        Some((store, queue, stopped)) => Some(history::spawn(&shared.config, store, hub.clone(), queue, stopped)?),
        None => None,
    };
    let mut threads = Vec::new();
    let parts = polls.into_iter().zip(listeners).zip(receivers).enumerate();
    for (index, ((poll, listener), receiver)) in parts {
        let shard = Shard::new(index, poll, listener, receiver, hub.clone(), make_handler(index), shared.clone())
            .map_err(Error::Startup)?;
        let thread = thread::Builder::new()
            .name(format!("wshub-shard-{index}"))
            .spawn(move || shard.run())
            .map_err(Error::Startup)?;
        threads.push(thread);
    }
    let bus = match cluster {
        Some((cluster, parts)) => cluster.spawn(parts, hub.clone())?,
        None => Vec::new(),
    };
    Ok(Server { local_addr, hub, shared, threads, bus, history })
}

/// Runs a server until SIGINT or SIGTERM, then shuts it down gracefully: stop accepting,
/// close every connection with 1001, wait up to `--shutdown-timeout`.
pub fn run<H, F>(config: Config, make_handler: F) -> Result<(), Error>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    run_with(config, Filters::default(), make_handler)
}

/// [`run`] with the application's named filters (see [`start_with`]).
pub(crate) fn run_with<H, F>(config: Config, filters: Filters, make_handler: F) -> Result<(), Error>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    let shards = config.shards;
    let tls = config.tls.is_some();
    // Before accepting: once connections arrive they may take every descriptor left.
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(Error::Startup)?;
    let signal_handle = signals.handle();
    let server = start_with(config, filters, make_handler)?;
    let scheme = if tls { "wss" } else { "ws" };
    log::info!("wshub listening on {scheme}://{} with {shards} shard(s)", server.local_addr());
    let hub = server.hub();
    let watcher = thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("received signal {signal}; shutting down");
            hub.shutdown();
        }
    });
    let result = server.join();
    signal_handle.close();
    let _ = watcher.join();
    result
}

impl Server {
    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for sending to connections from outside the handlers.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Connections currently held, across shards, in any phase.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Begins a graceful shutdown (as SIGTERM does); `join` waits for it to finish.
    pub fn shutdown(&self) {
        self.hub.shutdown();
    }

    /// Waits until every shard has stopped.
    pub fn join(self) -> Result<(), Error> {
        let mut result = Ok(());
        for (index, thread) in self.threads.into_iter().enumerate() {
            if thread.join().is_err() {
                result = Err(Error::ShardPanicked(index));
            }
        }
        // The shards' shutdown stopped the bus too.
        for thread in self.bus {
            if thread.join().is_err() {
                result = Err(Error::BusPanicked);
            }
        }
        if self.history.is_some_and(|thread| thread.join().is_err()) {
            result = Err(Error::HistoryPanicked);
        }
        result
    }
}

/// Fails with [`Error::Bind`] when another socket already holds `addr`: binds a plain
/// socket there and drops it. `SO_REUSEADDR` lets it bind over connections of an earlier
/// run left in TIME-WAIT (a restart must work), but without `SO_REUSEPORT` a listener
/// still holding the address makes the bind fail.
fn refuse_if_taken(addr: SocketAddr) -> Result<(), Error> {
    let bind = |source| Error::Bind { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(Error::Startup)?;
    probe.set_reuse_address(true).map_err(bind)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(bind(io::Error::new(io::ErrorKind::AddrInUse, "another process is already listening there")))
        }
        other => other.map_err(bind),
    }
}

fn reuseport_listener(addr: SocketAddr) -> Result<mio::net::TcpListener, Error> {
    let bind = |source| Error::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(Error::Startup)?;
    socket.set_reuse_address(true).map_err(bind)?;
    socket.set_reuse_port(true).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    socket.listen(BACKLOG).map_err(bind)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
