//! The open and closing phases' read path: one burst of `recv()`s into the shard's
//! inbound buffer, each whole frame handed to tungstenite, messages collected for the
//! handler, protocol errors turned into close codes.

use std::io;
use std::mem;

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::{
    ConnEnv, Connection, Incoming, Outcome, Phase, DISCARD_INPUT, MID_MESSAGE, NEEDS_FLUSH, READ_BUDGET, RECENT,
    RESCHEDULE, USED_BUFFERS,
};
use crate::engine::wire::{inbound, FrameError};

impl Connection {
    pub(super) fn read_frames(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        inbound::load(&mut self.stash.take().map_or_else(Vec::new, |stash| *stash));
        for _ in 0..READ_BUDGET {
            if let Some(outcome) = self.feed_frames(cx) {
                return outcome;
            }
            let Some(wire) = self.wire() else { break };
            match inbound::recv(wire) {
                Ok(0) => {
                    inbound::discard();
                    return Outcome::Remove;
                }
                Ok(_) => self.last_heard = cx.now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stash_rest();
                    return Outcome::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    inbound::discard();
                    return Outcome::Remove;
                }
            }
        }
        // Budget spent: handle what the last recv completed, then yield to others.
        self.feed_frames(cx).unwrap_or_else(|| {
            self.stash_rest();
            Outcome::ReadAgain
        })
    }

    /// Ends the read burst, keeping an unfinished frame's bytes for the next one.
    fn stash_rest(&mut self) {
        let mut rest = Vec::new();
        inbound::stash(&mut rest);
        self.stash = (!rest.is_empty()).then(|| Box::new(rest));
    }

    /// Hands every complete frame in the inbound buffer to tungstenite. `Some` ends the
    /// read burst with that outcome (the inbound buffer already stashed or discarded).
    fn feed_frames(&mut self, cx: &mut ConnEnv<'_>) -> Option<Outcome> {
        if self.has(DISCARD_INPUT) {
            inbound::discard();
            return None;
        }
        loop {
            let info = match inbound::next_frame(cx.limits.max_message_size) {
                Ok(Some(info)) => info,
                Ok(None) => return None,
                Err(FrameError::TooBig) => return Some(self.fail(CloseCode::Size, "message too big", cx)),
                Err(FrameError::Malformed) => return Some(self.fail(CloseCode::Protocol, "protocol error", cx)),
            };
            if info.close && !cx.incoming.is_empty() {
                // Once tungstenite sees the close it refuses to send, so the handler's
                // answers to the messages before it would be lost. Let the handler run
                // first; the close frame waits in the stash for the next pass.
                inbound::defer_frame();
                self.stash_rest();
                return Some(Outcome::ReadAgain);
            }
            if info.data {
                self.set(MID_MESSAGE, !info.fin);
            }
            self.flags |= USED_BUFFERS | RECENT;
            let (Phase::Open(ws) | Phase::Closing(ws)) = &mut self.phase else {
                inbound::discard();
                return Some(Outcome::Remove);
            };
            let result = ws.read();
            debug_assert!(inbound::frame_consumed());
            match result {
                Ok(Message::Text(_) | Message::Binary(_)) if !self.is_open() => {}
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => cx.incoming.push(Incoming::Message(message)),
                // Tungstenite queued the pong; our flush sends it.
                Ok(Message::Ping(_)) => self.flags |= NEEDS_FLUSH,
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // Our reply (or the end of our own close handshake) goes out at the flush.
                    self.flags |= NEEDS_FLUSH;
                    if let Phase::Open(_) = self.phase {
                        let Phase::Open(ws) = mem::replace(&mut self.phase, Phase::Moving) else { unreachable!() };
                        self.phase = Phase::Closing(ws);
                        self.since = cx.now;
                        self.flags |= RESCHEDULE;
                    }
                }
                // A non-final fragment was absorbed; nothing to deliver yet.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(WsError::Utf8(_)) => return Some(self.fail(CloseCode::Invalid, "invalid UTF-8", cx)),
                Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                    return Some(self.fail(CloseCode::Size, "message too big", cx))
                }
                Err(WsError::Capacity(_) | WsError::Protocol(_)) => {
                    return Some(self.fail(CloseCode::Protocol, "protocol error", cx))
                }
                Err(_) => {
                    inbound::discard();
                    return Some(Outcome::Remove);
                }
            }
        }
    }

    /// The peer broke the protocol: stop parsing its bytes and ask the shard to close with
    /// `code` after the messages that came before. Once the close frame is out, our write
    /// side is shut and the connection goes at EOF or the close deadline.
    fn fail(&mut self, code: CloseCode, reason: &'static str, cx: &mut ConnEnv<'_>) -> Outcome {
        log::debug!("failing connection {:?}: {reason}", cx.token);
        inbound::discard();
        self.flags |= DISCARD_INPUT;
        cx.incoming.push(Incoming::Failed(code, reason));
        // Keep draining the socket (discarding) so EOF is noticed.
        Outcome::ReadAgain
    }
}
