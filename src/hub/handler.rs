//! The application's hook into the engine: the [`Handler`] trait and the [`Context`] it
//! acts through. Sits after the connection layer (which turns bytes into messages) and
//! before routing (the shard applies what a handler asked for).
//!
//! A handler never touches sockets. What it asks for on its own connection or shard
//! (reply, this shard's part of a send, close) is recorded as an effect and applied by
//! the shard once the handler returns, so handlers stay testable in memory and cannot
//! re-enter the event loop. The part of a send meant for other shards and instances is
//! handed to the hub at once, which never blocks, so the handler learns whether it was
//! refused (and can tell its client, with the request's id).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::auth::{AuthError, Gate, Grants, TopicAction, TopicDenied};
use crate::frame::SharedFrame;
use crate::http::{HttpResponse, PlainRequest};
use crate::hub::SubscribeError;
use crate::hub::{ConnId, Filter, Hub, InboxFull, Job, Origin, Recovering, Recovery, Target};
use crate::protocol::{self, Since};
use crate::sync::lock;

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
    routing: &'a mut ShardRouting,
}

/// A shard's routing state that handlers act on directly (subscriptions must be answered
/// at once), owned by the shard.
pub(crate) struct ShardRouting {
    pub index: usize,
    pub hub: Hub,
    pub max_subscriptions: usize,
    /// What each connection's credential grants, by slab key; absent in open mode.
    /// Entries live from the upgrade until the connection is removed.
    pub grants: HashMap<usize, Arc<Grants>>,
    /// Verifies `refresh` tokens.
    pub gate: Arc<Gate>,
    /// Subscriptions waiting for their replay (`subscribe` with `since`), whose live
    /// deliveries are held back until it arrives; empty without `--history`.
    pub recovering: Recovering,
}

impl ShardRouting {
    /// The name a connection goes by: its user, or its connection id in open mode.
    pub fn identity(conn: ConnId, user: Option<&Arc<str>>) -> Arc<str> {
        user.cloned().unwrap_or_else(|| conn.to_string().into())
    }
}

/// A handler's request, applied by the shard after the handler returns.
pub(crate) enum Effect {
    /// To the connection the handler was called for, in order with its other output.
    Reply(SharedFrame),
    /// This shard's own part of a send; the hub has taken the rest.
    Deliver(Target, SharedFrame),
    Close(CloseCode, &'static str),
    /// The connection presented a fresh credential (its grants are already replaced):
    /// its new expiry, if it has one.
    Refreshed(Option<u64>),
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        conn: ConnId,
        user: Option<&'a Arc<str>>,
        effects: &'a mut Vec<Effect>,
        routing: &'a mut ShardRouting,
    ) -> Self {
        Context { conn, user, effects, routing }
    }

    /// The connection this call is about.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The connection's user, if it has one (`?user=` in open mode).
    pub fn user(&self) -> Option<&str> {
        self.user.map(|user| &**user)
    }

    /// The name the connection goes by: its user, or else its connection id.
    pub fn identity(&self) -> Arc<str> {
        ShardRouting::identity(self.conn, self.user)
    }

    /// What the connection's credential grants; `None` in open mode (no auth).
    pub fn grants(&self) -> Option<&Grants> {
        self.routing.grants.get(&self.conn.slot()).map(|grants| &**grants)
    }

    /// `Ok` if this connection may `action` on `topic` (its `user:` topic, the server's
    /// rules, its credential's grants), or why not.
    pub fn check_topic(&self, topic: &str, action: TopicAction) -> Result<(), TopicDenied> {
        self.routing.gate.policy.check_topic(self.grants(), &self.identity(), topic, action)
    }

    /// Whether this connection may broadcast.
    pub fn may_broadcast(&self) -> bool {
        self.routing.gate.policy.may_broadcast(self.grants(), &self.identity())
    }

    /// Replaces the connection's expiring credential with `token`, which must name the
    /// same user. On success its grants and expiry are the new token's.
    pub fn refresh(&mut self, token: &str) -> Result<(), RefreshError> {
        if self.routing.gate.is_open() {
            return Err(RefreshError::NotUsingCredentials);
        }
        let identity = self.routing.gate.verify_token(token).map_err(RefreshError::Refused)?;
        if Some(identity.user.as_str()) != self.user() {
            return Err(RefreshError::OtherUser);
        }
        self.routing.grants.insert(self.conn.slot(), Arc::new(identity.grants));
        self.effects.push(Effect::Refreshed(identity.expires_at));
        Ok(())
    }

    /// Topics one connection may subscribe to at once.
    pub fn max_subscriptions(&self) -> usize {
        self.routing.max_subscriptions
    }

    /// Reaches every shard (presence, stats, sends from outside this call).
    pub fn hub(&self) -> &Hub {
        &self.routing.hub
    }

    /// Subscribes this connection to `topic` now: `Ok(false)` if it already was.
    /// Recorded before the handler acks it, so a publish that follows the ack reaches it.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, SubscribeError> {
        let (conn, user, routing) = (self.conn, self.user, &*self.routing);
        let identity = || ShardRouting::identity(conn, user);
        lock(&routing.hub.shared(routing.index).topics).subscribe(
            conn.slot() as u32,
            identity,
            topic,
            routing.max_subscriptions,
        )
    }

    /// Unsubscribes this connection from `topic` now; `false` if it was not subscribed.
    /// A replay on its way for it is dropped.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let routing = &mut *self.routing;
        routing.recovering.abandon(self.conn.slot() as u32, topic);
        lock(&routing.hub.shared(routing.index).topics).unsubscribe(self.conn.slot() as u32, topic)
    }

    /// Subscribes this connection to `topic`, which keeps history, recovering first what
    /// it missed after `since`: the history thread sends the replay, then the ack
    /// (answering `id`), and live deliveries follow with no gap and no repeat. Until the
    /// replay arrives the topic's live deliveries to this connection are held back (they
    /// are in the replay).
    pub(crate) fn subscribe_since(
        &mut self,
        topic: &str,
        since: Since,
        id: Option<Box<RawValue>>,
    ) -> Result<(), RecoverError> {
        let slot = self.conn.slot() as u32;
        if !self.routing.hub.keeps(topic) {
            return Err(RecoverError::NoHistory);
        }
        match self.subscribe(topic) {
            Ok(true) => {}
            Ok(false) => return Err(RecoverError::AlreadySubscribed),
            Err(too_many) => return Err(RecoverError::Subscribe(too_many)),
        }
        let topic: Arc<str> = topic.into();
        let request = self.routing.recovering.begin(slot, &topic);
        let asker = Recovery { conn: self.conn, request, id };
        let queued = self
            .routing
            .hub
            .history()
            .map(|history| history.queue(Job::Recover { topic: topic.clone(), since, asker }));
        if !matches!(queued, Some(Ok(()))) {
            self.unsubscribe(&topic);
            return Err(RecoverError::Busy);
        }
        Ok(())
    }

    /// Sends `frame` to the connections `target` names, on every shard and (in a
    /// cluster) instance (see [`Hub::route`]): the other shards' and instances' part is
    /// handed over now, this shard's own is delivered when the handler returns. `Err`
    /// when some receivers elsewhere will miss it (a full inbox, the cluster's queue
    /// full or Redis down; counted there): tell the sender, e.g. instead of an ack.
    pub fn route(&mut self, target: Target, frame: Message) -> Result<(), InboxFull> {
        let frame = SharedFrame::encode(frame);
        let routed = self.routing.hub.route_from(Origin::Shard(self.routing.index), &target, &frame);
        self.effects.push(Effect::Deliver(target, frame));
        routed
    }

    /// Publishes `data` to `topic` as `from`, in the hub protocol's `message` frame. On a
    /// topic with history it is stored first and delivered by the history thread.
    pub fn publish(&mut self, topic: &str, from: &str, data: &RawValue) -> Result<(), InboxFull> {
        if self.routing.hub.keeps(topic) {
            return Ok(self.routing.hub.publish_kept(topic, from, data, None)?);
        }
        let frame = protocol::message(Some(topic), from, data, protocol::now_millis(), None);
        self.route(Target::Topic { topic: topic.into(), data: data.get().into() }, Message::text(frame))
    }

    /// Sends `message` to every open connection whose session data satisfies `filter` (on
    /// every instance for a named filter: see [`Hub::send_filtered`]).
    pub fn send_filtered(&mut self, filter: Filter, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Filtered(filter), message)
    }

    /// One value of this connection's session data.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.routing.hub.session_get(self.conn, key)
    }

    /// Stores one value in this connection's session data.
    pub fn set(&mut self, key: &str, value: serde_json::Value) {
        self.ensure_session();
        self.routing.hub.session_set(self.conn, key, value);
    }

    /// Creates this connection's (empty) session if it has none, so handlers on other
    /// threads can store data in it; the shard frees it when the connection goes.
    pub fn ensure_session(&mut self) {
        let shared = self.routing.hub.shared(self.routing.index);
        lock(&shared.sessions).entry(self.conn).or_default();
    }

    /// Sends `message` back on this connection.
    pub fn reply(&mut self, message: Message) {
        self.effects.push(Effect::Reply(SharedFrame::encode(message)));
    }

    /// Sends `message` back on this connection once this connection, subscribed to
    /// `topic`, receives what any instance publishes there next: at once on a single
    /// instance (or while the cluster is unreachable), later in a cluster while this
    /// instance's Redis subscription to the topic is under way (then after replies
    /// queued meanwhile). For a `subscribe` ack that keeps its promise.
    pub fn reply_once_subscribed(&mut self, topic: &str, message: Message) {
        let frame = SharedFrame::encode(message);
        if let Some(now) = self.routing.hub.once_reachable(topic, self.conn, frame) {
            self.effects.push(Effect::Reply(now));
        }
    }

    /// Sends `message` to another connection, on any shard.
    pub fn send_to(&mut self, conn: ConnId, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Conn(conn), message)
    }

    /// Sends `message` to every connection of `user`, on any shard.
    pub fn send_to_user(&mut self, user: &str, message: Message) -> Result<(), InboxFull> {
        self.route(Target::User(user.into()), message)
    }

    /// Sends `message` to every open connection, this one included.
    pub fn broadcast(&mut self, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Everyone, message)
    }

    /// Closes this connection with `code` after what is already queued.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        self.effects.push(Effect::Close(code, reason));
    }
}

/// Why [`Context::refresh`] kept the connection's old credential (which still expires
/// when it would have). The text is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// The server runs in open mode: there is no credential to replace, nothing expires.
    NotUsingCredentials,
    /// The token is valid but names another user; a connection cannot change its user.
    OtherUser,
    /// The gate refused the token itself (expired, unknown, badly signed...).
    Refused(AuthError),
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::NotUsingCredentials => f.write_str("this server does not use credentials"),
            RefreshError::OtherUser => f.write_str("the new token is for another user"),
            // The gate's reason is the whole message, as for a refused upgrade.
            RefreshError::Refused(why) => fmt::Display::fmt(why, f),
        }
    }
}

impl std::error::Error for RefreshError {}

/// Why [`Context::subscribe_since`] did not subscribe. The text is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoverError {
    /// No `--history` rule matches the topic: subscribe without `since`.
    NoHistory,
    /// Already subscribed: unsubscribe first, then subscribe with `since`.
    AlreadySubscribed,
    Subscribe(SubscribeError),
    /// The history thread has too much queued: try again shortly.
    Busy,
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoverError::NoHistory => "this topic keeps no history; subscribe without \"since\"",
            RecoverError::AlreadySubscribed => "already subscribed; unsubscribe first to recover with \"since\"",
            RecoverError::Subscribe(SubscribeError::TooMany) => "too many subscriptions",
            RecoverError::Busy => "the history store is overloaded; try again shortly",
        })
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
        // A raw protocol has no frame to tell the sender with; the refusal is counted.
        let _ = cx.broadcast(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_record_effects_without_io() {
        let mut effects = Vec::new();
        let user: Arc<str> = "ann".into();
        let mut routing = ShardRouting {
            index: 0,
            hub: Hub::detached(1),
            max_subscriptions: 8,
            grants: Default::default(),
            gate: Arc::new(Gate::new(&Default::default())),
            recovering: Recovering::default(),
        };
        let mut cx = Context::new(ConnId::new(0, 0, 2, 3), Some(&user), &mut effects, &mut routing);
        Echo.on_message(&mut cx, Message::text("hi"));
        Relay.on_message(&mut cx, Message::text("all"));
        assert_eq!(cx.user(), Some("ann"));
        assert!(matches!(&effects[0], Effect::Reply(m) if m.to_text().unwrap() == "hi"));
        assert!(matches!(&effects[1], Effect::Deliver(Target::Everyone, m) if m.to_text().unwrap() == "all"));
    }

    #[test]
    fn subscriptions_update_routes_and_the_directory_at_once() {
        let mut effects = Vec::new();
        let hub = Hub::detached(1);
        let mut routing = ShardRouting {
            index: 0,
            hub: hub.clone(),
            max_subscriptions: 1,
            grants: Default::default(),
            gate: Arc::new(Gate::new(&Default::default())),
            recovering: Recovering::default(),
        };
        let mut cx = Context::new(ConnId::new(0, 0, 5, 1), None, &mut effects, &mut routing);
        assert_eq!(cx.subscribe("room"), Ok(true));
        assert_eq!(cx.subscribe("room"), Ok(false));
        assert_eq!(cx.subscribe("other"), Err(SubscribeError::TooMany));
        let id = ConnId::new(0, 0, 5, 1).to_string();
        assert_eq!(hub.presence("room").users, vec![id]);
        cx.set("lang", serde_json::json!("fi"));
        assert_eq!(cx.get("lang"), Some(serde_json::json!("fi")));
        assert!(cx.unsubscribe("room"));
        assert_eq!(hub.presence("room").count, 0);
        assert_eq!(lock(&hub.shared(0).topics).topic_count(), 0);
    }
}
