//! The handshaking phase of a connection: reading a request (head, and body for plain
//! HTTP), writing our answer (a 101, an HTTP response, or a refusal), then upgrading,
//! reading the next request on a kept-alive connection, or lingering until EOF.

use std::io::{self, Write};
use std::mem;
use std::net::Shutdown;
use std::time::Instant;

use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use super::{Admission, ConnEnv, Connection, Incoming, Outcome, Phase, RESCHEDULE, WANTS_WRITABLE};
use crate::auth::Admitted;
use crate::engine::wire::Wire;
use crate::http::{self, HttpResponse, Verdict, MAX_REQUEST_BYTES};

/// Requests one kept-alive connection may make; the answer to the last says `close`.
const MAX_REQUESTS_PER_CONNECTION: u16 = 1000;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A connection's state before the upgrade; boxed inside `Phase::Handshaking`.
pub(crate) struct Handshake {
    pub(super) wire: Wire,
    /// The request received so far: at most one head and body, plus the start of a
    /// pipelined next request.
    pub(super) request: Vec<u8>,
    /// Our answer; `reply[written..]` is still to go out.
    pub(super) reply: Vec<u8>,
    pub(super) written: usize,
    pub(super) stage: HandshakeStage,
    /// The request being answered lets the connection stay open after the answer.
    pub(super) keep_alive: bool,
    /// The request being answered is a `HEAD`: the answer goes without its body.
    pub(super) head_only: bool,
    /// `100 Continue` was sent for the request being read.
    pub(super) continued: bool,
    /// Plain requests answered on this connection so far.
    pub(super) served: u16,
    /// Who the gate let in, between its decision and the upgrade.
    pub(super) admitted: Option<Admitted>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandshakeStage {
    Reading,
    /// The HTTP endpoints are deciding (the shard calls `respond`).
    AwaitingHttpResponse,
    ReplyingThenUpgrade,
    /// Kept alive: after the reply, read the next request.
    ReplyingThenNext,
    ReplyingThenClose,
    /// Reply sent and our side shut: discard input until EOF so the reply is not lost to a
    /// reset.
    Lingering,
}

impl Handshake {
    pub(super) fn new(wire: Wire) -> Self {
        Handshake {
            wire,
            request: Vec::new(),
            reply: Vec::new(),
            written: 0,
            stage: HandshakeStage::Reading,
            keep_alive: false,
            head_only: false,
            continued: false,
            served: 0,
            admitted: None,
        }
    }

    /// A connection that cannot be served: both directions shut, read until EOF.
    pub(super) fn refused(wire: Wire) -> Self {
        let _ = wire.tcp.shutdown(Shutdown::Both);
        Handshake { stage: HandshakeStage::Lingering, ..Handshake::new(wire) }
    }

    /// Between an answer and what follows it (the upgrade, the next request, the close).
    pub(super) fn replying(&self) -> bool {
        matches!(
            self.stage,
            HandshakeStage::ReplyingThenUpgrade | HandshakeStage::ReplyingThenNext | HandshakeStage::ReplyingThenClose
        )
    }
}

impl Connection {
    pub(super) fn handshake_ready(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        loop {
            let Phase::Handshaking(handshake) = &mut self.phase else {
                return Outcome::Keep;
            };
            let limit = match handshake.stage {
                // Bytes waiting now are WebSocket frames or the next request: leave them in
                // the socket until the upgrade (or the reply) is done.
                HandshakeStage::ReplyingThenUpgrade
                | HandshakeStage::AwaitingHttpResponse
                | HandshakeStage::ReplyingThenNext => return Outcome::Keep,
                HandshakeStage::Reading => MAX_REQUEST_BYTES + cx.limits.max_http_body + 1 - handshake.request.len(),
                // Answered for good; later bytes are read only to notice EOF.
                HandshakeStage::ReplyingThenClose | HandshakeStage::Lingering => usize::MAX,
            };
            let mut chunk = [0u8; 4096];
            let limit = limit.min(chunk.len());
            match handshake.wire.recv(&mut chunk[..limit]) {
                Ok(0) => return Outcome::Remove,
                Ok(n) if handshake.stage == HandshakeStage::Reading => {
                    handshake.request.extend_from_slice(&chunk[..n]);
                    if let Some(outcome) = self.handshake_examine(cx) {
                        return outcome;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        // Not TLS, or a TLS alert, or a handshake we cannot agree on.
                        log::debug!("TLS failed on {:?}: {e}", cx.token);
                        cx.counters.handshake_failures += 1;
                    }
                    return Outcome::Remove;
                }
            }
        }
    }

    /// Looks at the request bytes so far; `None` means read more.
    fn handshake_examine(&mut self, cx: &mut ConnEnv<'_>) -> Option<Outcome> {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Some(Outcome::Keep);
        };
        match http::examine(&handshake.request, cx.limits.max_http_body) {
            Verdict::Incomplete => None,
            Verdict::BodyPending { expect_continue } => {
                if expect_continue && !handshake.continued {
                    handshake.continued = true;
                    // 25 bytes to a socket whose buffer holds nothing of ours yet: a short
                    // write does not happen, and if it did the stream would be corrupt.
                    if !matches!(handshake.wire.write(CONTINUE), Ok(n) if n == CONTINUE.len()) {
                        return Some(Outcome::Remove);
                    }
                }
                None
            }
            Verdict::Upgrade(upgrade) => match cx.gate.admit(&upgrade, Instant::now()) {
                Ok(admitted) => {
                    let rest = handshake.request.split_off(upgrade.head_len);
                    self.stash = (!rest.is_empty()).then(|| Box::new(rest));
                    handshake.request = Vec::new();
                    handshake.reply = upgrade.response();
                    handshake.stage = HandshakeStage::ReplyingThenUpgrade;
                    self.user = admitted.user.as_deref().map(Into::into);
                    handshake.admitted = Some(admitted);
                    Some(self.handshake_write(cx))
                }
                Err(refusal) => {
                    log::debug!(
                        "upgrade refused: {} {}",
                        refusal.status,
                        String::from_utf8_lossy(&refusal.body).trim()
                    );
                    if refusal.status == 401 {
                        cx.counters.auth_failures += 1;
                    }
                    Some(self.handshake_refuse(&refusal, true, cx))
                }
            },
            Verdict::Plain { request, len } => {
                handshake.request.drain(..len);
                handshake.keep_alive = request.keep_alive && handshake.served + 1 < MAX_REQUESTS_PER_CONNECTION;
                handshake.head_only = request.method == "HEAD";
                handshake.continued = false;
                handshake.stage = HandshakeStage::AwaitingHttpResponse;
                cx.counters.http_requests += 1;
                cx.incoming.push(Incoming::Http(request));
                Some(Outcome::Keep)
            }
            Verdict::Refuse { response, upgrade } => Some(self.handshake_refuse(&response, upgrade, cx)),
        }
    }

    /// Answers `response` and closes; `upgrade`: a failed handshake, for the counters.
    fn handshake_refuse(&mut self, response: &HttpResponse, upgrade: bool, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Outcome::Keep;
        };
        if upgrade {
            cx.counters.handshake_failures += 1;
        }
        handshake.request = Vec::new();
        handshake.keep_alive = false;
        handshake.reply = response.to_bytes(false, false);
        handshake.written = 0;
        handshake.stage = HandshakeStage::ReplyingThenClose;
        self.handshake_write(cx)
    }

    /// The answer to a plain HTTP request (or a 503 to a connection over the limit).
    pub(super) fn handshake_respond(&mut self, response: &HttpResponse, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Outcome::Keep;
        };
        handshake.reply = response.to_bytes(handshake.keep_alive, handshake.head_only);
        handshake.written = 0;
        handshake.stage =
            if handshake.keep_alive { HandshakeStage::ReplyingThenNext } else { HandshakeStage::ReplyingThenClose };
        self.handshake_write(cx)
    }

    pub(super) fn handshake_write(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Outcome::Keep;
        };
        while handshake.written < handshake.reply.len() {
            match handshake.wire.write(&handshake.reply[handshake.written..]) {
                Ok(0) => return Outcome::Remove,
                Ok(n) => handshake.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.set(WANTS_WRITABLE, true);
                    return self.sync_interest(cx);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Remove,
            }
        }
        // On a TLS wire the reply is out once rustls has sent its last record, which it
        // cannot before the handshake is done (an early 503): the next read resumes here.
        match handshake.wire.flush() {
            Ok(()) if handshake.wire.handshaking() => {
                self.set(WANTS_WRITABLE, false);
                return self.sync_interest(cx);
            }
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.set(WANTS_WRITABLE, true);
                return self.sync_interest(cx);
            }
            Err(_) => return Outcome::Remove,
        }
        self.flags &= !WANTS_WRITABLE;
        match handshake.stage {
            HandshakeStage::ReplyingThenUpgrade => self.upgrade(cx),
            HandshakeStage::ReplyingThenNext => {
                handshake.stage = HandshakeStage::Reading;
                handshake.served += 1;
                handshake.reply = Vec::new();
                handshake.written = 0;
                // The handshake deadline doubles as the keep-alive idle timeout, and the
                // next request must arrive in full within it.
                self.since = cx.now;
                self.flags |= RESCHEDULE;
                if let Outcome::Remove = self.sync_interest(cx) {
                    return Outcome::Remove;
                }
                // A pipelined request may be buffered already, or waiting in the socket
                // with no new edge to announce it.
                if let Some(outcome) = self.handshake_examine(cx) {
                    return outcome;
                }
                self.handshake_ready(cx)
            }
            HandshakeStage::ReplyingThenClose => {
                handshake.wire.shutdown_write();
                handshake.stage = HandshakeStage::Lingering;
                handshake.reply = Vec::new();
                if let Outcome::Remove = self.sync_interest(cx) {
                    return Outcome::Remove;
                }
                // Drain what the peer already sent, so EOF is seen even without a new edge.
                self.handshake_ready(cx)
            }
            _ => self.sync_interest(cx),
        }
    }

    /// True while the connection is part-way through its first request: if its deadline
    /// passes now, that is a failed handshake (a socket that never sent a byte is not).
    pub(super) fn handshake_first_request_pending(&self) -> bool {
        matches!(&self.phase, Phase::Handshaking(handshake) if handshake.served == 0 && handshake.stage == HandshakeStage::Reading && !handshake.request.is_empty())
    }

    fn upgrade(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(mut handshake) = mem::replace(&mut self.phase, Phase::Moving) else { unreachable!() };
        let admitted = handshake.admitted.take();
        let websocket = WebSocket::from_raw_socket(handshake.wire, Role::Server, Some(cx.limits.websocket));
        self.phase = Phase::Open(websocket);
        self.since = cx.now;
        self.last_heard = cx.now;
        self.last_ping = cx.now;
        self.flags |= RESCHEDULE;
        cx.counters.handshakes += 1;
        cx.incoming.push(Incoming::Opened(admitted.map(|a| Admission { grants: a.grants, expires_at: a.expires_at })));
        if let Outcome::Remove = self.sync_interest(cx) {
            return Outcome::Remove;
        }
        // Frames may have arrived with the request; the socket may hold more that no new
        // edge will announce. Read now.
        self.read_frames(cx)
    }
}
