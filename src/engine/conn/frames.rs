//! The open and closing phases' read path: one burst of `recv()`s into the shard's
//! inbound buffer, each whole frame handed to tungstenite, messages collected for the
//! handler, protocol errors turned into close codes.

use std::io;
use std::mem;

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::outbound::FrameIo;
use super::{
    new_context, ConnEnv, Connection, Incoming, Outcome, Phase, DISCARD_INPUT, MID_MESSAGE, NEEDS_FLUSH, READ_BUDGET,
    RECENT, RESCHEDULE,
};
use crate::engine::wire::{FrameError, Transport};

impl<T: Transport> Connection<T> {
    pub(super) fn read_frames(&mut self, cx: &mut ConnEnv<'_>) -> Outcome {
        cx.inbound.load(&mut self.stash.take().map_or_else(Vec::new, |stash| *stash));
        for _ in 0..READ_BUDGET {
            if let Some(outcome) = self.feed_frames(cx) {
                return outcome;
            }
            match cx.inbound.recv(&mut self.wire) {
                Ok(0) => {
                    cx.inbound.discard();
                    return Outcome::Remove;
                }
                Ok(_) => self.last_heard = cx.now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stash_rest(cx);
                    return Outcome::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    cx.inbound.discard();
                    return Outcome::Remove;
                }
            }
        }
        // Budget spent: handle what the last recv completed, then yield to others.
        self.feed_frames(cx).unwrap_or_else(|| {
            self.stash_rest(cx);
            Outcome::ReadAgain
        })
    }

    /// Ends the read burst, keeping an unfinished frame's bytes for the next one.
    fn stash_rest(&mut self, cx: &mut ConnEnv<'_>) {
        let mut rest = Vec::new();
        cx.inbound.stash(&mut rest);
        self.stash = (!rest.is_empty()).then(|| Box::new(rest));
    }

    /// Hands every complete frame in the inbound buffer to tungstenite. `Some` ends the
    /// read burst with that outcome (the inbound buffer already stashed or discarded).
    fn feed_frames(&mut self, cx: &mut ConnEnv<'_>) -> Option<Outcome> {
        if self.has(DISCARD_INPUT) {
            cx.inbound.discard();
            return None;
        }
        loop {
            let info = match cx.inbound.next_frame(cx.limits.max_message_size) {
                Ok(Some(info)) => info,
                Ok(None) => return None,
                Err(FrameError::TooBig) => return Some(self.fail(CloseCode::Size, "message too big", cx)),
                Err(FrameError::Malformed) => return Some(self.fail(CloseCode::Protocol, "protocol error", cx)),
            };
            if info.close && !cx.incoming.is_empty() {
                // Once tungstenite sees the close it refuses to send, so the handler's
                // answers to the messages before it would be lost. Let the handler run
                // first; the close frame waits in the stash for the next pass.
                cx.inbound.defer_frame();
                self.stash_rest(cx);
                return Some(Outcome::ReadAgain);
            }
            if info.data {
                self.set(MID_MESSAGE, !info.fin);
            }
            self.flags |= RECENT;
            let Connection { phase, out, .. } = self;
            let open = matches!(phase, Phase::Open(_));
            let context = match phase {
                Phase::Open(context) => context.get_or_insert_with(|| new_context(cx.limits)),
                Phase::Closing(context) => context,
                Phase::Handshaking(_) | Phase::Moving => {
                    cx.inbound.discard();
                    return Some(Outcome::Remove);
                }
            };
            if !context.can_read() {
                // Both close frames have crossed: whatever follows is not ours to read.
                cx.inbound.discard();
                return None;
            }
            let result = context.read(&mut FrameIo { window: Some(&mut *cx.inbound), out });
            debug_assert!(cx.inbound.frame_consumed());
            match result {
                Ok(Message::Text(_) | Message::Binary(_)) if !open => {}
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => cx.incoming.push(Incoming::Message(message)),
                Ok(Message::Ping(_)) => {
                    // The pong goes in line now, behind what is already queued.
                    let _ = context.flush(&mut FrameIo { window: None, out });
                    self.flags |= NEEDS_FLUSH;
                }
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // Queues our reply (when the peer started the close); tungstenite then
                    // reports the close handshake complete, which the flush acts on.
                    let _ = context.flush(&mut FrameIo { window: None, out });
                    self.flags |= NEEDS_FLUSH;
                    if let Phase::Open(_) = self.phase {
                        let Phase::Open(Some(context)) = mem::replace(&mut self.phase, Phase::Moving) else {
                            unreachable!("a context was made for this frame")
                        };
                        self.phase = Phase::Closing(context);
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
                    cx.inbound.discard();
                    return Some(Outcome::Remove);
                }
            }
        }
    }

    /// The peer broke the protocol: stop parsing its bytes and ask the shard to close with
    /// `code` after the messages that came before. Once the close frame is out, our write
    /// side is shut and the connection goes at EOF or the close deadline.
    fn fail(&mut self, code: CloseCode, reason: &'static str, cx: &mut ConnEnv<'_>) -> Outcome {
        log::debug!("failing connection {}: {reason}", cx.key);
        cx.inbound.discard();
        self.flags |= DISCARD_INPUT;
        cx.incoming.push(Incoming::Failed(code, reason));
        // Keep draining the socket (discarding) so EOF is noticed.
        Outcome::ReadAgain
    }
}
