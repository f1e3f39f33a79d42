//! Server frames encoded once. A server's frames are unmasked, so a message for many
//! connections has the same header and payload bytes for every receiver: it is framed
//! once, where it enters the hub, and every receiver's outbound queue holds a reference
//! to the same buffer. Cloning a [`SharedFrame`] bumps a reference count.
//!
//! A frame is one thin pointer (8 bytes) because a queue entry is one: under a burst,
//! 19,000 receivers each hold several, and `Bytes` (32 bytes) made the queues the larger
//! part of the server's peak memory.

use std::sync::{Arc, LazyLock};

use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Bytes, Message};

/// One WebSocket frame (header and payload) as it goes on the wire, shared by every
/// connection that sends it; freed when the last one has written it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame(Arc<Vec<u8>>);

/// An empty server ping, made once: no allocation per ping.
static PING: LazyLock<SharedFrame> = LazyLock::new(|| SharedFrame::raw(vec![0x89, 0x00]));

impl SharedFrame {
    /// Frames `message` (text and binary as single final frames).
    pub fn encode(message: Message) -> Self {
        let frame = match message {
            Message::Text(text) => Frame::message(Bytes::from(text), OpCode::Data(OpData::Text), true),
            Message::Binary(data) => Frame::message(data, OpCode::Data(OpData::Binary), true),
            Message::Ping(data) if data.is_empty() => return Self::ping(),
            Message::Ping(data) => Frame::ping(data),
            Message::Pong(data) => Frame::pong(data),
            Message::Close(close) => Frame::close(close),
            Message::Frame(frame) => frame,
        };
        let mut bytes = Vec::with_capacity(frame.len());
        frame.format(&mut bytes).expect("writing to a Vec cannot fail");
        SharedFrame(Arc::new(bytes))
    }

    /// A text frame.
    pub fn text(text: impl Into<String>) -> Self {
        Self::encode(Message::text(text.into()))
    }

    /// An empty ping.
    pub fn ping() -> Self {
        PING.clone()
    }

    /// Bytes that are already a whole frame, or any bytes a connection must send as they
    /// are (an HTTP reply before the upgrade).
    pub(crate) fn raw(bytes: Vec<u8>) -> Self {
        SharedFrame(Arc::new(bytes))
    }

    /// The frame's bytes on the wire, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The payload as text (for tests: frames are never decoded on the way out).
    #[cfg(test)]
    pub fn to_text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0[self.0.len() - self.payload_len()..])
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes of the message the frame carries, without its header (what `bytes_out`
    /// counts).
    pub fn payload_len(&self) -> usize {
        let header = match self.0.get(1).map(|b| b & 0x7F) {
            None => return 0,
            Some(len @ 0..=125) => return len as usize,
            Some(126) => 4,
            Some(_) => 10,
        };
        self.0.len().saturating_sub(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_text_once_with_the_right_header() {
        let frame = SharedFrame::text("hello");
        assert_eq!(frame.as_bytes(), b"\x81\x05hello");
        assert_eq!(frame.payload_len(), 5);
        let copy = frame.clone();
        assert_eq!(copy.as_bytes().as_ptr(), frame.as_bytes().as_ptr(), "clones share the bytes");
    }

    #[test]
    fn longer_payloads_take_longer_headers() {
        let medium = SharedFrame::encode(Message::binary(vec![7u8; 300]));
        assert_eq!(&medium.as_bytes()[..4], &[0x82, 126, 1, 44]);
        assert_eq!(medium.payload_len(), 300);
        let large = SharedFrame::encode(Message::binary(vec![7u8; 70_000]));
        assert_eq!(large.as_bytes()[1], 127);
        assert_eq!(large.payload_len(), 70_000);
        assert_eq!(large.len(), 70_010);
    }

    #[test]
    fn an_empty_ping_is_static() {
        assert_eq!(SharedFrame::encode(Message::Ping(Bytes::new())).as_bytes(), &[0x89, 0]);
    }
}
