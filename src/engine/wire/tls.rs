//! A connection's TLS session on a `wss://` server: plaintext in and out, records on the
//! socket. Driven by the same readiness events as a plain socket, with no phase of its own:
//! - a read first hands out plaintext rustls already holds, then pulls records from the
//!   socket (`read_tls`), processes them (`process_new_packets`) and sends whatever the
//!   handshake answers. It reports `WouldBlock` only when rustls holds no plaintext *and*
//!   the socket is drained, so the edge-triggered contract of a plain socket still holds:
//!   read until `WouldBlock`, or come back (`ReadAgain`).
//! - a write hands plaintext to rustls, then writes records until the socket would block.
//!   Records still queued make [`TlsSession::flush`] report `WouldBlock`, and
//!   [`TlsSession::output_pending`] lets the connection ask for a flush (and WRITABLE)
//!   after a read produced output (handshake flights, session tickets, alerts).
//! - rustls keeps its own per-connection buffers: a read buffer (4 KiB while idle, kept)
//!   and output queues that are freed chunk by chunk once written. So an idle TLS
//!   connection does own heap memory, unlike a plain one; `scripts/mem-per-conn.sh
//!   --tls` measures it.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// One connection's rustls state; boxed in the wire (it is over a kilobyte), so plain
/// connections pay one pointer for it.
pub struct TlsSession {
    conn: ServerConnection,
}

impl TlsSession {
    /// A session that starts with the TLS handshake (the peer speaks first).
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession { conn: ServerConnection::new(config.clone())? })
    }

    /// Reads decrypted bytes; `Ok(0)` is the peer's close_notify or the socket's end.
    /// `WouldBlock` means nothing is left: not in the socket, not in rustls.
    pub fn recv<S: Read + Write>(&mut self, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Plaintext rustls already holds comes first: no readiness edge announces it.
            match self.conn.reader().read(buf) {
                // Ok(0): the peer's close_notify, a clean end of stream.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the socket ended without close_notify.
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(socket) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let processed = self.conn.process_new_packets();
                    // The handshake's answer, or the alert for a bad record; what the
                    // socket does not take now is found by `output_pending`.
                    let sent = self.push(socket);
                    if let Err(e) = processed {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    sent?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypts as much of `bufs` as rustls takes and sends what the socket takes; the
    /// count is of plaintext bytes accepted. `WouldBlock` when nothing was accepted.
    pub fn send<S: Read + Write>(&mut self, socket: &mut S, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Make room in rustls's queue first, then queue, then send what we can.
        self.push(socket)?;
        let n = self.conn.writer().write_vectored(bufs)?;
        self.push(socket)?;
        if n == 0 && bufs.iter().any(|buf| !buf.is_empty()) {
            // rustls's queue is full and the socket takes nothing: wait for WRITABLE.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// `WouldBlock` while records are still queued: plaintext accepted by `send` has not
    /// all reached the socket.
    pub fn flush<S: Read + Write>(&mut self, socket: &mut S) -> io::Result<()> {
        match self.push(socket)? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Records wait in rustls for the socket.
    pub fn output_pending(&self) -> bool {
        self.conn.wants_write()
    }

    /// The handshake is not complete: plaintext waits in rustls until it is.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Tells the peer we are done sending (best effort).
    pub fn close<S: Read + Write>(&mut self, socket: &mut S) {
        self.conn.send_close_notify();
        let _ = self.push(socket);
    }

    /// Called while the connection is idle: a chance to give memory back.
    pub fn release_idle(&mut self) {}

    /// Writes queued records until rustls has none or the socket would block;
    /// `Ok(false)`: some are still queued.
    fn push<S: Read + Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
