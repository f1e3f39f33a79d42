//! Server frames. Each is serialized once; deliveries share the resulting bytes.

use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerFrame<'a> {
    Welcome {
        conn: u64,
        user: &'a str,
    },
    Message {
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        from: &'a str,
        data: &'a RawValue,
        ts: u64,
        /// Only on topics with history: the message's place in it (see [`Position`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Ack {
        id: &'a RawValue,
        /// Only answering a `subscribe` with `since`: whether every missed message was
        /// replayed, and the position live delivery continues after.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    #[serde(rename = "token_expiring")]
    TokenExpiring {
        expires_at: u64,
    },
    Response {
        id: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody<'a>>,
    },
}

/// Where a message stands in its topic's history: `offset` counts the topic's kept
/// publications from 1, without gaps, within one `epoch` (a name the history got when it
/// started; a new one means the old history is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

fn encode(frame: &ServerFrame<'_>) -> String {
    serde_json::to_string(frame).expect("server frames always serialize")
}

pub fn welcome(conn: u64, user: &str) -> String {
    encode(&ServerFrame::Welcome { conn, user })
}

/// A delivery: `topic` is `None` for broadcasts and direct sends.
/// With `position` on a topic with history.
pub fn message(topic: Option<&str>, from: &str, data: &RawValue, ts: u64, position: Option<Position<'_>>) -> String {
    let (offset, epoch) = position.map(|at| (at.offset, at.epoch)).unzip();
    encode(&ServerFrame::Message { topic, from, data, ts, offset, epoch })
}

pub fn ack(id: &RawValue) -> String {
    encode(&ServerFrame::Ack { id, recovered: None, offset: None, epoch: None })
}

/// The ack of a `subscribe` with `since`: `recovered` tells whether every message after
/// `since` was replayed before it; live delivery continues after `position`.
pub fn recovered_ack(id: &RawValue, recovered: bool, position: Position<'_>) -> String {
    let Position { offset, epoch } = position;
    encode(&ServerFrame::Ack { id, recovered: Some(recovered), offset: Some(offset), epoch: Some(epoch) })
}

/// Tells a client its credential expires at `expires_at` (Unix seconds): send `refresh`.
pub fn token_expiring(expires_at: u64) -> String {
    encode(&ServerFrame::TokenExpiring { expires_at })
}

pub fn pong(id: Option<&RawValue>) -> String {
    encode(&ServerFrame::Pong { id })
}

pub fn error(code: &str, message: &str, id: Option<&RawValue>) -> String {
    encode(&ServerFrame::Error { code, message, id })
}

pub fn response_ok(id: &RawValue, result: &serde_json::Value) -> String {
    encode(&ServerFrame::Response { id, result: Some(result), error: None })
}

pub fn response_err(id: &RawValue, code: &str, message: &str) -> String {
    encode(&ServerFrame::Response { id, result: None, error: Some(ErrorBody { code, message }) })
}

/// `{"type":"batch","topic":..,"d":[..]}` from the raw JSON of each held `data`.
pub fn batch<'a>(topic: &str, items: impl Iterator<Item = &'a str>) -> String {
    let mut frame = String::from(r#"{"type":"batch","topic":"#);
    frame.push_str(&serde_json::to_string(topic).expect("strings serialize"));
    frame.push_str(r#","d":["#);
    for (i, item) in items.enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(item);
    }
    frame.push_str("]}");
    frame
}
