//! A connection's TLS session on a `wss://` server: plaintext in and out, records on the
//! socket. Driven by the same readiness events as a plain socket, with no phase of its own:
//! - a read first hands out plaintext already decrypted, then reads records from the
//!   socket, lets rustls process them and sends whatever the handshake answers. It reports
//!   `WouldBlock` only when no plaintext is held *and* the socket is drained, so the
//!   edge-triggered contract of a plain socket still holds: read until `WouldBlock`, or
//!   come back (`ReadAgain`).
//! - a write encrypts plaintext into records and writes them until the socket would
//!   block. Records still queued make [`TlsSession::flush`] report `WouldBlock`, and
//!   [`TlsSession::output_pending`] lets the connection ask for a flush (and WRITABLE)
//!   after a read produced output (handshake flights, session tickets, alerts).
//!
//! # Memory
//! rustls's buffered `ServerConnection` keeps a 4 KiB read buffer for life (it shrinks it
//! back to 4 KiB, never to zero): half of what an idle `wss://` connection cost. So this
//! uses rustls's *unbuffered* connection, where the caller owns the bytes:
//! - records are read into one buffer per shard thread (`buffers::Scratch`); a connection keeps
//!   only the unconsumed tail between reads (the start of a record, or of a handshake
//!   message spanning records), sized to what arrived;
//! - records are encrypted into another per-thread buffer and written from there; only
//!   what the socket does not take is copied into the connection's output queue.
//!
//! So between bursts a connection owns no buffer of its own, and [`TlsSession::release_idle`]
//! gives back the capacity a busy spell left. What stays is rustls's session state, which
//! no API shrinks (measured per idle TLS 1.3 connection, heap block sizes): the connection
//! struct (~1,090 B, in our box), two AEAD keys (560 B each; ring sizes them for AES-GCM
//! whatever the suite, so ChaCha20 saves nothing), the handshake deframer's span list (640
//! B, kept from the start), the traffic state with its key schedule (224 B), two queue
//! headers (96 B each) and the ALPN name. `scripts/mem-per-conn.sh --tls 19000`: 8,029 B
//! per idle connection with the buffered connection, 3,854 B with this.
//!
//! The cost: rustls's unbuffered API copies each sealed record into our buffer once more
//! (instruction counts per send and per recv are otherwise within 3% of the buffered one's).

use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::sync::Arc;

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, WriteTraffic};
use rustls::ServerConfig;

mod buffers;

use buffers::{encode, encrypt_slices, gather, queue_close_notify, with_scratch, App, OutBuf, Queues};

/// The largest record on the wire: 16 KiB of payload plus header and the expansion TLS 1.2
/// allows.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;
/// Unconsumed input a connection may hold: a handshake message of up to 64 KiB (rustls's
/// own limit) arriving in records, plus one record. No honest peer comes near it.
const MAX_INPUT: usize = 0xffff + MAX_RECORD;
/// Plaintext encrypted per `send`: four full records.
const SEND_CHUNK: usize = 64 * 1024;
/// Records a connection may hold beyond what its socket took (rustls's own default for
/// its buffered connection): past it `send` takes nothing until the socket drains.
const OUTPUT_LIMIT: usize = 64 * 1024;

type Traffic<'c> = WriteTraffic<'c, ServerConnectionData>;

/// One connection's TLS state; boxed in the wire (it is about a kilobyte), so plain
/// connections pay one pointer for it.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    q: Queues,
}

impl TlsSession {
    /// A session that starts with the TLS handshake (the peer speaks first).
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession { conn: UnbufferedServerConnection::new(config.clone())?, q: Queues::default() })
    }

    /// Reads decrypted bytes; `Ok(0)` is the peer's close_notify or the socket's end.
    /// `WouldBlock` means nothing is left: not in the socket, not in the session.
    pub fn recv<S: Read + Write>(&mut self, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(n) = self.q.take_plain_in(buf) {
            return Ok(n);
        }
        if self.q.read_closed {
            return Ok(0);
        }
        with_scratch(|scratch| {
            if scratch.input.len() < MAX_INPUT {
                scratch.input.resize(MAX_INPUT, 0);
            }
            let stashed = self.q.held.as_ref().map_or(&[][..], |held| &held.input);
            let mut filled = stashed.len();
            scratch.input[..filled].copy_from_slice(stashed);
            let result = self.recv_records(socket, buf, &mut scratch.input, &mut filled, &mut scratch.out);
            // Only an incomplete record (or handshake message) is left: keep its bytes.
            match (&mut self.q.held, filled) {
                (None, 0) => {}
                (held, _) => {
                    let held = held.get_or_insert_with(Default::default);
                    held.input.clear();
                    held.input.extend_from_slice(&scratch.input[..filled]);
                }
            }
            result
        })
    }

    fn recv_records<S: Read + Write>(
        &mut self,
        socket: &mut S,
        buf: &mut [u8],
        input: &mut [u8],
        filled: &mut usize,
        out: &mut OutBuf,
    ) -> io::Result<usize> {
        loop {
            // Records shrink when decrypted: reading no more than `buf` can take keeps the
            // plaintext out of `plain_in`. At least one whole record, though, or a short
            // `buf` would never see one complete.
            let want = buf.len().saturating_sub(*filled).max(MAX_RECORD).min(input.len() - *filled);
            if want == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS message too large"));
            }
            match socket.read(&mut input[*filled..*filled + want]) {
                Ok(0) => return Ok(0),
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let (got, _) = self.drive(socket, input, filled, buf, out, App::Nothing)?;
            if got > 0 || self.q.read_closed {
                // Ok(0) after close_notify: a clean end of stream.
                return Ok(got);
            }
        }
    }

    /// Encrypts as much of `bufs` as the session takes and sends what the socket takes;
    /// the count is of plaintext bytes accepted. `WouldBlock` when nothing was accepted.
    pub fn send<S: Read + Write>(&mut self, socket: &mut S, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        if self.q.write_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.q.push(socket)?;
        let room = OUTPUT_LIMIT.saturating_sub(self.q.output_len() + self.q.plain_out_len());
        if room == 0 {
            // The socket takes nothing and the queue is full: wait for WRITABLE.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.conn.is_handshaking() {
            // Waits for the handshake (an early reply), as rustls's own queue would.
            let n = room.min(total);
            gather(bufs, n, &mut self.q.held().plain_out);
            return Ok(n);
        }
        with_scratch(|scratch| {
            let limit = room.min(total).min(SEND_CHUNK);
            let app = App::Data { bufs, limit, gather: &mut scratch.gather };
            let taken = self.run(socket, &mut scratch.out, app)?;
            match taken {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        })
    }

    /// `WouldBlock` while records are still queued: plaintext accepted by `send` has not
    /// all reached the socket.
    pub fn flush<S: Read + Write>(&mut self, socket: &mut S) -> io::Result<()> {
        if self.q.plain_out_len() > 0 && !self.conn.is_handshaking() {
            with_scratch(|scratch| self.run(socket, &mut scratch.out, App::Nothing))?;
        }
        match self.q.push(socket)? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Records wait for the socket, or an early reply waits to be encrypted.
    pub fn output_pending(&self) -> bool {
        self.q.output_len() > 0 || (self.q.plain_out_len() > 0 && !self.conn.is_handshaking())
    }

    /// The handshake is not complete: plaintext waits in the session until it is.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Tells the peer we are done sending (best effort; not before the handshake is done).
    pub fn close<S: Read + Write>(&mut self, socket: &mut S) {
        if self.q.write_closed || self.conn.is_handshaking() {
            return;
        }
        let _ = with_scratch(|scratch| self.run(socket, &mut scratch.out, App::CloseNotify));
        self.q.write_closed = true;
    }

    /// Called while the connection is idle with nothing to write: gives back the capacity
    /// a busy spell left in the queues. rustls's own state cannot be shrunk.
    pub fn release_idle(&mut self) {
        let Some(held) = &mut self.q.held else { return };
        if held.output_at == held.output.len() {
            held.output = Vec::new();
            held.output_at = 0;
        }
        held.input.shrink_to_fit();
        held.plain_out.shrink_to_fit();
        if held.output.is_empty() && held.input.is_empty() && held.plain_in.is_empty() && held.plain_out.is_empty() {
            self.q.held = None;
        }
    }

    /// Drives the session over the bytes it keeps, outside a read: encrypts the early
    /// reply and `app` once the handshake allows. Returns how many bytes of `app` were
    /// encrypted.
    fn run<S: Write>(&mut self, socket: &mut S, out: &mut OutBuf, app: App<'_, '_>) -> io::Result<usize> {
        // `recv` leaves only incomplete bytes here, so this finds no new record; it is
        // passed because rustls's handshake deframer may point into it.
        let mut input = self.q.held.as_mut().map(|held| mem::take(&mut held.input)).unwrap_or_default();
        let mut filled = input.len();
        let result = self.drive(socket, &mut input, &mut filled, &mut [], out, app);
        input.truncate(filled);
        if let Some(held) = &mut self.q.held {
            held.input = input;
        }
        result.map(|(_, taken)| taken)
    }

    /// Runs rustls over `input[..filled]` until it needs more from the peer: handshake
    /// records go to the socket (what it does not take, to the output queue), decrypted
    /// bytes to `buf` (what does not fit, to `plain_in`), and once the handshake allows,
    /// the early reply and then `app` are encrypted. Consumed bytes leave the front of
    /// `input`. Returns the bytes put in `buf` and the bytes of `app` encrypted.
    fn drive<S: Write>(
        &mut self,
        socket: &mut S,
        input: &mut [u8],
        filled: &mut usize,
        buf: &mut [u8],
        out: &mut OutBuf,
        app: App<'_, '_>,
    ) -> io::Result<(usize, usize)> {
        // Consumed bytes are skipped, and the rest moved to the front once at the end:
        // moving it after every record would copy a 64 KiB read over and over.
        let mut start = 0;
        let result = self.drive_from(socket, &mut input[..*filled], &mut start, buf, out, app);
        input.copy_within(start..*filled, 0);
        *filled -= start;
        if result.is_err() {
            // Records encoded before the failure must not go out on the next connection
            // that borrows the shard's buffer.
            out.len = 0;
        }
        result
    }

    fn drive_from<S: Write>(
        &mut self,
        socket: &mut S,
        input: &mut [u8],
        start: &mut usize,
        buf: &mut [u8],
        out: &mut OutBuf,
        mut app: App<'_, '_>,
    ) -> io::Result<(usize, usize)> {
        let (mut got, mut taken) = (0, 0);
        loop {
            let status = self.conn.process_tls_records(&mut input[*start..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    // rustls queued an alert for the peer: send it (best effort) first.
                    *start += discard;
                    self.send_alert(socket, &mut input[*start..], out);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let done = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        discard += record.discard;
                        got += self.q.put_plain(record.payload, &mut buf[got..]);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, out)?;
                    false
                }
                ConnectionState::TransmitTlsData(mut transmit) => {
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        self.q.encrypt_early(&mut traffic, out)?;
                    }
                    transmit.done();
                    self.q.emit(socket, out)?;
                    false
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    self.q.encrypt_early(&mut traffic, out)?;
                    match mem::replace(&mut app, App::Nothing) {
                        App::CloseNotify => queue_close_notify(&mut traffic, out)?,
                        App::Data { bufs, limit, gather } => {
                            taken = encrypt_slices(&mut traffic, bufs, limit, gather, out)?
                        }
                        App::Nothing => {}
                    }
                    self.q.emit(socket, out)?;
                    true
                }
                ConnectionState::BlockedHandshake => true,
                ConnectionState::PeerClosed => {
                    self.q.read_closed = true;
                    false
                }
                ConnectionState::Closed => {
                    self.q.read_closed = true;
                    true
                }
                // Early data is off (`max_early_data_size` 0), so rustls refuses it.
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS state")),
            };
            *start += discard;
            if done {
                return Ok((got, taken));
            }
        }
    }

    /// After a fatal error: rustls queued its alert ahead of everything else.
    fn send_alert<S: Write>(&mut self, socket: &mut S, input: &mut [u8], out: &mut OutBuf) {
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = self.conn.process_tls_records(input).state {
            if encode(&mut data, out).is_ok() {
                let _ = self.q.emit(socket, out);
            }
        }
        out.len = 0;
    }
}

#[cfg(test)]
mod tests;
