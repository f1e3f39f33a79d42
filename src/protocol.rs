//! The JSON wire protocol (see `docs/PROTOCOL.md`): decoding client frames and encoding
//! server frames, and the protocol's fixed names, close codes and timings, which the rest
//! of the crate takes from here. Sits between the connection (text messages) and the
//! messaging handler; free of sockets, so every rule is unit-tested in memory.
//!
//! Client `data`, `params` and `id` stay raw JSON (`RawValue`): the server never re-encodes
//! what a client sent, it copies it once into the outbound frame.

use serde::Deserialize;
use serde_json::value::RawValue;

mod server;
mod since;
mod topic;

pub use server::{
    ack, batch, error, message, pong, recovered_ack, response_err, response_ok, token_expiring, welcome, Position,
};
pub use since::Since;
pub use topic::{check_topic, glob_match, MAX_TOPIC_LEN};

/// How long before a connection's credential expires it is sent `token_expiring`, in
/// seconds: time for the client to fetch a new token and send `refresh`.
pub const REFRESH_WARNING_SECS: u64 = 30;

/// The close code for a connection whose credential expired without a `refresh`. From the
/// range RFC 6455 leaves to applications, so a client can tell it from the server's other
/// closes and reconnect with a fresh token.
pub const TOKEN_EXPIRED: u16 = 4001;
/// The close reason sent with [`TOKEN_EXPIRED`].
pub const TOKEN_EXPIRED_REASON: &str = "token expired";

/// Declares a closed list of wire names: the enum, every member in `ALL`, each one's
/// name on the wire, and the lookup by name. One list, so a name cannot be matched in
/// one place and missing from another.
macro_rules! wire_names {
    ($(#[$meta:meta])* $name:ident { $($(#[$member_meta:meta])* $member:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$member_meta])* $member,)*
        }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$member,)*];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$member => $text,)*
                }
            }

            /// The member with this wire name; `None` for any other name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($name::$member),)*
                    _ => None,
                }
            }
        }
    };
}

wire_names! {
    /// The client frame `type`s the protocol defines, aliases included. [`decode`] reads any
    /// other `type` as an application event, and an application may not register a handler
    /// under one of these names (it would never be called).
    BuiltInType {
        Subscribe = "subscribe",
        /// Alias of `subscribe`.
        Join = "join",
        Unsubscribe = "unsubscribe",
        /// Alias of `unsubscribe`.
        Leave = "leave",
        Publish = "publish",
        /// Alias of `publish`.
        Message = "message",
        Broadcast = "broadcast",
        Send = "send",
        Request = "request",
        Ping = "ping",
        Refresh = "refresh",
    }
}

wire_names! {
    /// The `request` methods the hub answers itself; an application may not register a
    /// request handler under one of these names.
    BuiltInMethod {
        /// Who is subscribed to a topic.
        Presence = "presence",
        /// The server's counters.
        Stats = "stats",
        /// A page of a topic's kept messages.
        History = "history",
    }
}

/// A decoded client frame.
#[derive(Debug)]
pub struct ClientFrame {
    /// Echoed in the `ack`, `response` or `error` that answers this frame.
    pub id: Option<Box<RawValue>>,
    pub op: ClientOp,
}

#[derive(Debug)]
pub enum ClientOp {
    Subscribe {
        topic: String,
        /// Recover what was missed after this position first (topics with history).
        since: Option<Since>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: Box<RawValue>,
    },
    Broadcast {
        data: Box<RawValue>,
    },
    Send {
        to: String,
        data: Box<RawValue>,
    },
    Request {
        method: String,
        params: Box<RawValue>,
    },
    Ping,
    /// A fresh credential for a connection whose token is about to expire.
    Refresh {
        token: String,
    },
    /// Any other type: an application event, if one is registered under that name.
    Event {
        name: String,
        data: Box<RawValue>,
    },
}

/// Error codes carried by `error` frames and error responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a JSON object with a string `type`.
    BadJson,
    /// No built-in or registered handler for this `type`.
    UnknownType,
    /// A required field is missing or has the wrong JSON type.
    BadField,
    /// A topic name is empty, too long, or contains control characters.
    BadTopic,
    /// The connection already has `--max-subscriptions` topics.
    TooManySubscriptions,
    /// No request handler for this `method`.
    UnknownMethod,
    /// Binary frames carry no protocol meaning.
    BinaryNotSupported,
    /// The application's handler failed (its own code and message are used when it gives one).
    HandlerFailed,
    /// The connection's identity may not do this (a `user:` topic of someone else, a topic
    /// outside its credential's `subs`/`pubs`, a broadcast without the admin role).
    Forbidden,
    /// More messages than `--max-messages-per-second` allows; persisting closes with 1008.
    RateLimited,
    /// A `refresh` token was refused (the connection keeps its old one until it expires).
    Unauthorized,
    /// A shard's inbox was full: some receivers missed what the handler sent; or, for a
    /// cluster-wide `presence`, too many questions were already waiting for Redis.
    Overloaded,
    /// A cluster-wide answer (`presence`) needs Redis, which cannot be reached now; or the
    /// history store failed.
    Unavailable,
    /// `since` is not `{offset, epoch}`, or names an offset the topic never reached.
    BadSince,
    /// The topic keeps no history (no `--history` rule matches it).
    NoHistory,
    /// A `subscribe` with `since` on a topic the connection is already subscribed to
    /// (the replay would repeat what it received live): unsubscribe first.
    AlreadySubscribed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::HandlerFailed => "handler_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadSince => "bad_since",
            ErrorCode::NoHistory => "no_history",
            ErrorCode::AlreadySubscribed => "already_subscribed",
        }
    }
}

/// Why a frame was refused: answered with an `error` frame, connection kept open.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<Box<RawValue>>,
}

/// Every field any client frame may carry; which are required depends on `type`.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<Box<RawValue>>,
    topic: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    to: Option<Box<RawValue>>,
    method: Option<Box<RawValue>>,
    params: Option<Box<RawValue>>,
    token: Option<Box<RawValue>>,
    since: Option<Box<RawValue>>,
}

/// Decodes one client text frame.
pub fn decode(text: &str) -> Result<ClientFrame, Refusal> {
    if !text.trim_start().starts_with('{') {
        // serde would also read a struct from a JSON array; the protocol says object.
        return Err(Refusal {
            code: ErrorCode::BadJson,
            message: "expected a JSON object with a string \"type\"".into(),
            id: None,
        });
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| Refusal {
        code: ErrorCode::BadJson,
        message: format!("expected a JSON object with a string \"type\": {e}"),
        id: None,
    })?;
    let Envelope { kind, id, topic, data, to, method, params, token, since } = envelope;
    let refuse = |code, message: String, id| Refusal { code, message, id };
    let op = (|| {
        let Some(built_in) = BuiltInType::from_name(&kind) else {
            return Ok(ClientOp::Event { name: kind.clone(), data: data.unwrap_or_else(null) });
        };
        Ok(match built_in {
            BuiltInType::Subscribe | BuiltInType::Join => ClientOp::Subscribe {
                topic: topic_field(topic)?,
                since: since.as_deref().map(Since::parse).transpose().map_err(|why| (ErrorCode::BadSince, why))?,
            },
            BuiltInType::Unsubscribe | BuiltInType::Leave => ClientOp::Unsubscribe { topic: topic_field(topic)? },
            BuiltInType::Publish | BuiltInType::Message => {
                ClientOp::Publish { topic: topic_field(topic)?, data: required(data, "data")? }
            }
            BuiltInType::Broadcast => ClientOp::Broadcast { data: required(data, "data")? },
            BuiltInType::Send => ClientOp::Send { to: string_field(to, "to")?, data: required(data, "data")? },
            BuiltInType::Request => {
                ClientOp::Request { method: string_field(method, "method")?, params: params.unwrap_or_else(null) }
            }
            BuiltInType::Ping => ClientOp::Ping,
            BuiltInType::Refresh => ClientOp::Refresh { token: string_field(token, "token")? },
        })
    })()
    .map_err(|(code, message)| refuse(code, message, id.clone()))?;
    if matches!(op, ClientOp::Request { .. }) && id.is_none() {
        return Err(refuse(ErrorCode::BadField, "a request needs an \"id\" to answer to".into(), None));
    }
    Ok(ClientFrame { id, op })
}

type FieldError = (ErrorCode, String);

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

fn required(value: Option<Box<RawValue>>, name: &str) -> Result<Box<RawValue>, FieldError> {
    value.ok_or_else(|| (ErrorCode::BadField, format!("missing \"{name}\"")))
}

fn string_field(value: Option<Box<RawValue>>, name: &str) -> Result<String, FieldError> {
    let raw = required(value, name)?;
    serde_json::from_str::<String>(raw.get()).map_err(|_| (ErrorCode::BadField, format!("\"{name}\" must be a string")))
}

fn topic_field(value: Option<Box<RawValue>>) -> Result<String, FieldError> {
    let topic = string_field(value, "topic")?;
    check_topic(&topic).map_err(|why| (ErrorCode::BadTopic, why))?;
    Ok(topic)
}

/// Milliseconds since the Unix epoch, for `ts`.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn decoded(text: &str) -> ClientOp {
        decode(text).unwrap_or_else(|r| panic!("refused {text}: {r:?}")).op
    }

    fn refused(text: &str) -> ErrorCode {
        decode(text).map(|f| f.op).expect_err(text).code
    }

    #[test]
    fn decodes_every_client_type_and_alias() {
        assert!(
            matches!(decoded(r#"{"type":"subscribe","topic":"a"}"#), ClientOp::Subscribe { topic, since: None } if topic == "a")
        );
        assert!(matches!(decoded(r#"{"type":"join","topic":"a"}"#), ClientOp::Subscribe { .. }));
        assert!(matches!(decoded(r#"{"type":"leave","topic":"a"}"#), ClientOp::Unsubscribe { .. }));
        let ClientOp::Publish { topic, data } = decoded(r#"{"type":"message","topic":"t","data":{"x": [1, 2]}}"#)
        else {
            panic!()
        };
        assert_eq!((topic.as_str(), data.get()), ("t", r#"{"x": [1, 2]}"#), "data kept verbatim");
        assert!(matches!(decoded(r#"{"type":"broadcast","data":1}"#), ClientOp::Broadcast { .. }));
        assert!(
            matches!(decoded(r#"{"type":"send","to":"bob","data":"hi"}"#), ClientOp::Send { to, .. } if to == "bob")
        );
        let frame = decode(r#"{"type":"request","id":7,"method":"presence","params":{"topic":"t"}}"#).unwrap();
        assert_eq!(frame.id.unwrap().get(), "7");
        assert!(matches!(decoded(r#"{"type":"ping"}"#), ClientOp::Ping));
        assert!(
            matches!(decoded(r#"{"type":"typing","data":true}"#), ClientOp::Event { name, .. } if name == "typing")
        );
    }

    #[test]
    fn every_built_in_name_decodes_as_built_in() {
        for built_in in BuiltInType::ALL {
            let name = built_in.as_str();
            let frame = json!({"type": name, "id": 1, "topic": "t", "data": 1, "to": "u", "method": "m", "token": "x"});
            let op = decoded(&frame.to_string());
            assert!(!matches!(op, ClientOp::Event { .. }), "{name} decoded as an application event");
            assert_eq!(BuiltInType::from_name(name), Some(*built_in));
        }
        assert_eq!(BuiltInType::from_name("typing"), None);
    }

    #[test]
    fn every_built_in_method_has_its_name() {
        for method in BuiltInMethod::ALL {
            assert_eq!(BuiltInMethod::from_name(method.as_str()), Some(*method));
        }
        assert_eq!(BuiltInMethod::from_name("add"), None);
    }

    #[test]
    fn refuses_bad_frames_with_a_code() {
        assert_eq!(refused("not json"), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"topic":"a"}"#), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"type":5}"#), ErrorCode::BadJson);
        assert_eq!(refused(r#"["subscribe",null,"arr",null,null,null,null]"#), ErrorCode::BadJson);
        assert_eq!(refused(r#"{"type":"subscribe"}"#), ErrorCode::BadField);
        assert_eq!(refused(r#"{"type":"subscribe","topic":3}"#), ErrorCode::BadField);
        assert_eq!(refused(r#"{"type":"subscribe","topic":""}"#), ErrorCode::BadTopic);
        let long = format!(r#"{{"type":"subscribe","topic":"{}"}}"#, "t".repeat(MAX_TOPIC_LEN + 1));
        assert_eq!(refused(&long), ErrorCode::BadTopic);
        assert_eq!(refused(r#"{"type":"publish","topic":"a"}"#), ErrorCode::BadField);
        assert_eq!(refused(r#"{"type":"send","data":1}"#), ErrorCode::BadField);
        assert_eq!(refused(r#"{"type":"request","method":"m"}"#), ErrorCode::BadField, "requests need an id");
        assert_eq!(
            refused(r#"{"type":"subscribe","topic":"a","since":{"offset":-2,"epoch":"e"}}"#),
            ErrorCode::BadSince
        );
        assert_eq!(refused(r#"{"type":"subscribe","topic":"a","since":5}"#), ErrorCode::BadSince);
        let since = Some(Since { offset: 2, epoch: "e".into() });
        let op = decoded(r#"{"type":"subscribe","topic":"a","since":{"offset":2,"epoch":"e"}}"#);
        assert!(matches!(op, ClientOp::Subscribe { since: s, .. } if s == since));
    }

    #[test]
    fn refusals_keep_the_frame_id() {
        let refusal = decode(r#"{"type":"subscribe","id":"abc","topic":""}"#).unwrap_err();
        assert_eq!(refusal.id.unwrap().get(), r#""abc""#);
    }

    #[test]
    fn encodes_server_frames() {
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        let frame: Value = serde_json::from_str(&message(Some("t"), "ann", &data, 5, None)).unwrap();
        assert_eq!(frame, json!({"type":"message","topic":"t","from":"ann","data":{"n":1},"ts":5}));
        let frame: Value = serde_json::from_str(&message(None, "ann", &data, 5, None)).unwrap();
        assert!(frame.get("topic").is_none());
        let id = RawValue::from_string("3".into()).unwrap();
        assert_eq!(ack(&id), r#"{"type":"ack","id":3}"#);
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        assert_eq!(
            error("bad_topic", "why", Some(&id)),
            r#"{"type":"error","code":"bad_topic","message":"why","id":3}"#
        );
        assert_eq!(response_ok(&id, &json!({"ok":true})), r#"{"type":"response","id":3,"result":{"ok":true}}"#);
        let frame: Value = serde_json::from_str(&response_err(&id, "nope", "no")).unwrap();
        assert_eq!(frame, json!({"type":"response","id":3,"error":{"code":"nope","message":"no"}}));
        assert_eq!(welcome(9, "u"), r#"{"type":"welcome","conn":9,"user":"u"}"#);
    }

    #[test]
    fn batches_join_raw_items() {
        let frame: Value = serde_json::from_str(&batch("tick\"er", ["1", r#"{"p":2}"#].into_iter())).unwrap();
        assert_eq!(frame, json!({"type":"batch","topic":"tick\"er","d":[1,{"p":2}]}));
    }
}
