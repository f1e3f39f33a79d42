//! One connection: its phase, its deadlines, and the translation between readiness
//! events and messages. Sits inside a shard's slab; the shard calls [`Connection::ready`]
//! on readiness, [`Connection::send`] to queue output, [`Connection::flush`] once per loop
//! pass, and [`Connection::on_timer`] when its wheel entry fires.
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
//!   reading its next request and stays in this phase.
//! - `Open`: messages flow both ways; silent peers get pings, then an idle close.
//! - `Closing`: our close frame is queued or sent; we wait for the peer's reply or EOF
//!   until the close deadline. Incoming data is no longer delivered.

use std::mem;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Registry, Token};
use rustls::ServerConfig;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::auth::Gate;
use crate::auth::Grants;
use crate::clock::{ticks, Tick};
use crate::config::Config;
use crate::engine::wire::{TlsSession, Wire};
use crate::http::{HttpResponse, PlainRequest};
use crate::metrics::Counters;

mod frames;
mod handshake;
mod output;

use handshake::Handshake;
pub(crate) use output::Delivery;

/// Recv calls one readiness event may make before the connection yields to others.
const READ_BUDGET: usize = 16;

/// The limits and deadlines every connection on a shard shares.
pub(crate) struct Limits {
    pub websocket: WebSocketConfig,
    pub max_message_size: usize,
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
            // Frames queued in one loop pass go out in one write at its end; past this
            // much, tungstenite writes early rather than growing the buffer.
            .write_buffer_size((64 * 1024).min(config.max_pending_bytes / 2))
            .max_write_buffer_size(config.max_pending_bytes)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Limits {
            websocket,
            max_message_size: config.max_message_size,
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

/// Everything `ready`, `flush` and `on_timer` need from the shard.
pub(crate) struct ConnEnv<'a> {
    pub registry: &'a Registry,
    pub token: Token,
    pub limits: &'a Limits,
    pub now: Tick,
    pub incoming: &'a mut Vec<Incoming>,
    pub counters: &'a mut Counters,
    pub gate: &'a Gate,
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
    /// Upgraded; messages flow both ways.
    Open(WebSocket<Wire>),
    /// A close frame was sent or received; waiting for the handshake to finish.
    Closing(WebSocket<Wire>),
    /// Only while a phase is being moved out; never seen between calls.
    Moving,
}

// Connection flags.
/// Output queued since the last flush.
const NEEDS_FLUSH: u16 = 1;
/// Already in the shard's flush list this pass.
const LISTED: u16 = 1 << 1;
/// Registered for WRITABLE (the last write would have blocked).
const WANTS_WRITABLE: u16 = 1 << 2;
/// Tungstenite holds fragments of an unfinished message.
const MID_MESSAGE: u16 = 1 << 3;
/// Tungstenite may hold buffers since the last recycle.
const USED_BUFFERS: u16 = 1 << 4;
/// Used its buffers since the shard's last recycling sweep (see `sweep_buffers`).
const RECENT: u16 = 1 << 10;
/// In the shard's list of connections that may hold buffers.
const RECYCLE_LISTED: u16 = 1 << 9;
/// The peer broke the protocol: read bytes are dropped unparsed.
const DISCARD_INPUT: u16 = 1 << 5;
/// We shut our write side after the final frame.
const WRITE_SHUT: u16 = 1 << 6;
/// What epoll holds: WRITABLE is registered (mirrors `WANTS_WRITABLE` after a sync).
const REGISTERED_WRITABLE: u16 = 1 << 7;
/// The phase changed since the shard last looked: the deadline needs a new timer entry.
const RESCHEDULE: u16 = 1 << 8;

/// A connection's slab entry. Kept small: at 19,000 idle connections every byte here is
/// 19 KB of resident memory.
pub(crate) struct Connection {
    pub phase: Phase,
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
}

impl Connection {
    /// A freshly accepted socket; its first timer entry is due at `handshake_deadline`.
    /// With `tls` (a `wss://` server) it first goes through a TLS handshake.
    pub fn accepted(
        tcp: TcpStream,
        generation: u32,
        now: Tick,
        handshake_deadline: Tick,
        tls: Option<&Arc<ServerConfig>>,
    ) -> Self {
        let handshake = match tls.map(TlsSession::new).transpose() {
            Ok(session) => Handshake::new(Wire::new(tcp, session)),
            Err(e) => {
                // Not with a config `TlsSettings` accepted; but if it happens, the
                // connection is dropped, never served in plaintext.
                log::error!("cannot start a TLS session: {e}");
                Handshake::refused(Wire::new(tcp, None))
            }
        };
        Connection {
            phase: Phase::Handshaking(Box::new(handshake)),
            stash: None,
            user: None,
            generation,
            since: now,
            last_heard: now,
            last_ping: now,
            timer_at: handshake_deadline,
            flags: 0,
        }
    }

    pub fn tcp(&mut self) -> Option<&mut TcpStream> {
        self.wire().map(|wire| &mut wire.tcp)
    }

    fn wire(&mut self) -> Option<&mut Wire> {
        match &mut self.phase {
            Phase::Handshaking(handshake) => Some(&mut handshake.wire),
            Phase::Open(ws) | Phase::Closing(ws) => Some(ws.get_mut()),
            Phase::Moving => None,
        }
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

    /// Handles a readiness event.
    pub fn ready(&mut self, readable: bool, writable: bool, cx: &mut ConnEnv<'_>) -> Outcome {
        let outcome = self.ready_plain(readable, writable, cx);
        if outcome != Outcome::Remove && self.tls_needs_flush() {
            self.set(NEEDS_FLUSH, true);
        }
        outcome
    }

    fn ready_plain(&mut self, readable: bool, writable: bool, cx: &mut ConnEnv<'_>) -> Outcome {
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
    /// error). A connection still handshaking is simply dropped.
    pub fn close(&mut self, code: CloseCode, reason: &'static str, now: Tick) -> Outcome {
        match mem::replace(&mut self.phase, Phase::Moving) {
            Phase::Open(mut ws) => {
                let frame = CloseFrame { code, reason: reason.into() };
                // Queues the frame; whether it went out now is the flush's business.
                let _ = ws.close(Some(frame));
                self.phase = Phase::Closing(ws);
                self.since = now;
                self.flags |= NEEDS_FLUSH | RESCHEDULE;
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
            self.close(CloseCode::Away, "idle timeout", now);
            return;
        }
        let pinged_since_heard = self.last_ping > self.last_heard;
        let ping_due = if pinged_since_heard { now - self.last_ping >= limits.ping } else { silent >= limits.ping };
        if ping_due {
            if let Phase::Open(ws) = &mut self.phase {
                // A failed write shows up at the flush; WouldBlock means queued.
                let _ = ws.write(Message::Ping(Default::default()));
                self.last_ping = now;
                self.flags |= NEEDS_FLUSH | USED_BUFFERS | RECENT;
            }
        }
    }

    /// True exactly once after the connection starts using buffers again: the caller
    /// lists it for the recycling sweeps.
    pub fn claim_recycle(&mut self) -> bool {
        let claim = self.has(USED_BUFFERS) && !self.has(RECYCLE_LISTED);
        if claim {
            self.flags |= RECYCLE_LISTED;
        }
        claim
    }

    /// One recycling sweep (the shard runs one per tick over its listed connections):
    /// a connection quiet since the last sweep drops tungstenite's buffers, so an idle
    /// connection owns no heap memory, while a busy one keeps them and a steady stream of
    /// deliveries allocates nothing. Returns whether it stays listed.
    pub fn sweep_buffers(&mut self, limits: &Limits) -> bool {
        if self.has(RECENT) {
            self.set(RECENT, false);
            return true;
        }
        self.recycle(limits);
        let listed = self.has(USED_BUFFERS) && self.was_opened();
        self.set(RECYCLE_LISTED, listed);
        listed
    }

    /// Rebuilds the `WebSocket` when nothing is in flight: the only way to make tungstenite
    /// free its buffers.
    fn recycle(&mut self, limits: &Limits) {
        if !self.has(USED_BUFFERS) || self.has(MID_MESSAGE | NEEDS_FLUSH | WANTS_WRITABLE) {
            return;
        }
        if let Phase::Open(ws) = &self.phase {
            if !ws.can_write() {
                return;
            }
            let Phase::Open(ws) = mem::replace(&mut self.phase, Phase::Moving) else { unreachable!() };
            let mut wire = ws.into_inner();
            wire.release_idle();
            self.phase = Phase::Open(WebSocket::from_raw_socket(wire, Role::Server, Some(limits.websocket)));
            self.set(USED_BUFFERS, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_fits_its_budget() {
        // The slab entry is the whole per-connection cost while idle (no heap); the
        // 512-byte target also has to cover the slab's slack and the timer entry.
        let size = mem::size_of::<slab::Slab<Connection>>();
        let entry = mem::size_of::<Connection>();
        eprintln!(
            "Connection: {entry} bytes; WebSocket<Wire>: {}; boxed TLS session (wss only): {}",
            mem::size_of::<WebSocket<Wire>>(),
            mem::size_of::<TlsSession>()
        );
        assert!(entry <= 384, "Connection grew to {entry} bytes (slab header {size})");
    }
}
