//! A connection's output: frames queued anywhere in a loop pass leave in one vectored
//! write at its end, and WRITABLE is wanted only while a write is blocked, so an idle
//! connection costs no epoll changes.

use std::io;

use tungstenite::protocol::frame::coding::CloseCode;

use super::{
    ConnEnv, Connection, Limits, Outcome, Phase, DISCARD_INPUT, LISTED, NEEDS_FLUSH, RECENT, WANTS_WRITABLE, WRITE_SHUT,
};
use crate::clock::Tick;
use crate::engine::wire::Transport;
use crate::frame::SharedFrame;

/// Why a queued message did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The connection is not open (handshaking or closing); the message is dropped.
    NotOpen,
    /// The consumer owed more than `--max-pending-bytes`: it is now closing with 1008.
    Evicted,
}

/// Where writing the queue left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drained {
    /// Every queued byte reached the socket.
    Done,
    /// The socket is full: wait for WRITABLE.
    Blocked,
    /// Queued in the TLS session until its handshake completes: the next read resumes.
    AwaitingTls,
    /// The socket failed.
    Broken,
}

impl<T: Transport> Connection<T> {
    /// True exactly once per flush cycle when output is waiting: the caller lists the
    /// connection for the end-of-pass flush.
    pub fn claim_flush(&mut self) -> bool {
        let claim = self.has(NEEDS_FLUSH) && !self.has(LISTED);
        if claim {
            self.set(LISTED, true);
        }
        claim
    }

    /// On a TLS wire, whether the end-of-pass flush has work that no queued frame asked
    /// for: records a read produced (handshake flights, tickets, alerts) waiting for the
    /// socket, or a reply that was waiting for the handshake to finish.
    pub(super) fn tls_needs_flush(&self) -> bool {
        let replying = matches!(&self.phase, Phase::Handshaking(handshake) if handshake.replying());
        self.wire.is_tls() && (self.wire.output_pending() || !self.out.is_empty() || replying)
    }

    /// Queues `frame` for an open connection (written out at the end of the pass). A
    /// consumer that would then owe more than `--max-pending-bytes` is evicted instead.
    #[inline]
    pub fn send(&mut self, frame: &SharedFrame, now: Tick, limits: &Limits) -> Delivery {
        if !self.is_open() {
            return Delivery::NotOpen;
        }
        if self.out.owed() + frame.len() > limits.max_pending_bytes {
            // 1008 (policy violation): it broke the server's rule on unread output, and
            // retrying at once would not help, which 1013 would suggest. The close frame
            // goes after what is queued.
            self.close(CloseCode::Policy, "slow consumer", now, limits);
            return Delivery::Evicted;
        }
        self.queue(frame.clone());
        Delivery::Queued
    }

    /// Appends to the queue, whatever the phase; the flush writes it.
    pub(super) fn queue(&mut self, frame: SharedFrame) {
        self.out.push(frame);
        self.flags |= NEEDS_FLUSH | RECENT;
    }

    /// Writes queued output. Called once per loop pass for listed connections.
    pub fn flush(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        self.flags &= !(NEEDS_FLUSH | LISTED);
        let closing = match &self.phase {
            Phase::Handshaking(_) => return self.handshake_write(cx),
            Phase::Open(_) => false,
            Phase::Closing(_) => true,
            Phase::Moving => return Outcome::Remove,
        };
        match self.write_out() {
            Drained::Done => {}
            Drained::Blocked | Drained::AwaitingTls => return Outcome::Keep,
            Drained::Broken => return Outcome::Remove,
        }
        if !closing {
            return Outcome::Keep;
        }
        if self.has(DISCARD_INPUT) && !self.has(WRITE_SHUT) {
            // The peer broke the protocol: after our close frame, FIN.
            self.wire.shutdown_write();
            self.flags |= WRITE_SHUT;
        }
        match &self.phase {
            // Both close frames have crossed and ours is out: the server closes the TCP
            // connection first (RFC 6455 7.1.1), so the TIME_WAIT is ours.
            Phase::Closing(context) if !context.can_read() => Outcome::Remove,
            _ => Outcome::Keep,
        }
    }

    /// Writes the queue to the transport until it is empty or the socket would block.
    pub(super) fn write_out(&mut self) -> Drained {
        let Connection { out, wire, .. } = self;
        let drained = match out.write_to(|slices| wire.send(slices)) {
            // A plain socket holds nothing back: written is sent.
            Ok(true) if !wire.is_tls() => Drained::Done,
            Ok(true) => match wire.flush() {
                Ok(()) if wire.handshaking() => Drained::AwaitingTls,
                Ok(()) => Drained::Done,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Drained::Blocked,
                Err(_) => Drained::Broken,
            },
            Ok(false) => Drained::Blocked,
            Err(_) => Drained::Broken,
        };
        self.set(WANTS_WRITABLE, drained == Drained::Blocked);
        drained
    }
}
