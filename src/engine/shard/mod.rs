//! A shard: one poller thread that owns a `SO_REUSEPORT` listener, a slab of connections,
//! a timer wheel and an inbox. Sits between accept (its listener) and the connections; it
//! is where handler effects and cross-shard commands become deliveries.
//!
//! Each loop pass is a dispatch table over readiness events (waker → drain the inbox,
//! listener → accept until WouldBlock, connection → `Connection::ready`), then the timers
//! that came due, then one flush per connection that has output: frames queued anywhere
//! in the pass leave in a single write.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::{unix_now, Gate};
use crate::clock::{self, Clock, Tick};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::conn::{Connection, Incoming, Limits, Outcome};
use crate::engine::limits::PerIp;
use crate::engine::timers::{Entry, TimerWheel};
use crate::engine::wire::Inbound;
use crate::frame::SharedFrame;
use crate::hub::batch::Batcher;
use crate::hub::handler::{Context, Effect, Handler, ShardRouting};
use crate::hub::{Command, ConnId, Hub, InboxReceiver};
use crate::metrics::Counters;
use crate::protocol;
use crate::sync::lock;

mod accept;
mod asking;
mod delivery;
mod expiry;
mod ledger;
mod shard_io;

use expiry::{Expiries, ExpiryEvent};
use shard_io::ShardIo;

pub(crate) const WAKER: Token = Token(usize::MAX - 1);
const LISTENER: Token = Token(usize::MAX - 2);
/// How long accepting pauses after the process runs out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// State every shard shares.
pub(crate) struct Shared {
    pub config: Config,
    /// Connections held across all shards, for `--max-connections`.
    pub live: AtomicUsize,
    /// The auth policy every upgrade passes; holds the outstanding tickets.
    pub gate: Arc<Gate>,
    /// Connections per source address, with `--max-connections-per-ip`.
    pub per_ip: Option<PerIp>,
    /// This instance's membership of a cluster (`--redis`): where tickets are stored and
    /// taken (see `asking`).
    pub cluster: Option<Arc<Cluster>>,
}

pub(crate) struct Shard<H> {
    index: usize,
    io: ShardIo,
    /// `None` once shutdown has begun: no more accepts.
    listener: Option<TcpListener>,
    conns: Slab<Connection>,
    inbox: InboxReceiver,
    /// Topic subscriptions and the hub (every shard's inbox and shared state).
    routing: ShardRouting,
    /// Publications held for batch delivery.
    batcher: Batcher,
    handler: H,
    shared: Arc<Shared>,
    clock: Clock,
    timers: TimerWheel,
    /// Connections with output to write at the end of this pass (each listed once).
    flush_list: Vec<usize>,
    /// Connections whose read budget ran out: read again next pass.
    read_again: Vec<usize>,
    /// Scratch for connections whose timers said "remove".
    expired: Vec<usize>,
    /// Scratch for connections whose timers fired and may have queued output.
    fired: Vec<usize>,
    /// Scratch for the receivers of one broadcast or user send (reused, never shrunk).
    targets: Vec<usize>,
    /// Connections that were active since they last gave their buffers back; swept once
    /// per tick.
    sweep_list: Vec<usize>,
    /// The tick of the last buffer sweep.
    swept_at: Tick,
    effects: Vec<Effect>,
    next_generation: u32,
    /// Accepting is paused (out of file descriptors) until this tick.
    accept_paused_until: Option<Tick>,
    /// Each connection's source address, kept only with `--max-connections-per-ip`.
    peer_ips: HashMap<usize, IpAddr>,
    /// Connections whose credential expires: warnings and [`protocol::TOKEN_EXPIRED`] closes.
    expiries: Expiries,
    /// The Unix second the expiries were last checked.
    expiries_checked: u64,
    /// Shutdown has begun; everything still here at this tick is dropped.
    shutdown_deadline: Option<Tick>,
}

impl<H: Handler> Shard<H> {
    pub fn new(
        index: usize,
        poll: Poll,
        mut listener: TcpListener,
        inbox: InboxReceiver,
        hub: Hub,
        handler: H,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let clock = Clock::new();
        let routing = ShardRouting {
            index,
            hub,
            max_subscriptions: shared.config.max_subscriptions,
            grants: HashMap::new(),
            gate: shared.gate.clone(),
            recovering: Default::default(),
        };
        Ok(Shard {
            index,
            io: ShardIo {
                limits: Limits::new(&shared.config),
                poll,
                incoming: Vec::new(),
                counters: Counters::default(),
                gate: shared.gate.clone(),
                inbound: Inbound::default(),
                wall: Instant::now(),
            },
            listener: Some(listener),
            conns: Slab::new(),
            inbox,
            routing,
            batcher: Batcher::new(&shared.config.batch, shared.config.max_message_size),
            handler,
            shared,
            timers: TimerWheel::new(clock.now()),
            clock,
            flush_list: Vec::new(),
            read_again: Vec::new(),
            expired: Vec::new(),
            fired: Vec::new(),
            targets: Vec::new(),
            sweep_list: Vec::new(),
            swept_at: 0,
            effects: Vec::new(),
            next_generation: 0,
            accept_paused_until: None,
            peer_ips: HashMap::new(),
            expiries: Expiries::default(),
            expiries_checked: 0,
            shutdown_deadline: None,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.read_again.is_empty() { self.clock.until_next_tick() } else { Duration::ZERO };
            if let Err(e) = self.io.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("shard {}: poll failed, stopping: {e}", self.index);
                break;
            }
            let now = self.clock.now();
            self.io.wall = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => self.drain_inbox(now),
                    LISTENER => self.accept_until_would_block(now),
                    Token(key) => {
                        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                        self.connection_ready(key, readable, event.is_writable(), now);
                    }
                }
            }
            for key in mem::take(&mut self.read_again) {
                self.connection_ready(key, true, false, now);
            }
            self.fire_timers(now);
            self.deliver_batches(now);
            // Before the flush, so a client that has read an answer (an HTTP response, an
            // ack, a delivery) finds it counted in /stats, whichever shard answers that.
            self.publish_counters();
            self.flush_all(now);
            self.sweep_buffers(now);
            self.fire_expiries(now);
            self.resume_accepting(now);
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.remove(key, self.clock.now());
        }
        log::debug!("shard {} stopped", self.index);
    }

    /// Makes this pass's counts visible to `/stats`, `/metrics` and `Hub::stats`.
    fn publish_counters(&self) {
        let shared = self.routing.hub.shared(self.index);
        shared.expiry_entries.store(self.expiries.pending(), Ordering::Relaxed);
        let mut published = lock(&shared.counters);
        if *published != self.io.counters {
            *published = self.io.counters;
        }
    }

    fn connection_ready(&mut self, key: usize, readable: bool, writable: bool, now: Tick) {
        // Tolerate events for connections already gone (spurious or stale).
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut cx = self.io.cx(key, now);
        let outcome = conn.ready(readable, writable, &mut cx);
        self.conclude(key, outcome, now);
    }

    /// After a call into a connection: its interest synced with its state, what it
    /// surfaced (messages, a request, an upgrade) dispatched, then its outcome applied.
    pub(super) fn conclude(&mut self, key: usize, outcome: Outcome, now: Tick) {
        let synced = match self.conns.get_mut(key) {
            Some(conn) => self.io.sync_interest(key, conn),
            None => false,
        };
        self.dispatch_incoming(key, now);
        match if synced { outcome } else { Outcome::Remove } {
            Outcome::Remove => self.remove(key, now),
            Outcome::ReadAgain => self.read_again.push(key),
            Outcome::Keep => {}
        }
        self.settle(key);
    }

    /// After anything touched a connection: list it for the flush and for the buffer
    /// sweeps, and arm its close deadline.
    // Runs once per delivery; see `deliver` for why it is inlined by hand.
    #[inline(always)]
    fn settle(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(at) = conn.take_reschedule(&self.io.limits) {
            self.timers.schedule(Entry { key: key as u32, generation: conn.generation, at });
        }
        if conn.claim_flush() {
            self.flush_list.push(key);
        }
        if conn.claim_sweep() {
            self.sweep_list.push(key);
        }
    }

    /// Once per tick: connections quiet for a whole tick give their buffers back.
    fn sweep_buffers(&mut self, now: Tick) {
        if now == self.swept_at {
            return;
        }
        self.swept_at = now;
        let Shard { conns, sweep_list, .. } = self;
        sweep_list.retain(|&key| conns.get_mut(key).is_some_and(|conn| conn.sweep_buffers()));
    }

    /// Runs the handler for what a connection produced, applying its effects after each call.
    fn dispatch_incoming(&mut self, key: usize, now: Tick) {
        let mut incoming = mem::take(&mut self.io.incoming);
        while !incoming.is_empty() {
            self.dispatch(key, &mut incoming, now);
            // Answering an HTTP request may have surfaced a pipelined one.
            mem::swap(&mut incoming, &mut self.io.incoming);
        }
        self.io.incoming = incoming;
    }

    fn dispatch(&mut self, key: usize, incoming: &mut Vec<Incoming>, now: Tick) {
        for item in incoming.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                break;
            };
            let id = ConnId::new(conn.node, self.index, key, conn.generation);
            match item {
                Incoming::Opened(admission) => {
                    self.admit(key, admission);
                    let user = self.conns[key].user.as_ref();
                    let mut cx = Context::new(id, user, &mut self.effects, &mut self.routing);
                    self.handler.on_open(&mut cx);
                }
                Incoming::Message(message) => {
                    self.io.counters.messages_in += 1;
                    self.io.counters.bytes_in += message.len() as u64;
                    let mut cx = Context::new(id, conn.user.as_ref(), &mut self.effects, &mut self.routing);
                    self.handler.on_message(&mut cx, message);
                }
                Incoming::Failed(code, reason) => {
                    if conn.close(code, reason, now, &self.io.limits) == Outcome::Remove {
                        self.remove(key, now);
                    }
                }
                Incoming::Http(request) => self.serve_http(key, &request, now),
                Incoming::TakeTicket(ticket) => self.take_ticket(key, &ticket, now),
            }
            self.apply_effects(key, now);
        }
    }

    fn apply_effects(&mut self, key: usize, now: Tick) {
        let mut effects = mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::Reply(frame) => self.deliver(key, &frame, now),
                Effect::Deliver(target, frame) => self.deliver_local(&target, &frame, now),
                Effect::Refreshed(Some(expires_at)) => self.expiries.set(key, expires_at, unix_now()),
                Effect::Refreshed(None) => self.expiries.clear(key),
                Effect::Close(code, reason) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        if conn.close(code, reason, now, &self.io.limits) == Outcome::Remove {
                            self.remove(key, now);
                        }
                        self.settle(key);
                    }
                }
            }
        }
        self.effects = effects;
    }

    fn drain_inbox(&mut self, now: Tick) {
        self.inbox.woken();
        while let Some(command) = self.inbox.next() {
            match command {
                Command::Deliver { target, frame } => self.deliver_local(&target, &frame, now),
                Command::Resume(id, answer) => self.resume(id, answer, now),
                Command::Replay { conn, request, topic, frames, subscribed } => {
                    self.replay(conn, request, &topic, &frames, subscribed, now)
                }
            }
        }
        // After the drain, so what was sent before the shutdown goes out before the 1001.
        if self.inbox.shutdown_requested() {
            self.begin_shutdown(now);
        }
    }

    fn fire_timers(&mut self, now: Tick) {
        let Shard { timers, conns, io, expired, fired, .. } = self;
        let limits = &io.limits;
        timers.advance(now, |wheel, entry| {
            let Some(conn) = conns.get_mut(entry.key as usize) else {
                return;
            };
            if conn.generation != entry.generation || conn.timer_at != entry.at {
                return; // the slot's earlier tenant, or superseded by a re-schedule
            }
            match conn.on_timer(limits, now) {
                Some(at) => {
                    wheel.schedule(Entry { at, ..entry });
                    fired.push(entry.key as usize);
                }
                None => {
                    if conn.first_request_pending() {
                        io.counters.handshake_failures += 1;
                    }
                    expired.push(entry.key as usize)
                }
            }
        });
        for key in mem::take(&mut self.expired) {
            self.remove(key, now);
        }
        // A timer may have queued a ping or started a close.
        for key in mem::take(&mut self.fired) {
            self.settle(key);
        }
    }

    fn flush_all(&mut self, now: Tick) {
        let mut list = mem::take(&mut self.flush_list);
        for key in list.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let mut cx = self.io.cx(key, now);
            let outcome = conn.flush(&mut cx);
            if outcome == Outcome::Remove || !self.io.sync_interest(key, conn) {
                self.remove(key, now);
            } else if let Some(at) = conn.take_reschedule(&self.io.limits) {
                self.timers.schedule(Entry { key: key as u32, generation: conn.generation, at });
            }
            if !self.io.incoming.is_empty() {
                // A handshaking connection's flush writes its HTTP reply, which may surface
                // the next pipelined request.
                self.dispatch_incoming(key, now);
                self.settle(key);
            }
        }
        self.flush_list = list;
    }

    /// Once a second: warns connections whose credential expires soon, closes those
    /// whose credential has expired ([`protocol::TOKEN_EXPIRED`]).
    fn fire_expiries(&mut self, now: Tick) {
        let unix = unix_now();
        if unix == self.expiries_checked {
            return;
        }
        self.expiries_checked = unix;
        let mut due = Vec::new();
        self.expiries.take_due(unix, &mut due);
        for (key, event) in due {
            match event {
                ExpiryEvent::Warn(expires_at) => {
                    let frame = SharedFrame::text(protocol::token_expiring(expires_at));
                    self.deliver(key, &frame, now);
                }
                ExpiryEvent::Expired => {
                    let Some(conn) = self.conns.get_mut(key) else { continue };
                    let code = CloseCode::Library(protocol::TOKEN_EXPIRED);
                    if conn.close(code, protocol::TOKEN_EXPIRED_REASON, now, &self.io.limits) == Outcome::Remove {
                        self.remove(key, now);
                    }
                    self.settle(key);
                }
            }
        }
    }

    fn begin_shutdown(&mut self, now: Tick) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.listener = None;
        self.shutdown_deadline = Some(now + clock::ticks(self.shared.config.shutdown_timeout));
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            if self.conns[key].close(CloseCode::Away, "server shutting down", now, &self.io.limits) == Outcome::Remove {
                self.remove(key, now);
            } else {
                self.settle(key);
            }
        }
    }

    fn remove(&mut self, key: usize, now: Tick) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        if conn.was_opened() {
            let id = ConnId::new(conn.node, self.index, key, conn.generation);
            let mut cx = Context::new(id, conn.user.as_ref(), &mut self.effects, &mut self.routing);
            self.handler.on_close(&mut cx);
            self.apply_effects(key, now);
        }
        // After on_close, which may still read the session or the subscriptions.
        self.forget(key, &conn);
        self.routing.recovering.forget(key as u32);
        // A descriptor is free again: an accept paused on the fd limit may resume (at the
        // end of this pass, not here, so no key freed in this pass is reused within it).
        if self.accept_paused_until.is_some() {
            self.accept_paused_until = Some(now);
        }
    }
}
