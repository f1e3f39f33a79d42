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
use crate::hub::handler::{Context, Handler};
use crate::hub::routes::SubscribeError;
use crate::protocol::{self, ClientOp, ErrorCode};

/// Request methods the hub answers itself.
pub const BUILT_IN_METHODS: [&str; 2] = ["presence", "stats"];

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
}

#[derive(Deserialize)]
struct PresenceParams {
    topic: String,
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
        match self.limiter.check(cx.conn().slot(), Instant::now()) {
            RateVerdict::Allow => {}
            RateVerdict::Refuse => {
                let why = "too many messages; slow down or be disconnected";
                return reply_error(cx, ErrorCode::RateLimited, why, None);
            }
            RateVerdict::Close => return cx.close(CloseCode::Policy, "rate limit exceeded"),
        }
        let Message::Text(text) = message else {
            let why = "binary frames carry no meaning in this protocol; send JSON text";
            cx.reply(Message::text(protocol::error(ErrorCode::BinaryNotSupported.as_str(), why, None)));
            return;
        };
        let frame = match protocol::decode(&text) {
            Ok(frame) => frame,
            Err(refusal) => {
                let error = protocol::error(refusal.code.as_str(), &refusal.message, refusal.id.as_deref());
                cx.reply(Message::text(error));
                return;
            }
        };
        let id = frame.id;
        let answer = match frame.op {
            ClientOp::Subscribe { topic } => match cx.check_topic(&topic, TopicAction::Subscribe) {
                Err(why) => Answer::Error(ErrorCode::Forbidden, why),
                Ok(()) => match cx.subscribe(&topic) {
                    Ok(_) => Answer::Ack,
                    Err(SubscribeError::TooMany) => Answer::Error(
                        ErrorCode::TooManySubscriptions,
                        format!("at most {} subscriptions per connection", cx.max_subscriptions()),
                    ),
                },
            },
            ClientOp::Unsubscribe { topic } => {
                cx.unsubscribe(&topic);
                Answer::Ack
            }
            ClientOp::Publish { topic, data } => {
                if let Err(why) = cx.check_topic(&topic, TopicAction::Publish) {
                    return reply_error(cx, ErrorCode::Forbidden, &why, id.as_deref());
                }
                cx.publish(&topic, &cx.identity(), &data);
                Answer::Ack
            }
            ClientOp::Broadcast { data } => {
                if !cx.may_broadcast() {
                    let why = "you may not broadcast on this server";
                    return reply_error(cx, ErrorCode::Forbidden, why, id.as_deref());
                }
                let frame = protocol::message(None, &cx.identity(), &data, protocol::now_millis());
                cx.broadcast(Message::text(frame));
                Answer::Ack
            }
            ClientOp::Send { to, data } => {
                let frame = protocol::message(None, &cx.identity(), &data, protocol::now_millis());
                cx.send_to_user(&to, Message::text(frame));
                Answer::Ack
            }
            ClientOp::Ping => Answer::Pong,
            ClientOp::Refresh { token } => match cx.refresh(&token) {
                Ok(()) => Answer::Ack,
                Err(why) => Answer::Error(ErrorCode::Unauthorized, why),
            },
            ClientOp::Request { method, params } => {
                let id = id.expect("decode requires an id on requests");
                self.request(cx, method, params, id);
                return;
            }
            ClientOp::Event { name, data } => {
                if self.app.has_event(&name) {
                    self.app.submit(Job::new(JobKind::Event(name), cx, id, data));
                    return;
                }
                Answer::Error(ErrorCode::UnknownType, format!("unknown type \"{name}\""))
            }
        };
        let reply = match answer {
            Answer::Ack => match &id {
                Some(id) => protocol::ack(id),
                None => return,
            },
            Answer::Pong => protocol::pong(id.as_deref()),
            Answer::Error(code, message) => protocol::error(code.as_str(), &message, id.as_deref()),
        };
        cx.reply(Message::text(reply));
    }
}

fn reply_error(cx: &mut Context<'_>, code: ErrorCode, why: &str, id: Option<&RawValue>) {
    cx.reply(Message::text(protocol::error(code.as_str(), why, id)));
}

/// How a built-in frame is answered.
enum Answer {
    /// `ack` if the frame had an id, nothing otherwise.
    Ack,
    Pong,
    Error(ErrorCode, String),
}

impl Messaging {
    fn request(&self, cx: &mut Context<'_>, method: String, params: Box<RawValue>, id: Box<RawValue>) {
        let response = match method.as_str() {
            "presence" => match serde_json::from_str::<PresenceParams>(params.get()) {
                Ok(PresenceParams { topic }) => match protocol::check_topic(&topic) {
                    Ok(()) => {
                        let presence = cx.hub().presence(&topic);
                        protocol::response_ok(&id, &serde_json::to_value(presence).expect("presence serializes"))
                    }
                    Err(why) => protocol::response_err(&id, ErrorCode::BadTopic.as_str(), &why),
                },
                Err(e) => protocol::response_err(&id, ErrorCode::BadField.as_str(), &format!("presence: {e}")),
            },
            "stats" => {
                let stats = cx.hub().stats();
                protocol::response_ok(&id, &serde_json::to_value(stats).expect("stats serialize"))
            }
            _ if self.app.has_request(&method) => {
                self.app.submit(Job::new(JobKind::Request(method), cx, Some(id), params));
                return;
            }
            _ => protocol::response_err(
                &id,
                ErrorCode::UnknownMethod.as_str(),
                &format!("no request method \"{method}\""),
            ),
        };
        cx.reply(Message::text(response));
    }
}
