//! One connection: its phase, its deadlines, its outbound queue, and the translation
//! between readiness events and messages. Sits inside a shard's slab; the shard calls
//! [`Connection::ready`] on readiness, [`Connection::send`] to queue output,
//! [`Connection::flush`] once per loop pass, and [`Connection::on_timer`] when its wheel
//! entry fires. The core touches no socket and no clock: it reads and writes through a
//! [`Transport`] and is told the time, so the tests in `pipe` run it in memory.
//!
//! # Phases
//! ```text
//!  accept ─► Handshaking ──101 written──► Open ──close sent or received──► Closing ─► (removed)
//!            │ ▲      │                                                       │
//!            │ └──────┤ HTTP reply written, kept alive: next request          │
//!            │        └ HTTP reply written, then close: linger until EOF ─► (removed)
//!            └─ deadline, EOF, error ─► (removed)        deadline, EOF, close reply
//! ```
//! - `Handshaking`: reading the request (a head of at most 8 KiB, and a plain request's
//!   body), then writing our answer; a kept-alive plain HTTP connection goes back to
//!   reading its next request and stays in this phase. In a cluster, between request and
//!   answer it may wait for Redis ([`waiting`]: a ticket to take before the 101, a ticket
//!   to store before the HTTP answer), reading nothing, until the shard resumes it or its
//!   deadline passes.
//! - `Open`: messages flow both ways; silent peers get pings, then an idle close.
//! - `Closing`: our close frame is queued or sent; we wait for the peer's reply or EOF
//!   until the close deadline. Incoming data is no longer delivered.

use std::mem;
use std::sync::Arc;
use std::time::Instant;

use rustls::ServerConfig;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::auth::Gate;
use crate::auth::Grants;
use crate::clock::{ticks, Tick};
use crate::config::Config;
use crate::engine::wire::{Inbound, Transport, Wire};
use crate::frame::SharedFrame;
use crate::http::{HttpResponse, PlainRequest};
use crate::metrics::Counters;

mod frames;
mod handshake;
mod outbound;
mod output;
#[cfg(test)]
mod pipe;
mod waiting;

use handshake::Handshake;
use outbound::{FrameIo, Outbound};
pub(crate) use output::Delivery;
pub(crate) use waiting::{Resumption, Waiting};

/// Recv calls one readiness event may make before the connection yields to others.
const READ_BUDGET: usize = 16;

/// The limits and deadlines every connection on a shard shares.
pub(crate) struct Limits {
    /// Tungstenite's read-side limits; its write side is not used (output goes through
    /// the connection's own queue).
    pub websocket: WebSocketConfig,
    pub max_message_size: usize,
    /// Bytes a connection may owe its peer before it is evicted as a slow consumer.
    pub max_pending_bytes: usize,
    /// Largest body a plain HTTP request may carry.
    pub max_http_body: usize,
    pub handshake: Tick,
    pub ping: Tick,
    pub idle: Tick,
    pub close: Tick,
    /// Set on a `wss://` server: every accepted socket starts a TLS handshake with it.
    pub tls: Option<Arc<ServerConfig>>,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let websocket = WebSocketConfig::default()
            // Zero: reads come from the shard's inbound buffer, see `wire`.
            .read_buffer_size(0)
            // Zero: tungstenite's own frames (pongs, close frames) go straight into the
            // connection's queue, which the limit below does not apply to.
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Limits {
            websocket,
            max_message_size: config.max_message_size,
            max_pending_bytes: config.max_pending_bytes.min(u32::MAX as usize / 2),
            // A publish through the HTTP API carries one message's data plus its envelope.
            max_http_body: config.max_message_size + 1024,
            handshake: ticks(config.handshake_timeout),
            ping: ticks(config.ping_interval),
            idle: ticks(config.idle_timeout),
            close: ticks(config.close_timeout),
            tls: config.tls.as_ref().map(|tls| tls.server_config().clone()),
        }
    }
}

/// What happened on a connection, for the shard to pass to the handler.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Upgraded; with what the auth gate decided (none in open mode).
    Opened(Option<Admission>),
    Message(Message),
    Http(PlainRequest),
    /// An upgrade presented this ticket, kept in the cluster: the shard asks for it to
    /// be taken and resumes the connection, which waits, with the verdict.
    TakeTicket(String),
    /// The peer broke the protocol after the messages before this one: the shard closes
    /// the connection with this code once the handler has seen them (so replies to them
    /// still go out, ahead of the close frame).
    Failed(CloseCode, &'static str),
}

/// What a credential grants an upgraded connection, for the shard to keep.
#[derive(Debug)]
pub(crate) struct Admission {
    pub grants: Option<Arc<Grants>>,
    /// Unix seconds when the credential expires.
    pub expires_at: Option<u64>,
}

/// Everything `ready`, `flush` and `on_timer` need from the shard: no socket, no clock.
pub(crate) struct ConnEnv<'a> {
    /// The connection's slab key, for logs.
    pub key: usize,
    pub limits: &'a Limits,
    pub now: Tick,
    /// The wall-clock time of this loop pass, for credentials and tickets.
    pub wall: Instant,
    pub incoming: &'a mut Vec<Incoming>,
    pub counters: &'a mut Counters,
    pub gate: &'a Gate,
    /// The shard's read buffer; one connection at a time reads into it.
    pub inbound: &'a mut Inbound,
}

/// Whether the shard keeps the connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Keep it; wait for the next event.
    Keep,
    /// Keep it, and read again next pass: the read budget ran out before the socket
    /// was drained, and an edge-triggered poll will not report it again.
    ReadAgain,
    /// Remove it now.
    Remove,
}

/// Where a connection is in its life; transitions in the module docs.
pub(crate) enum Phase {
    /// Reading the request, writing our answer. Boxed: its buffers must not weigh on
    /// every open connection's slab entry.
    Handshaking(Box<Handshake>),
    /// Upgraded; messages flow both ways. Tungstenite's protocol state exists only while
    /// the connection reads: it is made for the first frame after a quiet spell and
    /// dropped once the connection has been quiet for a tick with no message half-read,
    /// so an idle connection owns no heap memory.
    Open(Option<Box<WebSocketContext>>),
    /// A close frame was sent or received; waiting for the close handshake to finish.
    Closing(Box<WebSocketContext>),
    /// Only while a phase is being moved out; never seen between calls.
    Moving,
}

// Connection flags.
/// Output queued since the last flush.
const NEEDS_FLUSH: u16 = 1;
/// Already in the shard's flush list this pass.
const LISTED: u16 = 1 << 1;
/// The last write would have blocked: the shard registers WRITABLE.
const WANTS_WRITABLE: u16 = 1 << 2;
/// Tungstenite holds fragments of an unfinished message.
const MID_MESSAGE: u16 = 1 << 3;
/// Active since the shard's last sweep (see `sweep_buffers`).
const RECENT: u16 = 1 << 4;
/// In the shard's list of connections to sweep.
const SWEEP_LISTED: u16 = 1 << 5;
/// The peer broke the protocol: read bytes are dropped unparsed.
const DISCARD_INPUT: u16 = 1 << 6;
/// We shut our write side after the final frame.
const WRITE_SHUT: u16 = 1 << 7;
/// What epoll holds: WRITABLE is registered (mirrors `WANTS_WRITABLE` after a sync).
const REGISTERED_WRITABLE: u16 = 1 << 8;
/// The phase changed since the shard last looked: the deadline needs a new timer entry.
const RESCHEDULE: u16 = 1 << 9;

/// A connection's slab entry: its socket, its protocol phase, what it owes its peer and
/// its deadlines. Kept small: at 19,000 idle connections every byte here is 19 KB of
/// resident memory. Generic over the transport so the core runs in memory in tests.
pub(crate) struct Connection<T = Wire> {
    /// The socket (and TLS session); it lives exactly as long as the connection.
    wire: T,
    pub phase: Phase,
    /// Everything the connection still has to send, in order: shared frames, its own
    /// replies, tungstenite's pongs and close frames, an HTTP answer before the upgrade.
    out: Outbound,
    /// Bytes of a frame whose end has not arrived; `None` almost always. Boxed: 8 bytes
    /// in every slab entry instead of a `Vec`'s 24, for a block that rarely exists.
    #[allow(clippy::box_collection)]
    stash: Option<Box<Vec<u8>>>,
    /// The connection's user; shared with the shard's user index.
    pub user: Option<Arc<str>>,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub generation: u32,
    /// When the current phase began: handshake and close deadlines run from here.
    since: Tick,
    /// Last time any byte arrived from the peer.
    last_heard: Tick,
    /// Last time we pinged it.
    last_ping: Tick,
    /// When its current timer entry is due; entries due at another tick are stale.
    pub timer_at: Tick,
    flags: u16,
    /// The node number its id carries: the instance's when it was accepted (the instance
    /// may move to another number later, see `hub::NodeNumber`).
    pub node: u16,
}

impl<T: Transport> Connection<T> {
    /// A freshly accepted socket; its first timer entry is due at `handshake_deadline`.
    /// `refused`: it cannot be served (a TLS session could not start): it is shut and
    /// read until EOF, never served in plaintext.
    /// `id`: the node number and generation its connection id carries.
    pub fn accepted(mut wire: T, refused: bool, id: (u16, u32), now: Tick, handshake_deadline: Tick) -> Self {
        let (node, generation) = id;
        let handshake = if refused {
            wire.shutdown_both();
            Handshake::lingering()
        } else {
            Handshake::new()
        };
        Connection {
            wire,
            phase: Phase::Handshaking(Box::new(handshake)),
            out: Outbound::default(),
            stash: None,
            user: None,
            generation,
            since: now,
            last_heard: now,
            last_ping: now,
            timer_at: handshake_deadline,
            flags: 0,
            node,
        }
    }

    pub fn wire_mut(&mut self) -> &mut T {
        &mut self.wire
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// True once the WebSocket upgrade has happened (the handler has seen `on_open`).
    pub fn was_opened(&self) -> bool {
        matches!(self.phase, Phase::Open(_) | Phase::Closing(_))
    }

    fn set(&mut self, flag: u16, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// After a phase change, the new deadline to put in the wheel (once).
    pub fn take_reschedule(&mut self, limits: &Limits) -> Option<Tick> {
        if !self.has(RESCHEDULE) {
            return None;
        }
        self.set(RESCHEDULE, false);
        let at = self.deadline(limits);
        (at != self.timer_at).then(|| {
            self.timer_at = at;
            at
        })
    }

    /// Whether WRITABLE should be registered, when that differs from what is; the shard
    /// changes the registration and confirms with [`Connection::interest_synced`].
    pub fn interest_change(&self) -> Option<bool> {
        let wants = self.has(WANTS_WRITABLE);
        (wants != self.has(REGISTERED_WRITABLE)).then_some(wants)
    }

    pub fn interest_synced(&mut self, writable: bool) {
        self.set(REGISTERED_WRITABLE, writable);
    }

    /// Handles a readiness event.
    pub fn ready(&mut self, readable: bool, writable: bool, cx: &mut ConnEnv<'_>) -> Outcome {
        let outcome = self.ready_inner(readable, writable, cx);
        if outcome != Outcome::Remove && self.tls_needs_flush() {
            self.set(NEEDS_FLUSH, true);
        }
        outcome
    }

    fn ready_inner(&mut self, readable: bool, writable: bool, cx: &mut ConnEnv<'_>) -> Outcome {
        if let Phase::Handshaking(_) = self.phase {
            if writable && self.has(WANTS_WRITABLE) {
                if let Outcome::Remove = self.handshake_write(cx) {
                    return Outcome::Remove;
                }
            }
            return if readable { self.handshake_ready(cx) } else { Outcome::Keep };
        }
        if writable && self.has(WANTS_WRITABLE) {
            self.set(NEEDS_FLUSH, true);
        }
        if readable {
            return self.read_frames(cx);
        }
        Outcome::Keep
    }

    /// The answer to a plain HTTP request (kept alive if the request allows), or a 503
    /// to a connection over the limit.
    pub fn respond(&mut self, response: &HttpResponse, cx: &mut ConnEnv<'_>) -> Outcome {
        self.handshake_respond(response, cx)
    }

    /// True while the connection is part-way through its first request.
    pub fn first_request_pending(&self) -> bool {
        self.handshake_first_request_pending()
    }

    /// Starts a close handshake with `code` (idle, shutdown, handler request, protocol
    /// error), after what is already queued. A connection still handshaking is simply
    /// dropped.
    pub fn close(&mut self, code: CloseCode, reason: &'static str, now: Tick, limits: &Limits) -> Outcome {
        match mem::replace(&mut self.phase, Phase::Moving) {
            Phase::Open(context) => {
                let mut context = context.unwrap_or_else(|| new_context(limits));
                let frame = CloseFrame { code, reason: reason.into() };
                // Queues the close frame: our queue takes every byte, so this cannot fail.
                let _ = context.close(&mut FrameIo { window: None, out: &mut self.out }, Some(frame));
                self.phase = Phase::Closing(context);
                self.since = now;
                self.flags |= NEEDS_FLUSH | RESCHEDULE | RECENT;
                Outcome::Keep
            }
            closing @ Phase::Closing(_) => {
                self.phase = closing;
                Outcome::Keep
            }
            Phase::Handshaking(_) | Phase::Moving => Outcome::Remove,
        }
    }

    /// Its wheel entry fired: acts on whatever came due (a ping, an idle close) and says
    /// when it is next due, or `None` when a deadline has passed and it must go.
    pub fn on_timer(&mut self, limits: &Limits, now: Tick) -> Option<Tick> {
        match self.phase {
            Phase::Handshaking(_) | Phase::Closing(_) if now >= self.deadline(limits) => return None,
            Phase::Open(_) => self.open_timer(limits, now),
            Phase::Moving => return None,
            _ => {}
        }
        let at = self.deadline(limits);
        self.timer_at = at;
        self.set(RESCHEDULE, false);
        Some(at)
    }

    /// When this connection next needs its timer: a pure function of its state.
    fn deadline(&self, limits: &Limits) -> Tick {
        match self.phase {
            Phase::Handshaking(_) => self.since + limits.handshake,
            Phase::Closing(_) | Phase::Moving => self.since + limits.close,
            Phase::Open(_) => {
                let next_ping = if self.last_ping > self.last_heard {
                    self.last_ping + limits.ping
                } else {
                    self.last_heard + limits.ping
                };
                next_ping.min(self.last_heard + limits.idle)
            }
        }
    }

    /// Pings a peer silent for a ping interval (again every interval while it stays
    /// silent); closes it once silent for the idle timeout. A peer that talks proves it is
    /// alive, so it is never pinged.
    fn open_timer(&mut self, limits: &Limits, now: Tick) {
        let silent = now - self.last_heard;
        if silent >= limits.idle {
            self.close(CloseCode::Away, "idle timeout", now, limits);
            return;
        }
        let pinged_since_heard = self.last_ping > self.last_heard;
        let ping_due = if pinged_since_heard { now - self.last_ping >= limits.ping } else { silent >= limits.ping };
        if ping_due {
            self.queue(SharedFrame::ping());
            self.last_ping = now;
        }
    }

    /// True exactly once after the connection becomes active again holding something a
    /// sweep can give back: the caller lists it for the sweeps. A paced delivery to a plain
    /// connection leaves nothing behind (the frame sat in the inline slot), so it is never
    /// listed, and the sweeps do not touch it.
    pub fn claim_sweep(&mut self) -> bool {
        let holds = matches!(self.phase, Phase::Open(Some(_)) | Phase::Closing(_))
            || self.out.holds_memory()
            || self.wire.is_tls();
        let claim = holds && self.has(RECENT) && !self.has(SWEEP_LISTED);
        if claim {
            self.flags |= SWEEP_LISTED;
        }
        claim
    }

    /// One sweep (the shard runs one per tick over its listed connections): a connection
    /// quiet since the last sweep gives back its buffers (tungstenite's state, the queue's
    /// overflow, what the TLS session can release), so an idle connection owns no heap
    /// memory, while a busy one keeps them and a steady stream of deliveries allocates
    /// nothing. Returns whether it stays listed.
    pub fn sweep_buffers(&mut self) -> bool {
        if self.has(RECENT) {
            self.set(RECENT, false);
            return true;
        }
        let quiet = !self.has(MID_MESSAGE | NEEDS_FLUSH | WANTS_WRITABLE) && self.out.is_empty();
        if quiet {
            if let Phase::Open(context) = &mut self.phase {
                *context = None;
            }
            self.out.release();
            self.wire.release_idle();
        }
        // Still holding what only a later sweep can give back.
        let listed = match &self.phase {
            Phase::Open(context) => context.is_some() || self.out.holds_memory(),
            Phase::Closing(_) => true,
            Phase::Handshaking(_) | Phase::Moving => false,
        };
        self.set(SWEEP_LISTED, listed);
        listed
    }
}

/// Tungstenite's state for a connection that starts (or resumes) reading frames.
fn new_context(limits: &Limits) -> Box<WebSocketContext> {
    Box::new(WebSocketContext::new(Role::Server, Some(limits.websocket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_fits_its_budget() {
        // The slab entry is the whole per-connection cost while idle (no heap).
        let entry = mem::size_of::<Connection>();
        eprintln!(
            "Connection: {entry} bytes; tungstenite's state while reading (boxed): {}; Outbound: {}",
            mem::size_of::<WebSocketContext>(),
            mem::size_of::<Outbound>()
        );
        assert!(entry <= 128, "Connection grew to {entry} bytes");
    }
}
