//! The application's hook into the engine: the [`Handler`] trait and the [`Context`] it
//! acts through. Sits after the connection layer (which turns bytes into messages) and
//! before routing (the shard applies what a handler asked for).
//!
//! A handler never touches sockets. Everything it asks for (reply, send, broadcast,
//! close) is recorded as an [`Effect`] and applied by the shard once the handler returns,
//! so handlers stay testable in memory and cannot re-enter the event loop.

use std::sync::Arc;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::front_door::{HttpResponse, PlainRequest};
use crate::inbox::ConnId;

/// One instance per shard, called on that shard's thread only, so it may keep
/// shard-local state (indexes, caches) without locks.
pub trait Handler: Send + 'static {
    /// A WebSocket connection has completed its upgrade.
    fn on_open(&mut self, _cx: &mut Context<'_>) {}

    /// A complete text or binary message arrived (pings, pongs and closes are handled by
    /// the engine).
    fn on_message(&mut self, cx: &mut Context<'_>, message: Message);

    /// The connection is gone (closed by either side, timed out or evicted). Sends to it
    /// are dropped.
    fn on_close(&mut self, _cx: &mut Context<'_>) {}

    /// A plain (non-upgrade) HTTP request on the WebSocket port. The response is sent and
    /// the connection closed.
    fn on_http(&mut self, _request: &PlainRequest) -> HttpResponse {
        HttpResponse::not_found()
    }
}

/// What a handler can see of the connection it was called for, and do.
pub struct Context<'a> {
    conn: ConnId,
    user: Option<&'a Arc<str>>,
    effects: &'a mut Vec<Effect>,
}

/// A handler's request, applied by the shard after the handler returns.
#[derive(Debug)]
pub(crate) enum Effect {
    Reply(Message),
    ToConn(ConnId, Message),
    ToUser(Arc<str>, Message),
    Broadcast(Message),
    Close(CloseCode, &'static str),
}

impl<'a> Context<'a> {
    pub(crate) fn new(conn: ConnId, user: Option<&'a Arc<str>>, effects: &'a mut Vec<Effect>) -> Self {
        Context { conn, user, effects }
    }

    /// The connection this call is about.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The connection's user, if it has one (`?user=` in open mode).
    pub fn user(&self) -> Option<&str> {
        self.user.map(|user| &**user)
    }

    /// Sends `message` back on this connection.
    pub fn reply(&mut self, message: Message) {
        self.effects.push(Effect::Reply(message));
    }

    /// Sends `message` to another connection, on any shard.
    pub fn send_to(&mut self, conn: ConnId, message: Message) {
        self.effects.push(Effect::ToConn(conn, message));
    }

    /// Sends `message` to every connection of `user`, on any shard.
    pub fn send_to_user(&mut self, user: &str, message: Message) {
        self.effects.push(Effect::ToUser(user.into(), message));
    }

    /// Sends `message` to every open connection, this one included.
    pub fn broadcast(&mut self, message: Message) {
        self.effects.push(Effect::Broadcast(message));
    }

    /// Closes this connection with `code` after what is already queued.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        self.effects.push(Effect::Close(code, reason));
    }
}

/// Sends every message back to its sender (`wshub --echo`): for conformance tests and
/// benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, cx: &mut Context<'_>, message: Message) {
        cx.reply(message);
    }
}

/// Sends every message to every open connection, sender included (`wshub --relay`): the
/// simplest fan-out, for demos and fan-out benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relay;

impl Handler for Relay {
    fn on_message(&mut self, cx: &mut Context<'_>, message: Message) {
        cx.broadcast(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_record_effects_without_io() {
        let mut effects = Vec::new();
        let user: Arc<str> = "ann".into();
        let mut cx = Context::new(ConnId::new(1, 2, 3), Some(&user), &mut effects);
        Echo.on_message(&mut cx, Message::text("hi"));
        Relay.on_message(&mut cx, Message::text("all"));
        assert_eq!(cx.user(), Some("ann"));
        assert!(matches!(&effects[0], Effect::Reply(m) if m.to_text().unwrap() == "hi"));
        assert!(matches!(&effects[1], Effect::Broadcast(m) if m.to_text().unwrap() == "all"));
    }
}
