//! The hub protocol as a [`Handler`]: decodes each client frame (see `protocol`) and does
//! what it asks, on the shard's thread for the built-in types (subscribe, publish,
//! broadcast, send, ping, presence, stats), or hands it to the application's handlers on
//! the worker pool (custom events and requests). Sits between the connection and routing.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::app::{AppCore, Job, JobKind};
use crate::auth::TopicAction;
use crate::engine::{RateLimiter, RateVerdict};
use crate::hub::handler::{Context, Handler, RecoverError};
use crate::hub::{Asker, InboxFull, Job as HistoryJob, Presence, PresenceError, SubscribeError};
use crate::protocol::{self, BuiltInMethod, ClientFrame, ClientOp, ErrorCode, Since};

/// One per shard; shares the application's registered handlers.
pub struct Messaging {
    app: Arc<AppCore>,
    /// Messages per second per connection (`--max-messages-per-second`).
    limiter: RateLimiter,
}

impl Messaging {
    pub(crate) fn new(app: Arc<AppCore>, rate: u32, burst: u32) -> Self {
        Messaging { app, limiter: RateLimiter::new(rate, burst) }
    }

    /// Counts the message against the connection's rate; `false` if it is refused (with an
    /// error frame) or the connection is being closed for persisting.
    fn within_rate(&mut self, cx: &mut Context<'_>) -> bool {
        match self.limiter.check(cx.conn().slot(), Instant::now()) {
            RateVerdict::Allow => return true,
            RateVerdict::Refuse => {
                let why = "too many messages; slow down or be disconnected";
                Answer::Error(ErrorCode::RateLimited, why.into()).send(cx, None);
            }
            RateVerdict::Close => cx.close(CloseCode::Policy, "rate limit exceeded"),
        }
        false
    }
}

#[derive(Deserialize)]
struct PresenceParams {
    topic: String,
}

/// `request history`: `{topic, since?, limit?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    topic: String,
    since: Option<Box<RawValue>>,
    limit: Option<usize>,
}

impl Handler for Messaging {
    fn on_open(&mut self, cx: &mut Context<'_>) {
        if self.app.has_worker_handlers() {
            // Handlers on the worker pool may store session data from the start.
            cx.ensure_session();
        }
        let welcome = protocol::welcome(cx.conn().as_u64(), &cx.identity());
        cx.reply(Message::text(welcome));
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        self.limiter.forget(cx.conn().slot());
    }

    fn on_message(&mut self, cx: &mut Context<'_>, message: Message) {
        // Before decoding: a flood costs the shard as little as possible.
        if !self.within_rate(cx) {
            return;
        }
        let Message::Text(text) = message else {
            let why = "binary frames carry no meaning in this protocol; send JSON text";
            return Answer::Error(ErrorCode::BinaryNotSupported, why.into()).send(cx, None);
        };
        let ClientFrame { id, op } = match protocol::decode(&text) {
            Ok(frame) => frame,
            Err(refusal) => return Answer::Error(refusal.code, refusal.message).send(cx, refusal.id.as_deref()),
        };
        let answer = match op {
            ClientOp::Subscribe { topic, since: None } => subscribe(cx, topic),
            ClientOp::Subscribe { topic, since: Some(since) } => return recover(cx, &topic, since, id),
            ClientOp::Unsubscribe { topic } => {
                cx.unsubscribe(&topic);
                Answer::Ack
            }
            ClientOp::Publish { topic, data } => match id {
                // Acked by the history thread once stored.
                Some(id) if cx.hub().keeps(&topic) => return publish_kept(cx, &topic, &data, id),
                _ => publish(cx, &topic, &data),
            },
            ClientOp::Broadcast { data } => broadcast(cx, &data),
            ClientOp::Send { to, data } => send(cx, &to, &data),
            ClientOp::Ping => Answer::Pong,
            ClientOp::Refresh { token } => refresh(cx, &token),
            ClientOp::Request { method, params } => {
                let id = id.expect("decode requires an id on requests");
                return self.request(cx, method, params, id);
            }
            ClientOp::Event { name, data } => {
                if self.app.has_event(&name) {
                    // The worker answers, in order with the connection's other jobs.
                    return self.app.submit(Job::new(JobKind::Event(name), cx, id, data));
                }
                Answer::Error(ErrorCode::UnknownType, format!("unknown type \"{name}\""))
            }
        };
        answer.send(cx, id.as_deref());
    }
}

fn subscribe(cx: &mut Context<'_>, topic: String) -> Answer {
    if let Err(denied) = cx.check_topic(&topic, TopicAction::Subscribe) {
        return Answer::Error(ErrorCode::Forbidden, denied.to_string());
    }
    match cx.subscribe(&topic) {
        Ok(_) => Answer::Subscribed(topic),
        Err(SubscribeError::TooMany) => Answer::Error(
            ErrorCode::TooManySubscriptions,
            format!("at most {} subscriptions per connection", cx.max_subscriptions()),
        ),
    }
}

/// A `subscribe` with `since`: the replay and the ack come from the history thread.
fn recover(cx: &mut Context<'_>, topic: &str, since: Since, id: Option<Box<RawValue>>) {
    if let Err(denied) = cx.check_topic(topic, TopicAction::Subscribe) {
        return Answer::Error(ErrorCode::Forbidden, denied.to_string()).send(cx, id.as_deref());
    }
    let refused = match cx.subscribe_since(topic, since, id.clone()) {
        Ok(()) => return,
        Err(RecoverError::Subscribe(SubscribeError::TooMany)) => Answer::Error(
            ErrorCode::TooManySubscriptions,
            format!("at most {} subscriptions per connection", cx.max_subscriptions()),
        ),
        Err(why @ RecoverError::NoHistory) => Answer::Error(ErrorCode::NoHistory, why.to_string()),
        Err(why @ RecoverError::AlreadySubscribed) => Answer::Error(ErrorCode::AlreadySubscribed, why.to_string()),
        Err(why @ RecoverError::Busy) => Answer::Error(ErrorCode::Overloaded, why.to_string()),
    };
    refused.send(cx, id.as_deref());
}

/// A publish with an id on a topic with history: stored, delivered, then acked.
fn publish_kept(cx: &mut Context<'_>, topic: &str, data: &RawValue, id: Box<RawValue>) {
    if let Err(denied) = cx.check_topic(topic, TopicAction::Publish) {
        return Answer::Error(ErrorCode::Forbidden, denied.to_string()).send(cx, Some(&id));
    }
    let asker = Asker { conn: cx.conn(), id: id.clone() };
    if cx.hub().publish_kept(topic, &cx.identity(), data, Some(asker)).is_err() {
        let why = "the history store is overloaded; the message was not published";
        Answer::Error(ErrorCode::Overloaded, why.into()).send(cx, Some(&id));
    }
}

fn publish(cx: &mut Context<'_>, topic: &str, data: &RawValue) -> Answer {
    if let Err(denied) = cx.check_topic(topic, TopicAction::Publish) {
        return Answer::Error(ErrorCode::Forbidden, denied.to_string());
    }
    routed(cx.publish(topic, &cx.identity(), data))
}

fn broadcast(cx: &mut Context<'_>, data: &RawValue) -> Answer {
    if !cx.may_broadcast() {
        return Answer::Error(ErrorCode::Forbidden, "you may not broadcast on this server".into());
    }
    let frame = protocol::message(None, &cx.identity(), data, protocol::now_millis(), None);
    routed(cx.broadcast(Message::text(frame)))
}

fn send(cx: &mut Context<'_>, to: &str, data: &RawValue) -> Answer {
    let frame = protocol::message(None, &cx.identity(), data, protocol::now_millis(), None);
    routed(cx.send_to_user(to, Message::text(frame)))
}

/// The answer to a send: an ack, or `overloaded` (with the frame's id) when some
/// receivers elsewhere miss it; those here got it either way.
fn routed(result: Result<(), InboxFull>) -> Answer {
    match result {
        Ok(()) => Answer::Ack,
        Err(refused) => Answer::Error(ErrorCode::Overloaded, refused.to_string()),
    }
}

fn refresh(cx: &mut Context<'_>, token: &str) -> Answer {
    match cx.refresh(token) {
        Ok(()) => Answer::Ack,
        Err(refused) => Answer::Error(ErrorCode::Unauthorized, refused.to_string()),
    }
}

/// How a built-in frame is answered.
enum Answer {
    /// `ack` if the frame had an id, nothing otherwise.
    Ack,
    /// The `ack` of a subscription to this topic (if the frame had an id): sent once
    /// publications from every instance of a cluster reach the connection.
    Subscribed(String),
    Pong,
    Error(ErrorCode, String),
}

impl Answer {
    fn send(self, cx: &mut Context<'_>, id: Option<&RawValue>) {
        let reply = match self {
            Answer::Ack => match id {
                Some(id) => protocol::ack(id),
                None => return,
            },
            Answer::Subscribed(topic) => {
                if let Some(id) = id {
                    cx.reply_once_subscribed(&topic, Message::text(protocol::ack(id)));
                }
                return;
            }
            Answer::Pong => protocol::pong(id),
            Answer::Error(code, message) => protocol::error(code.as_str(), &message, id),
        };
        cx.reply(Message::text(reply));
    }
}

impl Messaging {
    fn request(&self, cx: &mut Context<'_>, method: String, params: Box<RawValue>, id: Box<RawValue>) {
        let response = match BuiltInMethod::from_name(&method) {
            Some(BuiltInMethod::Presence) => match serde_json::from_str::<PresenceParams>(params.get()) {
                Ok(PresenceParams { topic }) => match protocol::check_topic(&topic) {
                    Ok(()) if cx.hub().in_cluster() => return ask_cluster_presence(cx, &topic, id),
                    Ok(()) => presence_response(&id, Ok(cx.hub().presence(&topic))),
                    Err(why) => protocol::response_err(&id, ErrorCode::BadTopic.as_str(), &why),
                },
                Err(e) => protocol::response_err(&id, ErrorCode::BadField.as_str(), &format!("presence: {e}")),
            },
            Some(BuiltInMethod::History) => match history(cx, params.get(), &id) {
                Ok(()) => return,
                Err((code, why)) => protocol::response_err(&id, code.as_str(), &why),
            },
            Some(BuiltInMethod::Stats) => {
                let stats = cx.hub().stats();
                protocol::response_ok(&id, &serde_json::to_value(stats).expect("stats serialize"))
            }
            None if self.app.has_request(&method) => {
                self.app.submit(Job::new(JobKind::Request(method), cx, Some(id), params));
                return;
            }
            None => protocol::response_err(
                &id,
                ErrorCode::UnknownMethod.as_str(),
                &format!("no request method \"{method}\""),
            ),
        };
        cx.reply(Message::text(response));
    }
}

/// In a cluster: asks the other instances without waiting; the answer comes back later,
/// through the hub, to this connection (a `response` with the request's id), like a
/// worker's. Meanwhile the connection's other frames are served.
fn ask_cluster_presence(cx: &mut Context<'_>, topic: &str, id: Box<RawValue>) {
    let (hub, conn) = (cx.hub().clone(), cx.conn());
    cx.hub().cluster_presence(topic, move |result| {
        // A full inbox is counted there; the client sees no answer, as for any overload.
        let _ = hub.send_to(conn, Message::text(presence_response(&id, result)));
    });
}

fn presence_response(id: &RawValue, result: Result<Presence, PresenceError>) -> String {
    match result {
        Ok(presence) => protocol::response_ok(id, &serde_json::to_value(presence).expect("presence serializes")),
        Err(e) => protocol::response_err(id, e.code(), &e.to_string()),
    }
}

/// `request history`: queued for the history thread, which answers the connection.
fn history(cx: &mut Context<'_>, params: &str, id: &RawValue) -> Result<(), (ErrorCode, String)> {
    let params: HistoryParams = serde_json::from_str(params)
        .map_err(|e| (ErrorCode::BadField, format!("history takes {{topic, since?, limit?}}: {e}")))?;
    protocol::check_topic(&params.topic).map_err(|why| (ErrorCode::BadTopic, why))?;
    cx.check_topic(&params.topic, TopicAction::Subscribe)
        .map_err(|denied| (ErrorCode::Forbidden, denied.to_string()))?;
    let since = params.since.as_deref().map(Since::parse).transpose().map_err(|why| (ErrorCode::BadSince, why))?;
    let Some(history) = cx.hub().history().filter(|history| history.rule(&params.topic).is_some()) else {
        return Err((ErrorCode::NoHistory, "this topic keeps no history".into()));
    };
    let limit = params.limit.unwrap_or(usize::MAX);
    let asker = Asker { conn: cx.conn(), id: id.to_owned() };
    let job = HistoryJob::Page { topic: params.topic.into(), since, limit, asker };
    history.queue(job).map_err(|_| (ErrorCode::Overloaded, "the history store is overloaded; try again shortly".into()))
}
