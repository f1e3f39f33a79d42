//! The bytes under tungstenite: the stream type every open connection's `WebSocket`
//! wraps, and the per-shard inbound buffer that feeds it.
//!
//! Sits between the shard's readiness events and the tungstenite protocol state. An idle
//! connection must own no heap memory, yet tungstenite keeps whatever read buffer it once
//! allocated. So a connection's `WebSocket` is built with a zero-sized read buffer and
//! reads from [`Wire`], which serves bytes out of one buffer per shard thread
//! ([`inbound`]), filled by a single `recv()` per readiness pass. A small framer here finds
//! frame boundaries first and exposes exactly one whole frame at a time, which buys three
//! things:
//! - tungstenite never holds a partial frame, so after a burst the connection is at a clean
//!   boundary and its `WebSocket` can be rebuilt to free tungstenite's buffers;
//! - an oversized frame is refused from its header, before any byte of it is buffered
//!   (tungstenite would reserve the claimed length up front);
//! - the bytes of a frame that straddles two reads wait in a per-connection stash sized to
//!   what has arrived, never to what the header claims.
//!
//! # TLS
//! On a `wss://` server the wire also carries the connection's [`TlsSession`] (boxed, so a
//! plain connection's slab entry grows by one pointer only). Everything above the wire
//! sees plaintext: [`Wire::recv`] (the handshake's reads and [`inbound::recv`]) returns
//! decrypted bytes, writes are encrypted on their way out; see the `tls` module.

use std::cell::RefCell;
use std::io::{self, Cursor, IoSlice, Read, Write};

use std::net::Shutdown;

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Control, OpCode};
use tungstenite::protocol::frame::FrameHeader;

mod tls;

pub use tls::TlsSession;

/// The stream inside every `WebSocket`: writes go to the socket (through TLS when on),
/// reads come from the current shard's [`inbound`] window (see the module docs).
pub struct Wire {
    /// The accepted socket; it lives exactly as long as the connection.
    pub tcp: TcpStream,
    /// The TLS session on a `wss://` server; boxed so plain connections pay one pointer
    /// for it.
    tls: Option<Box<TlsSession>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").field("tcp", &self.tcp).field("tls", &self.tls.is_some()).finish()
    }
}

impl Wire {
    /// A connection's wire; with a TLS session, one that starts with the TLS handshake
    /// (the peer speaks first).
    pub fn new(tcp: TcpStream, tls: Option<TlsSession>) -> Self {
        Wire { tcp, tls: tls.map(Box::new) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads what the peer sent, decrypted on a TLS wire; `Ok(0)` is end of stream.
    /// `WouldBlock` means nothing is left: not in the socket, not in the TLS session.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.recv(&mut self.tcp, buf),
            None => self.tcp.read(buf),
        }
    }

    /// TLS records wait for the socket (never on a plain wire).
    pub fn output_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.output_pending())
    }

    /// The TLS handshake is not complete: written plaintext waits until it is.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.handshaking())
    }

    /// Ends our sending side: TLS close_notify (best effort), then FIN.
    pub fn shutdown_write(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.close(&mut self.tcp);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    /// The connection is idle with nothing to write: a chance to give memory back.
    pub fn release_idle(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.release_idle();
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // The connection is going: tell a TLS peer it was not cut off (best effort; the
        // socket is non-blocking and about to close).
        if let Some(tls) = &mut self.tls {
            tls.close(&mut self.tcp);
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        INBOUND.with(|inbound| inbound.borrow_mut().read_window(buf))
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.send(&mut self.tcp, &[IoSlice::new(buf)]),
            None => (&self.tcp).write(buf),
        }
    }

    /// On a TLS wire, `WouldBlock` while records are still queued: bytes tungstenite
    /// considers written have not all reached the socket.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.flush(&mut self.tcp),
            None => Ok(()),
        }
    }
}

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

thread_local! {
    static INBOUND: RefCell<Inbound> = RefCell::new(Inbound::default());
}

/// The shard thread's read buffer. One connection uses it at a time, between
/// [`inbound::load`] and [`inbound::stash`] (or [`inbound::discard`]).
#[derive(Default)]
struct Inbound {
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
    fn read_window(&mut self, out: &mut [u8]) -> io::Result<usize> {
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

    fn next_frame(&mut self, max_payload: usize) -> Result<Option<FrameInfo>, FrameError> {
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

/// Operations on the current shard thread's inbound buffer.
pub mod inbound {
    use super::*;

    /// Starts a read burst for one connection, taking over the bytes it had stashed.
    pub fn load(stash: &mut Vec<u8>) {
        INBOUND.with(|cell| {
            let mut inbound = cell.borrow_mut();
            inbound.reset();
            if !stash.is_empty() {
                inbound.make_room();
                let len = stash.len();
                if inbound.buf.len() < len {
                    inbound.buf.resize(len + RECV_CHUNK, 0);
                }
                inbound.buf[..len].copy_from_slice(stash);
                inbound.filled = len;
                *stash = Vec::new();
            }
        })
    }

    /// One `recv()` into the buffer (decrypted on a TLS wire); `Ok(0)` is end of stream.
    pub fn recv(wire: &mut Wire) -> io::Result<usize> {
        INBOUND.with(|cell| {
            let mut inbound = cell.borrow_mut();
            inbound.make_room();
            let filled = inbound.filled;
            let n = wire.recv(&mut inbound.buf[filled..])?;
            inbound.filled += n;
            Ok(n)
        })
    }

    /// Exposes the next whole frame to [`Wire::read`], or says more bytes are needed.
    pub fn next_frame(max_payload: usize) -> Result<Option<FrameInfo>, FrameError> {
        INBOUND.with(|cell| cell.borrow_mut().next_frame(max_payload))
    }

    /// Takes back the frame `next_frame` exposed, unread: it stays for a later pass.
    pub fn defer_frame() {
        INBOUND.with(|cell| {
            let mut inbound = cell.borrow_mut();
            inbound.window_end = inbound.start;
        })
    }

    /// True when tungstenite has read every byte of the exposed frame.
    pub fn frame_consumed() -> bool {
        INBOUND.with(|cell| {
            let inbound = cell.borrow();
            inbound.start == inbound.window_end
        })
    }

    /// Ends the burst, keeping the bytes of an unfinished frame for the next one.
    pub fn stash(stash: &mut Vec<u8>) {
        INBOUND.with(|cell| {
            let mut inbound = cell.borrow_mut();
            if inbound.start < inbound.filled {
                *stash = inbound.buf[inbound.start..inbound.filled].to_vec();
            }
            inbound.reset();
        })
    }

    /// Ends the burst and forgets whatever was read (the connection is failing).
    pub fn discard() {
        INBOUND.with(|cell| cell.borrow_mut().reset())
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

    fn fill(bytes: &[u8]) {
        let mut stash = bytes.to_vec();
        inbound::load(&mut stash);
        assert!(stash.is_empty(), "load takes the stash over");
    }

    fn drain_window() -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 3]; // tiny reads, like tungstenite's
        loop {
            match INBOUND.with(|cell| cell.borrow_mut().read_window(&mut chunk)) {
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
        fill(&bytes);

        let info = inbound::next_frame(1024).unwrap().unwrap();
        assert_eq!(info, FrameInfo { fin: true, data: true, close: false });
        assert_eq!(drain_window(), first);
        assert!(inbound::frame_consumed());

        let info = inbound::next_frame(1024).unwrap().unwrap();
        assert_eq!(info, FrameInfo { fin: false, data: true, close: false });
        assert_eq!(drain_window(), second);
        assert_eq!(inbound::next_frame(1024), Ok(None));
        inbound::discard();
    }

    #[test]
    fn keeps_a_partial_frame_in_the_stash() {
        let frame = masked_frame(0x82, b"0123456789");
        fill(&frame[..7]);
        assert_eq!(inbound::next_frame(1024), Ok(None));
        let mut stash = Vec::new();
        inbound::stash(&mut stash);
        assert_eq!(stash, &frame[..7]);
        assert_eq!(stash.capacity(), 7, "stash holds what arrived, nothing more");

        stash.extend_from_slice(&frame[7..]);
        inbound::load(&mut stash);
        assert!(inbound::next_frame(1024).unwrap().is_some());
        assert_eq!(drain_window(), frame);
        inbound::discard();
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        // 127 => 64-bit length: claims 16 MiB, carries nothing yet.
        let header = [0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4];
        fill(&header);
        assert_eq!(inbound::next_frame(64 * 1024), Err(FrameError::TooBig));
        inbound::discard();
    }

    #[test]
    fn control_frames_are_not_data() {
        fill(&masked_frame(0x89, b"ping"));
        let info = inbound::next_frame(1024).unwrap().unwrap();
        assert!(!info.data && info.fin);
        inbound::discard();
    }
}
