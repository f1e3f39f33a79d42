//! The handshaking phase of a connection: reading a request (head, and body for plain
//! HTTP), writing our answer (a 101, an HTTP response, or a refusal), then upgrading,
//! reading the next request on a kept-alive connection, or lingering until EOF. Between
//! request and answer the connection may wait, reading nothing, for the shard (an HTTP
//! answer) or for the cluster through the shard (a ticket taken from Redis: see
//! `waiting`).

use std::io;

use super::output::Drained;
use super::{Admission, ConnEnv, Connection, Incoming, Outcome, Phase, RESCHEDULE};
use crate::auth::{Admitted, Decision};
use crate::engine::wire::Transport;
use crate::frame::SharedFrame;
use crate::http::{self, HttpResponse, Verdict, MAX_REQUEST_BYTES};

/// Requests one kept-alive connection may make; the answer to the last says `close`.
const MAX_REQUESTS_PER_CONNECTION: u16 = 1000;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A connection's state before the upgrade; boxed inside `Phase::Handshaking`. Our
/// answer goes through the connection's outbound queue like every later frame.
pub(crate) struct Handshake {
    /// The request received so far: at most one head and body, plus the start of a
    /// pipelined next request.
    pub(super) request: Vec<u8>,
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
    /// The 101 to send if the ticket being taken from the cluster admits the connection;
    /// empty outside `Admitting`.
    pub(super) accept: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandshakeStage {
    Reading,
    /// The HTTP endpoints are deciding (the shard calls `respond`), or, in a cluster,
    /// the answer waits for Redis (the shard calls `resume`).
    AwaitingHttpResponse,
    /// An upgrade whose ticket is being taken from the cluster's Redis: nothing more is
    /// read until the verdict comes (the shard calls `resume`) or the deadline passes.
    Admitting,
    ReplyingThenUpgrade,
    /// Kept alive: after the reply, read the next request.
    ReplyingThenNext,
    ReplyingThenClose,
    /// Reply sent and our side shut: discard input until EOF so the reply is not lost to a
    /// reset.
    Lingering,
}

impl Handshake {
    pub(super) fn new() -> Self {
        Handshake {
            request: Vec::new(),
            stage: HandshakeStage::Reading,
            keep_alive: false,
            head_only: false,
            continued: false,
            served: 0,
            admitted: None,
            accept: Vec::new(),
        }
    }

    /// A connection that cannot be served (its socket already shut): read until EOF.
    pub(super) fn lingering() -> Self {
        Handshake { stage: HandshakeStage::Lingering, ..Handshake::new() }
    }

    /// Between an answer and what follows it (the upgrade, the next request, the close).
    pub(super) fn replying(&self) -> bool {
        matches!(
            self.stage,
            HandshakeStage::ReplyingThenUpgrade | HandshakeStage::ReplyingThenNext | HandshakeStage::ReplyingThenClose
        )
    }
}

impl<T: Transport> Connection<T> {
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
                | HandshakeStage::Admitting
                | HandshakeStage::ReplyingThenNext => return Outcome::Keep,
                HandshakeStage::Reading => MAX_REQUEST_BYTES + cx.limits.max_http_body + 1 - handshake.request.len(),
                // Answered for good; later bytes are read only to notice EOF.
                HandshakeStage::ReplyingThenClose | HandshakeStage::Lingering => usize::MAX,
            };
            let mut chunk = [0u8; 4096];
            let limit = limit.min(chunk.len());
            match self.wire.recv(&mut chunk[..limit]) {
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
                        log::debug!("TLS failed on connection {}: {e}", cx.key);
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
                    self.queue(SharedFrame::raw(CONTINUE.to_vec()));
                    if self.write_out() == Drained::Broken {
                        return Some(Outcome::Remove);
                    }
                }
                None
            }
            Verdict::Upgrade(upgrade) => {
                let decision = cx.gate.admit(&upgrade, cx.wall);
                if let Decision::Admit(_) | Decision::TakeTicket(_) = decision {
                    // Frames sent right behind the request wait for the upgrade.
                    let rest = handshake.request.split_off(upgrade.head_len);
                    self.stash = (!rest.is_empty()).then(|| Box::new(rest));
                }
                match decision {
                    Decision::Admit(admitted) => Some(self.handshake_admit(Ok(admitted), upgrade.response(), cx)),
                    Decision::Refuse(refusal) => Some(self.handshake_admit(Err(refusal), Vec::new(), cx)),
                    Decision::TakeTicket(ticket) => {
                        handshake.request = Vec::new();
                        handshake.accept = upgrade.response();
                        handshake.stage = HandshakeStage::Admitting;
                        // The handshake timeout again, from now: it bounds the wait.
                        self.since = cx.now;
                        self.flags |= RESCHEDULE;
                        cx.incoming.push(Incoming::TakeTicket(ticket));
                        Some(Outcome::Keep)
                    }
                }
            }
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

    /// Acts on the gate's verdict on an upgrade: the 101 (`accept`), or the refusal.
    pub(super) fn handshake_admit(
        &mut self,
        verdict: Result<Admitted, HttpResponse>,
        accept: Vec<u8>,
        cx: &mut ConnEnv<'_>,
    ) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Outcome::Keep;
        };
        match verdict {
            Ok(admitted) => {
                handshake.request = Vec::new();
                handshake.stage = HandshakeStage::ReplyingThenUpgrade;
                self.user = admitted.user.as_deref().map(Into::into);
                handshake.admitted = Some(admitted);
                self.queue(SharedFrame::raw(accept));
                self.handshake_write(cx)
            }
            Err(refusal) => {
                log::debug!("upgrade refused: {} {}", refusal.status, String::from_utf8_lossy(&refusal.body).trim());
                if refusal.status == 401 {
                    cx.counters.auth_failures += 1;
                }
                self.stash = None;
                self.handshake_refuse(&refusal, true, cx)
            }
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
        handshake.stage = HandshakeStage::ReplyingThenClose;
        self.queue(SharedFrame::raw(response.to_bytes(false, false)));
        self.handshake_write(cx)
    }

    /// The answer to a plain HTTP request (or a 503 to a connection over the limit).
    pub(super) fn handshake_respond(&mut self, response: &HttpResponse, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return Outcome::Keep;
        };
        let reply = response.to_bytes(handshake.keep_alive, handshake.head_only);
        handshake.stage =
            if handshake.keep_alive { HandshakeStage::ReplyingThenNext } else { HandshakeStage::ReplyingThenClose };
        self.queue(SharedFrame::raw(reply));
        self.handshake_write(cx)
    }

    pub(super) fn handshake_write(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        if !matches!(self.phase, Phase::Handshaking(_)) {
            return Outcome::Keep;
        }
        match self.write_out() {
            Drained::Done => {}
            // On a TLS wire the reply is out once the session has sent its last record,
            // which it cannot before the handshake is done (an early 503): the next read
            // resumes here.
            Drained::Blocked | Drained::AwaitingTls => return Outcome::Keep,
            Drained::Broken => return Outcome::Remove,
        }
        let Phase::Handshaking(handshake) = &mut self.phase else { unreachable!() };
        match handshake.stage {
            HandshakeStage::ReplyingThenUpgrade => self.upgrade(cx),
            HandshakeStage::ReplyingThenNext => {
                handshake.stage = HandshakeStage::Reading;
                handshake.served += 1;
                // The handshake deadline doubles as the keep-alive idle timeout, and the
                // next request must arrive in full within it.
                self.since = cx.now;
                self.flags |= RESCHEDULE;
                // A pipelined request may be buffered already, or waiting in the socket
                // with no new edge to announce it.
                if let Some(outcome) = self.handshake_examine(cx) {
                    return outcome;
                }
                self.handshake_ready(cx)
            }
            HandshakeStage::ReplyingThenClose => {
                handshake.stage = HandshakeStage::Lingering;
                self.wire.shutdown_write();
                // Drain what the peer already sent, so EOF is seen even without a new edge.
                self.handshake_ready(cx)
            }
            _ => Outcome::Keep,
        }
    }

    /// True while the connection is part-way through its first request: if its deadline
    /// passes now, that is a failed handshake (a socket that never sent a byte is not).
    pub(super) fn handshake_first_request_pending(&self) -> bool {
        let Phase::Handshaking(handshake) = &self.phase else { return false };
        handshake.served == 0
            && match handshake.stage {
                HandshakeStage::Reading => !handshake.request.is_empty(),
                // Its verdict never came in time.
                HandshakeStage::Admitting => true,
                _ => false,
            }
    }

    fn upgrade(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        let Phase::Handshaking(handshake) = &mut self.phase else { unreachable!() };
        let admitted = handshake.admitted.take();
        // Tungstenite's state is made when the first frame arrives.
        self.phase = Phase::Open(None);
        self.since = cx.now;
        self.last_heard = cx.now;
        self.last_ping = cx.now;
        self.flags |= RESCHEDULE;
        cx.counters.handshakes += 1;
        cx.incoming.push(Incoming::Opened(admitted.map(|a| Admission { grants: a.grants, expires_at: a.expires_at })));
        // Frames may have arrived with the request; the socket may hold more that no new
        // edge will announce. Read now.
        self.read_frames(cx)
    }
}
