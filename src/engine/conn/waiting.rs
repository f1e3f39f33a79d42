//! A handshaking connection waiting for an answer that comes later, from the cluster: an
//! upgrade whose ticket is being taken from Redis (`HandshakeStage::Admitting`), or an
//! HTTP request whose response waits for Redis (`POST /api/ticket` in a cluster, in
//! `HandshakeStage::AwaitingHttpResponse`). It reads nothing meanwhile (what the peer
//! sends next stays in the socket), and its handshake deadline, restarted when it began
//! waiting, bounds the wait: past it the connection is dropped like any handshake that
//! took too long. The shard resumes it with the answer from its inbox.

use super::handshake::HandshakeStage;
use super::{ConnEnv, Connection, Outcome, Phase, RESCHEDULE};
use crate::auth::Admitted;
use crate::clock::Tick;
use crate::engine::wire::Transport;
use crate::http::HttpResponse;

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// The verdict on its upgrade.
    Admission,
    /// The response to its HTTP request.
    Response,
}

/// The answer that ends a wait.
#[derive(Debug)]
pub(crate) enum Resumption {
    /// Upgrade as this identity, or answer this refusal (401, 503) and close.
    Admission(Result<Admitted, HttpResponse>),
    /// Answer the HTTP request with this.
    Response(HttpResponse),
}

impl<T: Transport> Connection<T> {
    /// What the connection waits for, if anything.
    pub fn waiting(&self) -> Option<Waiting> {
        match &self.phase {
            Phase::Handshaking(handshake) => match handshake.stage {
                HandshakeStage::Admitting => Some(Waiting::Admission),
                HandshakeStage::AwaitingHttpResponse => Some(Waiting::Response),
                _ => None,
            },
            _ => None,
        }
    }

    /// The response to the HTTP request just read comes later, from the cluster: the
    /// connection waits at most a handshake timeout from `now` for it.
    pub fn await_response(&mut self, now: Tick) {
        if self.waiting() == Some(Waiting::Response) {
            self.since = now;
            self.flags |= RESCHEDULE;
        }
    }

    /// Ends the wait with `answer`; an answer the connection is not waiting for (it has
    /// moved on, or it is another kind) changes nothing.
    pub fn resume(&mut self, answer: Resumption, cx: &mut ConnEnv<'_>) -> Outcome {
        match (self.waiting(), answer) {
            (Some(Waiting::Admission), Resumption::Admission(verdict)) => {
                let Phase::Handshaking(handshake) = &mut self.phase else { return Outcome::Keep };
                let accept = std::mem::take(&mut handshake.accept);
                self.handshake_admit(verdict, accept, cx)
            }
            (Some(Waiting::Response), Resumption::Response(response)) => self.handshake_respond(&response, cx),
            _ => Outcome::Keep,
        }
    }
}
