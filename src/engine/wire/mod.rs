//! The bytes under a connection: its socket (through TLS on a `wss://` server) and the
//! shard's inbound buffer that its reads land in.
//!
//! Sits between the shard's readiness events and a connection's protocol state. The
//! connection core never touches a socket directly: it goes through [`Transport`], which
//! [`Wire`] implements over a mio socket and the core's tests implement in memory.
//! - [`Inbound`] is one read buffer per shard, filled by `recv()` for one connection at a
//!   time. Its framer finds frame boundaries first and exposes exactly one whole frame at
//!   a time to tungstenite, which buys three things:
//!   - tungstenite never holds a partial frame, so after a burst the connection is at a
//!     clean boundary and its protocol state can be dropped to free its buffers;
//!   - an oversized frame is refused from its header, before any byte of it is buffered
//!     (tungstenite would reserve the claimed length up front);
//!   - the bytes of a frame that straddles two reads wait in a per-connection stash sized
//!     to what has arrived, never to what the header claims.
//! - Output leaves through [`Transport::send`], one vectored write of the connection's
//!   queued frames.
//! - TLS ([`TlsSession`]) sits inside the wire: everything above it sees plaintext.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

mod framer;
mod tls;

pub use framer::{FrameError, Inbound};
pub use tls::TlsSession;

/// What a connection needs from the bytes underneath it. Plaintext both ways; `WouldBlock`
/// as on a non-blocking socket.
pub trait Transport {
    /// Reads what the peer sent; `Ok(0)` is end of stream. `WouldBlock` means nothing is
    /// left (on TLS: not in the socket, not in the session).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes from `bufs` in order; returns how many bytes were taken.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `WouldBlock` while bytes `send` took have not all reached the socket (TLS records).
    fn flush(&mut self) -> io::Result<()>;
    /// Output waits inside the transport for the socket (never on a plain one).
    fn output_pending(&self) -> bool;
    /// A TLS handshake is under way: sent plaintext waits until it is done.
    fn handshaking(&self) -> bool;
    fn is_tls(&self) -> bool;
    /// Ends our sending side (TLS close_notify, then FIN); best effort.
    fn shutdown_write(&mut self);
    /// Shuts both directions at once: a connection that cannot be served.
    fn shutdown_both(&mut self);
    /// The connection is idle: a chance to give memory back.
    fn release_idle(&mut self);
}

/// An accepted socket, and its TLS session on a `wss://` server.
pub struct Wire {
    /// The accepted socket; it lives exactly as long as the connection.
    pub tcp: TcpStream,
    /// Boxed, so plain connections pay one pointer for it.
    tls: Option<Box<TlsSession>>,
}

impl Wire {
    pub fn new(tcp: TcpStream, tls: Option<TlsSession>) -> Self {
        Wire { tcp, tls: tls.map(Box::new) }
    }
}

impl Transport for Wire {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.recv(&mut self.tcp, buf),
            None => io::Read::read(&mut self.tcp, buf),
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.send(&mut self.tcp, bufs),
            None => self.tcp.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.flush(&mut self.tcp),
            None => Ok(()),
        }
    }

    fn output_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.output_pending())
    }

    fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.handshaking())
    }

    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn shutdown_write(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.close(&mut self.tcp);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    fn shutdown_both(&mut self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    fn release_idle(&mut self) {
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
