//! What crosses Redis: the payload of a publication, the already-encoded WebSocket frame
//! behind a small envelope that says who it is for where its channel does not
//! ([`channels`](super::channels) names the channels). Free of I/O.
//!
//! Envelope, 18 bytes then the frame: a version byte, the sending instance's random id
//! (u64 LE, so an instance skips its own publications), the kind of addressee (a byte),
//! and where the addressee's data lies (u32 LE start, u32 LE length):
//!
//! - `CHANNEL`: the channel names the target (a topic, a user, everyone). A topic's
//!   payload is its data: a receiving shard that batches the topic needs the payload
//!   alone. It is found inside the frame, where the hub protocol's `message` frame has it
//!   (near the end), so it crosses Redis once; start `u32::MAX`: the frame does not
//!   contain it, and it comes inline, before the frame.
//! - `CONN`: one connection on the instance whose node channel this is; the data (inline)
//!   is its id, u64 LE.
//! - `ANONYMOUS`: a send to a user whose name is the id (u64 LE, inline) of a connection
//!   without a user on that instance.
//! - `FILTER`: the connections a named filter picks, on every instance; the data
//!   (inline) is the name's length (u16 LE), the name, and the argument's JSON.

use std::sync::Arc;

use crate::frame::SharedFrame;
use crate::hub::ConnId;

const VERSION: u8 = 2;
const HEADER: usize = 18;
const INLINE: u32 = u32::MAX;
/// How far from the frame's end its payload is looked for: the `message` frame has it
/// ~21 bytes from the end (`,"ts":<13 digits>}`), so this only bounds a frame without it.
const SEARCH: usize = 256;

const CHANNEL: u8 = 0;
const CONN: u8 = 1;
const ANONYMOUS: u8 = 2;
const FILTER: u8 = 3;

/// Who a publication is for, beyond what its channel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressee<'a> {
    /// What the channel names; a topic publication's payload (empty otherwise).
    Channel { payload: &'a [u8] },
    /// One connection.
    Conn(ConnId),
    /// The connection without a user whose id a user send named.
    Anonymous(ConnId),
    /// A named filter and its argument (JSON text).
    Filter { name: &'a str, arg: &'a str },
}

/// A publication as it crosses Redis, from the instance whose random id is `node`.
pub(crate) fn encode(node: u64, addressee: &Addressee<'_>, frame: &SharedFrame) -> Vec<u8> {
    let bytes = frame.as_bytes();
    let (kind, data): (u8, Vec<u8>) = match *addressee {
        Addressee::Channel { payload } => (CHANNEL, payload.to_vec()),
        Addressee::Conn(id) => (CONN, id.as_u64().to_le_bytes().to_vec()),
        Addressee::Anonymous(id) => (ANONYMOUS, id.as_u64().to_le_bytes().to_vec()),
        Addressee::Filter { name, arg } => {
            // Names are registered by the application; one past 64 KiB is cut rather than
            // mis-framed (it then matches no registration on arrival).
            let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            let mut data = Vec::with_capacity(2 + name.len() + arg.len());
            data.extend_from_slice(&(name.len() as u16).to_le_bytes());
            data.extend_from_slice(name);
            data.extend_from_slice(arg.as_bytes());
            (FILTER, data)
        }
    };
    let start = if kind == CHANNEL { locate(bytes, &data) } else { None };
    let inline = if start.is_none() { data.len() } else { 0 };
    let mut out = Vec::with_capacity(HEADER + inline + bytes.len());
    out.push(VERSION);
    out.extend_from_slice(&node.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&start.map_or(INLINE, |at| at as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    if start.is_none() {
        out.extend_from_slice(&data);
    }
    out.extend_from_slice(bytes);
    out
}

/// A publication received from Redis.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// The sending instance's random id.
    pub node: u64,
    pub addressee: Addressee<'a>,
    pub frame: &'a [u8],
}

impl Received<'_> {
    /// A topic publication's payload as text (`None` if it is not UTF-8).
    pub fn payload(&self) -> Option<Arc<str>> {
        match self.addressee {
            Addressee::Channel { payload } => std::str::from_utf8(payload).ok().map(Arc::from),
            _ => None,
        }
    }

    pub fn frame(&self) -> SharedFrame {
        SharedFrame::raw(self.frame.to_vec())
    }
}

/// Reads an envelope; `None` if it is not one (another version, an unknown kind, or cut
/// short).
pub(crate) fn decode(payload: &[u8]) -> Option<Received<'_>> {
    if payload.len() < HEADER || payload[0] != VERSION {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    let node = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
    let (kind, start, len) = (payload[9], word(10), word(14) as usize);
    let rest = &payload[HEADER..];
    let (data, frame) = if start == INLINE {
        (rest.get(..len)?, &rest[len..])
    } else {
        (rest.get(start as usize..(start as usize).checked_add(len)?)?, rest)
    };
    let id = || Some(ConnId::from_u64(u64::from_le_bytes(data.try_into().ok()?)));
    let addressee = match kind {
        CHANNEL => Addressee::Channel { payload: data },
        CONN => Addressee::Conn(id()?),
        ANONYMOUS => Addressee::Anonymous(id()?),
        FILTER => {
            let name_len = u16::from_le_bytes(data.get(..2)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(data.get(2..2 + name_len)?).ok()?;
            let arg = std::str::from_utf8(&data[2 + name_len..]).ok()?;
            Addressee::Filter { name, arg }
        }
        _ => return None,
    };
    Some(Received { node, addressee, frame })
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

    fn topic(payload: &str) -> Addressee<'_> {
        Addressee::Channel { payload: payload.as_bytes() }
    }

    #[test]
    fn a_message_frame_crosses_with_its_payload_inside_it() {
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        let frame = SharedFrame::text(protocol::message(Some("room"), "ann", &data, 1_733_241_600_000, None));
        let bytes = encode(7, &topic(data.get()), &frame);
        assert_eq!(bytes.len(), HEADER + frame.len(), "the payload is not sent twice");
        let received = decode(&bytes).unwrap();
        assert_eq!((received.node, received.addressee, received.frame), (7, topic(data.get()), frame.as_bytes()));
        assert_eq!(received.frame(), frame);
        assert_eq!(received.payload().as_deref(), Some(data.get()));
    }

    #[test]
    fn a_payload_the_frame_lacks_comes_inline() {
        let frame = SharedFrame::text("other");
        let bytes = encode(1, &topic("42"), &frame);
        let received = decode(&bytes).unwrap();
        assert_eq!((received.addressee, received.frame), (topic("42"), frame.as_bytes()));
        let bytes = encode(u64::MAX, &topic(""), &frame);
        let everyone = decode(&bytes).unwrap();
        assert_eq!((everyone.node, everyone.addressee, everyone.frame), (u64::MAX, topic(""), frame.as_bytes()));
    }

    #[test]
    fn connection_ids_and_named_filters_cross_inline_before_the_frame() {
        // "ann" also ends the frame: only a topic's payload is looked for there.
        let frame = SharedFrame::text(r#"{"to":"ann"}"#);
        let id = ConnId::new(1023, 63, 5, 9);
        for addressee in [
            Addressee::Conn(id),
            Addressee::Anonymous(id),
            Addressee::Filter { name: "lang", arg: r#""fr""# },
            Addressee::Filter { name: "", arg: "" },
        ] {
            let bytes = encode(3, &addressee, &frame);
            let received = decode(&bytes).unwrap();
            assert_eq!((received.node, received.addressee, received.frame), (3, addressee, frame.as_bytes()));
            assert_eq!(received.payload(), None);
        }
        let bytes = encode(3, &Addressee::Filter { name: "lang", arg: "1" }, &frame);
        assert_eq!(bytes.len(), HEADER + 2 + 4 + 1 + frame.len());
    }

    #[test]
    fn what_is_not_an_envelope_is_refused() {
        let bytes = encode(1, &topic("42"), &SharedFrame::text("x"));
        assert!(decode(&bytes[..HEADER - 1]).is_none());
        assert!(decode(&bytes[..HEADER + 1]).is_none(), "inline payload cut short");
        let mut other = bytes.clone();
        other[0] = 1;
        assert!(decode(&other).is_none(), "the version before named no addressee");
        let mut unknown = bytes.clone();
        unknown[9] = 9;
        assert!(decode(&unknown).is_none(), "an unknown kind");
        let mut past = encode(1, &topic(""), &SharedFrame::text("x"));
        past[10..14].copy_from_slice(&5u32.to_le_bytes());
        past[14..18].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode(&past).is_none(), "a range past the frame");
        let mut short_id = encode(1, &Addressee::Conn(ConnId::from_u64(5)), &SharedFrame::text("x"));
        short_id[14..18].copy_from_slice(&7u32.to_le_bytes());
        assert!(decode(&short_id).is_none(), "an id of 7 bytes");
        let mut long_name = encode(1, &Addressee::Filter { name: "ab", arg: "1" }, &SharedFrame::text("x"));
        long_name[HEADER..HEADER + 2].copy_from_slice(&9u16.to_le_bytes());
        assert!(decode(&long_name).is_none(), "a name past its data");
    }
}
