//! What crosses Redis: the channel a delivery goes to (which names its target) and the
//! payload, the already-encoded WebSocket frame behind a small envelope. Free of I/O.
//!
//! Channels (`P` is `--cluster-prefix`): `P:all` for broadcasts, `P:t:TOPIC` for a
//! topic's publications, `P:u:USER` for sends to a user.
//!
//! Envelope, 17 bytes then the frame: a version byte, the sending instance's node id
//! (u64 LE, so an instance skips its own publications), and where a topic publication's
//! payload lies (u32 LE start, u32 LE length). A receiving shard that batches the topic
//! needs the payload alone; it is found inside the frame, where the hub protocol's
//! `message` frame has it (near the end), so it crosses Redis once. Start `u32::MAX`:
//! the frame does not contain it, and the payload comes inline before the frame.

use std::sync::Arc;

use crate::frame::SharedFrame;
use crate::hub::{Target, Want};

const VERSION: u8 = 1;
const HEADER: usize = 17;
const INLINE: u32 = u32::MAX;
/// How far from the frame's end its payload is looked for: the `message` frame has it
/// ~21 bytes from the end (`,"ts":<13 digits>}`), so this only bounds a frame without it.
const SEARCH: usize = 256;

/// The channel names of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    /// `P:`.
    prefix: String,
}

impl Channels {
    pub fn new(prefix: &str) -> Self {
        Channels { prefix: format!("{prefix}:") }
    }

    pub fn everyone(&self) -> String {
        format!("{}all", self.prefix)
    }

    pub fn of_want(&self, want: &Want) -> String {
        match want {
            Want::Topic(topic) => format!("{}t:{topic}", self.prefix),
            Want::User(user) => format!("{}u:{user}", self.prefix),
        }
    }

    /// The channel of a delivery that other instances may hold receivers of; `None` for
    /// the targets only this instance can resolve (a connection id, a filter).
    pub fn of(&self, target: &Target) -> Option<String> {
        match target {
            Target::Topic { topic, .. } => Some(self.of_want(&Want::Topic(topic.clone()))),
            Target::User(user) => Some(self.of_want(&Want::User(user.clone()))),
            Target::Everyone => Some(self.everyone()),
            Target::Conn(_) | Target::Filtered(_) => None,
        }
    }

    /// The target a publication on `channel` is for; a topic's needs its payload.
    pub fn target(&self, channel: &str, data: impl FnOnce() -> Option<Arc<str>>) -> Option<Target> {
        let name = channel.strip_prefix(&self.prefix)?;
        if name == "all" {
            return Some(Target::Everyone);
        }
        if let Some(topic) = name.strip_prefix("t:") {
            return Some(Target::Topic { topic: topic.into(), data: data()? });
        }
        name.strip_prefix("u:").map(|user| Target::User(user.into()))
    }
}

/// A publication as it crosses Redis.
pub(crate) fn encode(node: u64, target: &Target, frame: &SharedFrame) -> Vec<u8> {
    let bytes = frame.as_bytes();
    let data = match target {
        Target::Topic { data, .. } => data.as_bytes(),
        _ => &[],
    };
    let start = locate(bytes, data);
    let inline = if start.is_none() { data.len() } else { 0 };
    let mut out = Vec::with_capacity(HEADER + inline + bytes.len());
    out.push(VERSION);
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&start.map_or(INLINE, |at| at as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    if start.is_none() {
        out.extend_from_slice(data);
    }
    out.extend_from_slice(bytes);
    out
}

/// A publication received from Redis.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub node: u64,
    /// A topic publication's payload alone (empty for other targets).
    pub data: &'a [u8],
    pub frame: &'a [u8],
}

impl Received<'_> {
    pub fn data(&self) -> Option<Arc<str>> {
        std::str::from_utf8(self.data).ok().map(Arc::from)
    }

    pub fn frame(&self) -> SharedFrame {
        SharedFrame::raw(self.frame.to_vec())
    }
}

/// Reads an envelope; `None` if it is not one (another version, or cut short).
pub(crate) fn decode(payload: &[u8]) -> Option<Received<'_>> {
    if payload.len() < HEADER || payload[0] != VERSION {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    let node = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
    let (start, len) = (word(9), word(13) as usize);
    let rest = &payload[HEADER..];
    let (data, frame) = if start == INLINE {
        (rest.get(..len)?, &rest[len..])
    } else {
        (rest.get(start as usize..(start as usize).checked_add(len)?)?, rest)
    };
    Some(Received { node, data, frame })
}

/// Where `data` lies within the last bytes of `frame`.
fn locate(frame: &[u8], data: &[u8]) -> Option<usize> {
    let last = frame.len().checked_sub(data.len())?;
    (last.saturating_sub(SEARCH)..=last).rev().find(|&at| &frame[at..at + data.len()] == data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;
    use serde_json::value::RawValue;

    fn topic(data: &str) -> Target {
        Target::Topic { topic: "room".into(), data: data.into() }
    }

    #[test]
    fn a_message_frame_crosses_with_its_payload_inside_it() {
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        let frame = SharedFrame::text(protocol::message(Some("room"), "ann", &data, 1_733_241_600_000));
        let bytes = encode(7, &topic(data.get()), &frame);
        assert_eq!(bytes.len(), HEADER + frame.len(), "the payload is not sent twice");
        let received = decode(&bytes).unwrap();
        assert_eq!((received.node, received.data, received.frame), (7, data.get().as_bytes(), frame.as_bytes()));
        assert_eq!(received.frame(), frame);
    }

    #[test]
    fn a_payload_the_frame_lacks_comes_inline() {
        let frame = SharedFrame::text("other");
        let bytes = encode(1, &topic("42"), &frame);
        let received = decode(&bytes).unwrap();
        assert_eq!((received.data, received.frame), (&b"42"[..], frame.as_bytes()));
        let bytes = encode(u64::MAX, &Target::Everyone, &frame);
        let everyone = decode(&bytes).unwrap();
        assert_eq!((everyone.node, everyone.data, everyone.frame), (u64::MAX, &b""[..], frame.as_bytes()));
    }

    #[test]
    fn what_is_not_an_envelope_is_refused() {
        let bytes = encode(1, &topic("42"), &SharedFrame::text("x"));
        assert!(decode(&bytes[..HEADER - 1]).is_none());
        assert!(decode(&bytes[..HEADER + 1]).is_none(), "inline payload cut short");
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(decode(&other).is_none());
        let mut past = encode(1, &Target::Everyone, &SharedFrame::text("x"));
        past[9..13].copy_from_slice(&5u32.to_le_bytes());
        past[13..17].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode(&past).is_none(), "a range past the frame");
    }

    #[test]
    fn channels_name_their_targets_and_back() {
        let channels = Channels::new("eu");
        assert_eq!(channels.of(&topic("1")).as_deref(), Some("eu:t:room"));
        assert_eq!(channels.of(&Target::User("ann".into())).as_deref(), Some("eu:u:ann"));
        assert_eq!(channels.of(&Target::Everyone).as_deref(), Some("eu:all"));
        assert_eq!(channels.of(&Target::Conn(crate::hub::ConnId::from_u64(5))), None);
        let data = || Some(Arc::from("1"));
        assert!(matches!(channels.target("eu:t:a:b", data), Some(Target::Topic { topic, .. }) if &*topic == "a:b"));
        assert!(matches!(channels.target("eu:u:ann", data), Some(Target::User(user)) if &*user == "ann"));
        assert!(matches!(channels.target("eu:all", data), Some(Target::Everyone)));
        assert!(channels.target("us:all", data).is_none(), "another cluster's");
        assert!(channels.target("eu:t:room", || None).is_none(), "a topic's payload is not text");
    }
}
