//! A connection's output: frames queued anywhere in a loop pass leave in one write at its
//! end, and WRITABLE is registered only while a write is blocked, so an idle connection
//! costs no epoll changes.

use std::io;

use mio::Interest;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::{
    ConnEnv, Connection, Outcome, Phase, DISCARD_INPUT, LISTED, NEEDS_FLUSH, RECENT, REGISTERED_WRITABLE, USED_BUFFERS,
    WANTS_WRITABLE, WRITE_SHUT,
};
use crate::clock::Tick;

/// Room granted past `--max-pending-bytes` so an evicted consumer can still be sent its
/// close frame after everything already queued.
const CLOSE_FRAME_ROOM: usize = 256;

/// Why a queued message did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The connection is not open (handshaking or closing); the message is dropped.
    NotOpen,
    /// The consumer's queue was full: it is now closing with 1008.
    Evicted,
}

impl Connection {
    /// True exactly once per flush cycle when output is waiting: the caller lists the
    /// connection for the end-of-pass flush.
    pub fn claim_flush(&mut self) -> bool {
        let claim = self.has(NEEDS_FLUSH) && !self.has(LISTED);
        if claim {
            self.set(LISTED, true);
        }
        claim
    }

    /// On a TLS wire, whether the end-of-pass flush has work that no write queued: records
    /// a read produced (handshake flights, tickets, alerts) waiting for the socket, or a
    /// reply that was waiting for the handshake to finish.
    pub(super) fn tls_needs_flush(&mut self) -> bool {
        match &mut self.phase {
            Phase::Handshaking(handshake) if handshake.wire.is_tls() => {
                handshake.wire.output_pending() || handshake.replying()
            }
            Phase::Open(ws) | Phase::Closing(ws) => ws.get_ref().output_pending(),
            _ => false,
        }
    }

    /// Queues `message` (written out at the end of the pass).
    pub fn send(&mut self, message: Message, now: Tick) -> Delivery {
        let Phase::Open(ws) = &mut self.phase else {
            return Delivery::NotOpen;
        };
        self.flags |= NEEDS_FLUSH | USED_BUFFERS | RECENT;
        match ws.write(message) {
            Err(WsError::WriteBufferFull(_)) => {
                // The consumer is `--max-pending-bytes` behind. 1008 (policy violation):
                // it broke the server's rule on unread output, and retrying at once would
                // not help, which 1013 would suggest. The close frame goes after what is
                // queued, so it needs a little room past the limit.
                ws.set_config(|config| config.max_write_buffer_size += CLOSE_FRAME_ROOM);
                self.close(CloseCode::Policy, "slow consumer", now);
                Delivery::Evicted
            }
            // Ok, or WouldBlock (queued; the flush waits for WRITABLE), or a broken socket,
            // which the flush finds and removes.
            _ => Delivery::Queued,
        }
    }

    /// Writes queued output. Called once per loop pass for listed connections.
    pub fn flush(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        self.flags &= !(NEEDS_FLUSH | LISTED);
        let result = match &mut self.phase {
            Phase::Handshaking(_) => return self.handshake_write(cx),
            Phase::Open(ws) | Phase::Closing(ws) => ws.flush(),
            Phase::Moving => return Outcome::Remove,
        };
        match result {
            Ok(()) => {
                self.set(WANTS_WRITABLE, false);
                let shut_write = self.has(DISCARD_INPUT) && !self.has(WRITE_SHUT);
                if let (Phase::Closing(ws), true) = (&mut self.phase, shut_write) {
                    // The peer broke the protocol: after our close frame, FIN.
                    ws.get_mut().shutdown_write();
                    self.flags |= WRITE_SHUT;
                }
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.set(WANTS_WRITABLE, true);
            }
            // ConnectionClosed: the close handshake is complete. Anything else: broken.
            Err(_) => return Outcome::Remove,
        }
        self.sync_interest(cx)
    }

    pub(super) fn sync_interest(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        // Registered READABLE at accept; WRITABLE is added only while a write is blocked.
        // `registered` mirrors what epoll holds, so the syscall happens only on a change.
        let wants = self.has(WANTS_WRITABLE);
        let registered_writable = self.has(REGISTERED_WRITABLE);
        if wants == registered_writable {
            return Outcome::Keep;
        }
        let interest = if wants { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        let token = cx.token;
        let Some(tcp) = self.tcp() else {
            return Outcome::Remove;
        };
        if cx.registry.reregister(tcp, token, interest).is_err() {
            return Outcome::Remove;
        }
        self.set(REGISTERED_WRITABLE, wants);
        Outcome::Keep
    }
}
