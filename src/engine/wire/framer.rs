//! The shard's inbound buffer and the framer over it: one connection's reads at a time,
//! whole frames handed to tungstenite one by one.

use std::io::{self, Cursor};

use tungstenite::protocol::frame::coding::{Control, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::Transport;

/// What the framer learned from a frame header before handing the frame to tungstenite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The frame finishes its message (FIN bit).
    pub fin: bool,
    /// A data or continuation frame (as opposed to ping/pong/close).
    pub data: bool,
    /// A close frame.
    pub close: bool,
}

/// Why the framer refused the bytes; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header claims more payload than `--max-message-size`: close 1009.
    TooBig,
    /// The header cannot be parsed: close 1002.
    Malformed,
}

/// Smallest free space offered to one `recv()`.
const RECV_CHUNK: usize = 64 * 1024;
/// After a burst that needed a larger buffer (a big frame), give the memory back.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// A shard's read buffer. One connection uses it at a time, between [`Inbound::load`]
/// and [`Inbound::stash`] (or [`Inbound::discard`]); tungstenite reads the exposed frame
/// through [`Inbound::read_window`].
#[derive(Default)]
pub struct Inbound {
    /// Fully initialised storage; only `start..filled` holds unread bytes.
    buf: Vec<u8>,
    /// First byte not yet handed to tungstenite.
    start: usize,
    /// End of the frame tungstenite may read now (`start..window_end`).
    window_end: usize,
    /// End of the received bytes.
    filled: usize,
}

impl Inbound {
    /// Hands tungstenite bytes of the exposed frame; `WouldBlock` once it has them all.
    pub fn read_window(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.window_end - self.start;
        if available == 0 {
            // The frame is fully handed over; tungstenite asks again only when it wants
            // the next one, which it gets on the framer's next turn.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }

    fn make_room(&mut self) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        } else if self.buf.len() - self.filled < RECV_CHUNK && self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        self.window_end = self.start;
        if self.buf.len() - self.filled < RECV_CHUNK {
            let wanted = (self.filled + RECV_CHUNK).max(self.buf.len() * 2);
            self.buf.resize(wanted, 0);
        }
    }

    /// Exposes the next whole frame to [`Inbound::read_window`], or says more bytes are
    /// needed.
    pub fn next_frame(&mut self, max_payload: usize) -> Result<Option<FrameInfo>, FrameError> {
        debug_assert_eq!(self.start, self.window_end, "previous frame not consumed");
        let unread = &self.buf[self.start..self.filled];
        let mut cursor = Cursor::new(unread);
        let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(FrameError::Malformed),
        };
        if payload_len > max_payload as u64 {
            return Err(FrameError::TooBig);
        }
        let frame_len = cursor.position() as usize + payload_len as usize;
        if unread.len() < frame_len {
            return Ok(None);
        }
        self.window_end = self.start + frame_len;
        Ok(Some(FrameInfo {
            fin: header.is_final,
            data: matches!(header.opcode, OpCode::Data(_)),
            close: header.opcode == OpCode::Control(Control::Close),
        }))
    }

    fn reset(&mut self) {
        self.start = 0;
        self.window_end = 0;
        self.filled = 0;
        if self.buf.len() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
    }
}

impl Inbound {
    /// Starts a read burst for one connection, taking over the bytes it had stashed.
    pub fn load(&mut self, stash: &mut Vec<u8>) {
        self.reset();
        if !stash.is_empty() {
            self.make_room();
            let len = stash.len();
            if self.buf.len() < len {
                self.buf.resize(len + RECV_CHUNK, 0);
            }
            self.buf[..len].copy_from_slice(stash);
            self.filled = len;
            *stash = Vec::new();
        }
    }

    /// One `recv()` into the buffer (decrypted on a TLS wire); `Ok(0)` is end of stream.
    pub fn recv(&mut self, transport: &mut impl Transport) -> io::Result<usize> {
        self.make_room();
        let filled = self.filled;
        let n = transport.recv(&mut self.buf[filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// Takes back the frame `next_frame` exposed, unread: it stays for a later pass.
    pub fn defer_frame(&mut self) {
        self.window_end = self.start;
    }

    /// True when tungstenite has read every byte of the exposed frame.
    pub fn frame_consumed(&self) -> bool {
        self.start == self.window_end
    }

    /// Ends the burst, keeping the bytes of an unfinished frame for the next one.
    pub fn stash(&mut self, stash: &mut Vec<u8>) {
        if self.start < self.filled {
            *stash = self.buf[self.start..self.filled].to_vec();
        }
        self.reset();
    }

    /// Ends the burst and forgets whatever was read (the connection is failing).
    pub fn discard(&mut self) {
        self.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        frame
    }

    fn fill(bytes: &[u8]) -> Inbound {
        let mut inbound = Inbound::default();
        let mut stash = bytes.to_vec();
        inbound.load(&mut stash);
        assert!(stash.is_empty(), "load takes the stash over");
        inbound
    }

    fn drain_window(inbound: &mut Inbound) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 3]; // tiny reads, like tungstenite's
        loop {
            match inbound.read_window(&mut chunk) {
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    return out;
                }
            }
        }
    }

    #[test]
    fn exposes_exactly_one_frame_at_a_time() {
        let first = masked_frame(0x81, b"hello");
        let second = masked_frame(0x01, b"wor"); // text, not final
        let mut bytes = first.clone();
        bytes.extend(&second);
        let mut inbound = fill(&bytes);

        let info = inbound.next_frame(1024).unwrap().unwrap();
        assert_eq!(info, FrameInfo { fin: true, data: true, close: false });
        assert_eq!(drain_window(&mut inbound), first);
        assert!(inbound.frame_consumed());

        let info = inbound.next_frame(1024).unwrap().unwrap();
        assert_eq!(info, FrameInfo { fin: false, data: true, close: false });
        assert_eq!(drain_window(&mut inbound), second);
        assert_eq!(inbound.next_frame(1024), Ok(None));
        inbound.discard();
    }

    #[test]
    fn keeps_a_partial_frame_in_the_stash() {
        let frame = masked_frame(0x82, b"0123456789");
        let mut inbound = fill(&frame[..7]);
        assert_eq!(inbound.next_frame(1024), Ok(None));
        let mut stash = Vec::new();
        inbound.stash(&mut stash);
        assert_eq!(stash, &frame[..7]);
        assert_eq!(stash.capacity(), 7, "stash holds what arrived, nothing more");

        stash.extend_from_slice(&frame[7..]);
        inbound.load(&mut stash);
        assert!(inbound.next_frame(1024).unwrap().is_some());
        assert_eq!(drain_window(&mut inbound), frame);
        inbound.discard();
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        // 127 => 64-bit length: claims 16 MiB, carries nothing yet.
        let header = [0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4];
        let mut inbound = fill(&header);
        assert_eq!(inbound.next_frame(64 * 1024), Err(FrameError::TooBig));
        inbound.discard();
    }

    #[test]
    fn control_frames_are_not_data() {
        let mut inbound = fill(&masked_frame(0x89, b"ping"));
        let info = inbound.next_frame(1024).unwrap().unwrap();
        assert!(!info.data && info.fin);
        inbound.discard();
    }
}
