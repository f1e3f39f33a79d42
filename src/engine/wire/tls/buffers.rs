//! What a TLS session holds besides rustls, and the shard thread's buffers it borrows:
//! see the memory notes in the parent module.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};

use rustls::server::ServerConnectionData;
use rustls::unbuffered::{EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError};

use super::Traffic;

/// What a session holds besides rustls.
#[derive(Default)]
pub(super) struct Queues {
    /// The buffers, boxed and only while one holds bytes (or since the last
    /// `release_idle`): an idle session pays 8 bytes for them instead of a hundred.
    pub(super) held: Option<Box<Held>>,
    /// The peer's close_notify: reads end.
    pub(super) read_closed: bool,
    /// Our close_notify is queued: nothing more is encrypted.
    pub(super) write_closed: bool,
}

#[derive(Default)]
pub(super) struct Held {
    /// Received bytes rustls has not consumed: the start of a record (or of a handshake
    /// message spanning records) whose end has not arrived.
    pub(super) input: Vec<u8>,
    /// Decrypted bytes a short `recv` buffer could not take, from `plain_in_at` on. Rare:
    /// `recv` reads no more records than its buffer can take decrypted.
    pub(super) plain_in: Vec<u8>,
    pub(super) plain_in_at: usize,
    /// Records the socket has not taken, from `output_at` on.
    pub(super) output: Vec<u8>,
    pub(super) output_at: usize,
    /// Plaintext sent before the handshake finished (an early reply); encrypted once it has.
    pub(super) plain_out: Vec<u8>,
}

/// The shard thread's buffers, lent to one session call at a time.
#[derive(Default)]
pub(super) struct Scratch {
    /// Records being processed; fully initialised, `MAX_INPUT` long once used.
    pub(super) input: Vec<u8>,
    /// Records to write, `..len` filled.
    pub(super) out: OutBuf,
    /// A vectored send's slices, gathered so they share records.
    pub(super) gather: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            // Whatever a failed call left belongs to another connection: never send it.
            scratch.out.len = 0;
            f(&mut scratch)
        }
        // Not reentrant in practice (no session call makes another); if it ever were,
        // a temporary buffer is slower but still correct.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// An output buffer that stays initialised, so reuse costs no zeroing.
#[derive(Default)]
pub(super) struct OutBuf {
    pub(super) buf: Vec<u8>,
    pub(super) len: usize,
}

impl OutBuf {
    pub(super) fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.buf.len() < self.len + at_least {
            self.buf.resize(self.len + at_least, 0);
        }
        &mut self.buf[self.len..]
    }
}

impl Queues {
    pub(super) fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Default::default)
    }

    pub(super) fn output_len(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.output.len() - held.output_at)
    }

    pub(super) fn plain_out_len(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.plain_out.len())
    }

    /// Copies a decrypted record to `buf`, keeping what does not fit.
    pub(super) fn put_plain(&mut self, payload: &[u8], buf: &mut [u8]) -> usize {
        let n = payload.len().min(buf.len());
        buf[..n].copy_from_slice(&payload[..n]);
        if n < payload.len() {
            self.held().plain_in.extend_from_slice(&payload[n..]);
        }
        n
    }

    /// Hands out decrypted bytes a short buffer left behind; `None` when there are none.
    pub(super) fn take_plain_in(&mut self, buf: &mut [u8]) -> Option<usize> {
        let held = self.held.as_mut().filter(|held| held.plain_in_at < held.plain_in.len())?;
        let rest = &held.plain_in[held.plain_in_at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        held.plain_in_at += n;
        if held.plain_in_at == held.plain_in.len() {
            // Rare and short-lived: not worth keeping.
            held.plain_in = Vec::new();
            held.plain_in_at = 0;
        }
        Some(n)
    }

    pub(super) fn encrypt_early(&mut self, traffic: &mut Traffic<'_>, out: &mut OutBuf) -> io::Result<()> {
        if let Some(held) = self.held.as_mut().filter(|held| !held.plain_out.is_empty()) {
            encrypt(traffic, &held.plain_out, out)?;
            held.plain_out = Vec::new();
        }
        Ok(())
    }

    /// Sends the records in `out` after those already queued; what the socket does not
    /// take is queued. Empties `out` either way.
    pub(super) fn emit<S: Write>(&mut self, socket: &mut S, out: &mut OutBuf) -> io::Result<()> {
        let records = &out.buf[..out.len];
        let result = if self.output_len() == 0 {
            // Straight from the shard's buffer: a connection whose socket keeps up never
            // copies its records.
            write_some(socket, records).map(|n| {
                if n < records.len() {
                    let held = self.held();
                    held.output.clear();
                    held.output_at = 0;
                    held.output.extend_from_slice(&records[n..]);
                }
            })
        } else {
            let held = self.held();
            if held.output_at > 0 {
                held.output.drain(..held.output_at);
                held.output_at = 0;
            }
            held.output.extend_from_slice(records);
            self.push(socket).map(|_| ())
        };
        out.len = 0;
        result
    }

    /// Writes queued records until none are left or the socket would block; `Ok(false)`:
    /// some are still queued.
    pub(super) fn push<S: Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        let Some(held) = self.held.as_mut().filter(|held| held.output_at < held.output.len()) else {
            return Ok(true);
        };
        held.output_at += write_some(socket, &held.output[held.output_at..])?;
        if held.output_at < held.output.len() {
            return Ok(false);
        }
        // Kept for the next burst; `release_idle` frees it once the connection is quiet.
        held.output.clear();
        held.output_at = 0;
        Ok(true)
    }
}

/// Writes until all of `bytes` is written or the socket would block; returns how much.
fn write_some<S: Write>(socket: &mut S, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Appends the first `n` bytes of `bufs` to `to`.
pub(super) fn gather(bufs: &[IoSlice<'_>], mut n: usize, to: &mut Vec<u8>) {
    for buf in bufs {
        let take = buf.len().min(n);
        to.extend_from_slice(&buf[..take]);
        n -= take;
        if n == 0 {
            break;
        }
    }
}

/// What to encrypt once the handshake allows, besides the early reply.
pub(super) enum App<'a, 'b> {
    Nothing,
    CloseNotify,
    /// Up to `limit` bytes of `bufs`; `gather` is the shard's buffer for coalescing.
    Data {
        bufs: &'a [IoSlice<'b>],
        limit: usize,
        gather: &'a mut Vec<u8>,
    },
}

/// Slices at least this long are encrypted straight from the caller's memory; shorter ones
/// (several small frames in one write) are copied together first so they share records:
/// each record costs 22 bytes on the wire and a sealing call, each copy a few nanoseconds.
const OWN_RECORD: usize = 4096;
/// The most plaintext one record carries.
const RECORD_PAYLOAD: usize = 16 * 1024;

/// Encrypts up to `limit` bytes of `bufs` into `out`; returns how many.
pub(super) fn encrypt_slices(
    traffic: &mut Traffic<'_>,
    bufs: &[IoSlice<'_>],
    limit: usize,
    gather: &mut Vec<u8>,
    out: &mut OutBuf,
) -> io::Result<usize> {
    let mut taken = 0;
    // A lone small slice is not copied unless another small one follows it.
    let mut lone: Option<&[u8]> = None;
    gather.clear();
    for buf in bufs {
        let room = limit - taken - lone.map_or(0, <[u8]>::len) - gather.len();
        let slice = &buf[..buf.len().min(room)];
        if slice.is_empty() {
            if room == 0 {
                break;
            }
            continue;
        }
        if slice.len() >= OWN_RECORD {
            taken += seal_pending(traffic, &mut lone, gather, out)?;
            encrypt(traffic, slice, out)?;
            taken += slice.len();
            continue;
        }
        if let Some(first) = lone.take() {
            gather.extend_from_slice(first);
        }
        if gather.is_empty() {
            lone = Some(slice);
        } else {
            gather.extend_from_slice(slice);
            if gather.len() >= RECORD_PAYLOAD {
                taken += seal_pending(traffic, &mut lone, gather, out)?;
            }
        }
    }
    Ok(taken + seal_pending(traffic, &mut lone, gather, out)?)
}

/// Encrypts the small slices waiting (one lone slice, or those gathered); returns how
/// many bytes.
fn seal_pending(
    traffic: &mut Traffic<'_>,
    lone: &mut Option<&[u8]>,
    gather: &mut Vec<u8>,
    out: &mut OutBuf,
) -> io::Result<usize> {
    let data = lone.take().unwrap_or(gather);
    encrypt(traffic, data, out)?;
    let n = data.len();
    gather.clear();
    Ok(n)
}

/// A rustls error that may ask for a larger output buffer.
trait Undersized: std::error::Error + Send + Sync + 'static {
    fn required_size(&self) -> Option<usize>;
}

impl Undersized for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

impl Undersized for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

/// Appends to `out` what `write` puts in `room` bytes, with more room when rustls asks.
fn append<E: Undersized>(
    out: &mut OutBuf,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    loop {
        match write(out.spare(room)) {
            Ok(n) => {
                out.len += n;
                return Ok(());
            }
            Err(e) => room = e.required_size().ok_or_else(|| io::Error::other(e))?,
        }
    }
}

pub(super) fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut OutBuf) -> io::Result<()> {
    append(out, 4096, |room| data.encode(room))
}

fn encrypt(traffic: &mut Traffic<'_>, data: &[u8], out: &mut OutBuf) -> io::Result<()> {
    // Room for the records' headers and tags; rustls says when it needs more.
    append(out, data.len() + (data.len() / (16 * 1024) + 1) * 64, |room| traffic.encrypt(data, room))
}

pub(super) fn queue_close_notify(traffic: &mut Traffic<'_>, out: &mut OutBuf) -> io::Result<()> {
    append(out, 64, |room| traffic.queue_close_notify(room))
}
