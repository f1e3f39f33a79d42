//! The handshaking phase of a connection: reading the request head, writing our answer
//! (a 101, an HTTP response, or a refusal), then upgrading or lingering until EOF.

use std::io::{self, Read, Write};
use std::mem;
use std::net::Shutdown;

use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use super::{Connection, Cx, Incoming, Outcome, Phase, RESCHEDULE, WANTS_WRITABLE};
use crate::front_door::{self, Verdict, MAX_REQUEST_BYTES};
use crate::wire::Wire;

/// A connection's state before the upgrade; boxed inside `Phase::Handshaking`.
pub(crate) struct FrontDoor {
    pub(super) wire: Wire,
    /// The request head received so far (never more than `MAX_REQUEST_BYTES`).
    pub(super) request: Vec<u8>,
    /// Our answer; `reply[written..]` is still to go out.
    pub(super) reply: Vec<u8>,
    pub(super) written: usize,
    pub(super) stage: DoorStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DoorStage {
    Reading,
    /// The handler's HTTP hook is deciding (the shard calls `respond`).
    AwaitingHttpResponse,
    ReplyingThenUpgrade,
    ReplyingThenClose,
    /// Reply sent and our side shut: discard input until EOF so the reply is not lost to a
    /// reset.
    Lingering,
}

impl Connection {
    pub(super) fn door_ready(&mut self, cx: &mut Cx<'_>) -> Outcome {
        let Phase::Handshaking(door) = &mut self.phase else {
            return Outcome::Keep;
        };
        if matches!(door.stage, DoorStage::ReplyingThenUpgrade | DoorStage::AwaitingHttpResponse) {
            // Bytes waiting now are WebSocket frames (or a pipelined request): leave them
            // in the socket until the upgrade (or the reply) is done.
            return Outcome::Keep;
        }
        loop {
            let mut chunk = [0u8; 4096];
            let limit = match door.stage {
                DoorStage::Reading => (MAX_REQUEST_BYTES + 1 - door.request.len()).min(chunk.len()),
                // The request is complete; later bytes (a body, a pipelined request) are
                // read only to notice EOF.
                _ => chunk.len(),
            };
            match door.wire.tcp.read(&mut chunk[..limit]) {
                Ok(0) => return Outcome::Remove,
                Ok(n) if door.stage == DoorStage::Reading => {
                    door.request.extend_from_slice(&chunk[..n]);
                    match front_door::examine(&door.request) {
                        Verdict::Incomplete => {}
                        Verdict::Upgrade(upgrade) => {
                            self.stash = door.request.split_off(upgrade.head_len);
                            door.request = Vec::new();
                            door.reply = upgrade.response;
                            door.stage = DoorStage::ReplyingThenUpgrade;
                            self.user = upgrade.user.map(Into::into);
                            return self.door_write(cx);
                        }
                        Verdict::Plain(request) => {
                            door.request = Vec::new();
                            door.stage = DoorStage::AwaitingHttpResponse;
                            cx.incoming.push(Incoming::Http(request));
                            return Outcome::Keep;
                        }
                        Verdict::Refuse(response) => {
                            door.request = Vec::new();
                            door.reply = response.to_bytes();
                            door.stage = DoorStage::ReplyingThenClose;
                            return self.door_write(cx);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Remove,
            }
        }
    }

    pub(super) fn door_write(&mut self, cx: &mut Cx<'_>) -> Outcome {
        let Phase::Handshaking(door) = &mut self.phase else {
            return Outcome::Keep;
        };
        while door.written < door.reply.len() {
            match door.wire.tcp.write(&door.reply[door.written..]) {
                Ok(0) => return Outcome::Remove,
                Ok(n) => door.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.set(WANTS_WRITABLE, true);
                    return self.sync_interest(cx);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Remove,
            }
        }
        self.flags &= !WANTS_WRITABLE;
        match door.stage {
            DoorStage::ReplyingThenUpgrade => self.upgrade(cx),
            DoorStage::ReplyingThenClose => {
                let _ = door.wire.tcp.shutdown(Shutdown::Write);
                door.stage = DoorStage::Lingering;
                door.reply = Vec::new();
                if let Outcome::Remove = self.sync_interest(cx) {
                    return Outcome::Remove;
                }
                // Drain what the peer already sent, so EOF is seen even without a new edge.
                self.door_ready(cx)
            }
            _ => self.sync_interest(cx),
        }
    }

    fn upgrade(&mut self, cx: &mut Cx<'_>) -> Outcome {
        let Phase::Handshaking(door) = mem::replace(&mut self.phase, Phase::Moving) else { unreachable!() };
        let websocket = WebSocket::from_raw_socket(door.wire, Role::Server, Some(cx.limits.websocket));
        self.phase = Phase::Open(websocket);
        self.since = cx.now;
        self.last_heard = cx.now;
        self.last_ping = cx.now;
        self.flags |= RESCHEDULE;
        cx.incoming.push(Incoming::Opened);
        if let Outcome::Remove = self.sync_interest(cx) {
            return Outcome::Remove;
        }
        // Frames may have arrived with the request; the socket may hold more that no new
        // edge will announce. Read now.
        self.read_frames(cx)
    }
}
