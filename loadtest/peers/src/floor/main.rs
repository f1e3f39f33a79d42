//! `floor-peer`: the floor `scripts/compare.sh` measures wshub and `tokio-peer` against.
//!
//! It is the least a broadcast WebSocket server can do and still be one: one thread, one
//! `mio` poll, raw non-blocking sockets, the upgrade answered by hand (`handshake.rs`),
//! client frames unmasked in place and relayed (`frame.rs`). Nothing else is per
//! connection: no WebSocket object, no read or write buffer while idle. Every text or
//! binary message received is framed **once** into a shared outbound log ([`Log`]) and the
//! same bytes are written to every connection, the sender included (the work of `wshub
//! --relay` and of `tokio-peer`). Each connection only remembers how far into the log it
//! has written; one that would block keeps its offset and is written again on WRITABLE,
//! taking everything it owes in one `write` (coalescing costs no copy).
//!
//! So its memory under load is one copy of each message plus a few words per connection,
//! and its CPU per delivery is about one `write` system call: what is left when all the
//! server's own work is taken away. It is a yardstick, not a server: no UTF-8 checks, no
//! fragmented messages (refused with 1003), no limits beyond a maximum lag.
//!
//! `--echo` sends each message back to its sender only (like `tokio-peer --echo`).

mod frame;
mod handshake;
mod log;

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::handshake::Upgrade;
use crate::log::Log;

#[derive(Parser)]
#[command(about = "The floor for wshub's benchmarks: a raw mio relay that frames each message once")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the bound address goes to stderr).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Echo each message to its sender instead of broadcasting it.
    #[arg(long)]
    echo: bool,
}

const LISTENER: Token = Token(usize::MAX);

/// Largest client frame payload taken; bigger ones are refused with 1009.
const MAX_PAYLOAD: usize = 1 << 20;

/// A connection this far behind the log is dropped, as `tokio-peer` drops one that lags
/// its broadcast channel: nobody waits for a reader that does not read.
const MAX_LAG: u64 = 64 << 20;

/// One client. While idle and caught up it owns no heap memory: both vectors are empty.
struct Conn {
    stream: TcpStream,
    /// Upgraded (the 101 is queued); before that `input` collects the request head.
    open: bool,
    /// A close was queued: send what is owed up to it, then drop the connection.
    closing: bool,
    /// The last write would have blocked: wait for WRITABLE before writing again.
    blocked: bool,
    /// Absolute log offset of the next shared byte this connection is owed.
    pos: u64,
    /// Bytes for this connection only (the 101, pongs, the close, echoes), sent once
    /// `pos` reaches `reply_at`, a frame boundary in the log, so they never split a frame.
    reply: Vec<u8>,
    reply_at: u64,
    /// Unparsed input: the request head, or the start of a frame that has not all come.
    input: Vec<u8>,
}

/// Whether a connection stays after being read or written.
#[derive(PartialEq)]
enum Keep {
    Yes,
    Drop,
}

struct Peer {
    echo: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    log: Log,
    /// Read buffer shared by every connection: data is parsed where it lands.
    scratch: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.listen)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("listening on {}", listener.local_addr()?);
    let mut peer =
        Peer { echo: args.echo, conns: Vec::new(), free: Vec::new(), log: Log::default(), scratch: vec![0; 64 * 1024] };
    let mut events = Events::with_capacity(1024);
    // Set when accept failed for want of file descriptors: retry on a timer, since the
    // edge-triggered listener will not report the connections already waiting.
    let mut accept_stalled = false;
    loop {
        let timeout = accept_stalled.then_some(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if accept_stalled || events.iter().any(|e| e.token() == LISTENER) {
            accept_stalled = peer.accept(&listener, &poll);
        }
        for event in events.iter() {
            let idx = event.token().0;
            if event.token() == LISTENER {
                continue;
            }
            let mut keep = Keep::Yes;
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                if let Some(conn) = peer.conns[idx].as_mut() {
                    conn.blocked = false;
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                keep = peer.read(idx);
            }
            if keep == Keep::Yes {
                keep = peer.flush(idx);
            }
            if keep == Keep::Drop {
                peer.remove(idx);
            }
        }
        peer.flush_all();
    }
}

impl Peer {
    /// Accepts until the backlog is empty. Returns true if it stopped for want of file
    /// descriptors (or another transient error) and should be retried soon.
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) -> bool {
        loop {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    return true;
                }
            };
            let _ = stream.set_nodelay(true);
            let idx = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if poll.registry().register(&mut stream, Token(idx), Interest::READABLE | Interest::WRITABLE).is_err() {
                self.free.push(idx);
                continue;
            }
            let conn = Conn {
                stream,
                open: false,
                closing: false,
                blocked: false,
                pos: 0,
                reply: Vec::new(),
                reply_at: 0,
                input: Vec::new(),
            };
            self.conns[idx] = Some(conn);
        }
    }

    fn remove(&mut self, idx: usize) {
        if self.conns[idx].take().is_some() {
            self.free.push(idx); // dropping the stream closes it and leaves the poll
        }
    }

    /// Reads until the socket would block, handling each frame (or the request head)
    /// as it comes.
    fn read(&mut self, idx: usize) -> Keep {
        let Some(conn) = self.conns[idx].as_mut() else { return Keep::Drop };
        loop {
            if conn.closing {
                return Keep::Yes; // nothing read after a close matters
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => return Keep::Drop,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Keep::Yes,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Keep::Drop,
            };
            // Parse in the scratch buffer unless a partial frame (or head) is waiting, in
            // which case the new bytes join it first.
            if conn.input.is_empty() {
                let used = handle_input(conn, &mut self.scratch[..n], &mut self.log, self.echo);
                conn.input.extend_from_slice(&self.scratch[used..n]);
            } else {
                let mut input = std::mem::take(&mut conn.input);
                input.extend_from_slice(&self.scratch[..n]);
                let used = handle_input(conn, &mut input, &mut self.log, self.echo);
                input.drain(..used);
                // A frame that has all arrived leaves no buffer behind.
                conn.input = if input.is_empty() { Vec::new() } else { input };
            }
            if !conn.open && conn.closing {
                return Keep::Yes; // refused upgrade: the answer goes out, then it closes
            }
            if conn.input.len() > MAX_PAYLOAD + 14 + handshake::MAX_HEAD {
                return Keep::Drop;
            }
        }
    }

    /// Writes what connection `idx` is owed, if it is not waiting for WRITABLE.
    fn flush(&mut self, idx: usize) -> Keep {
        let Some(conn) = self.conns[idx].as_mut() else { return Keep::Drop };
        if conn.blocked {
            return Keep::Yes;
        }
        flush(conn, &self.log)
    }

    /// After a pass over the events: writes the log's new frames to every connection
    /// that can take them, then lets go of log bytes everybody has.
    fn flush_all(&mut self) {
        if self.log.is_empty() {
            return;
        }
        let end = self.log.end();
        let mut behind = false;
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_mut() else { continue };
            if !conn.open || conn.pos >= end {
                continue;
            }
            if end - conn.pos > MAX_LAG {
                eprintln!("dropping a connection that fell {} bytes behind", end - conn.pos);
                self.remove(idx);
                continue;
            }
            if !conn.blocked && flush(conn, &self.log) == Keep::Drop {
                self.remove(idx);
                continue;
            }
            behind |= self.conns[idx].as_ref().is_some_and(|c| c.pos < end);
        }
        if !behind {
            self.log.trim_to(end);
        } else if self.log.worth_trimming() {
            let oldest = self.conns.iter().flatten().filter(|c| c.open).map(|c| c.pos).min();
            self.log.trim_to(oldest.unwrap_or(end));
        }
    }
}

/// Handles the bytes at the start of `buf`: the request head while not yet upgraded,
/// then whole frames. Returns how many bytes were used; the rest is an unfinished frame.
fn handle_input(conn: &mut Conn, buf: &mut [u8], log: &mut Log, echo: bool) -> usize {
    let mut used = 0;
    if !conn.open {
        match handshake::upgrade(buf) {
            Upgrade::Partial => return 0,
            Upgrade::Refuse(answer) => {
                conn.reply.extend_from_slice(answer);
                conn.closing = true;
                return buf.len();
            }
            Upgrade::Accept { answer, head_len } => {
                // It gets every message framed from now on.
                conn.open = true;
                conn.pos = log.end();
                queue_reply(conn, log, &answer);
                used = head_len;
            }
        }
    }
    while !conn.closing {
        let (opcode, payload, len) = match frame::parse(&mut buf[used..], MAX_PAYLOAD) {
            frame::Parsed::Incomplete => break,
            frame::Parsed::Fail(code) => {
                close(conn, log, code);
                break;
            }
            frame::Parsed::Frame { opcode, payload, len } => (opcode, payload, len),
        };
        let payload = &buf[used + payload.start..used + payload.end];
        match opcode {
            frame::TEXT | frame::BINARY if echo => {
                let mut out = Vec::with_capacity(payload.len() + 10);
                frame::push(&mut out, opcode, payload);
                queue_reply(conn, log, &out);
            }
            frame::TEXT | frame::BINARY => log.push_frame(opcode, payload),
            frame::PING => {
                let mut pong = Vec::with_capacity(payload.len() + 2);
                frame::push(&mut pong, frame::PONG, payload);
                queue_reply(conn, log, &pong);
            }
            frame::PONG => {}
            frame::CLOSE => {
                // Echo the client's status code, as RFC 6455 §5.5.1 suggests.
                let code = payload.get(..2).map_or(1000, |c| u16::from_be_bytes([c[0], c[1]]));
                close(conn, log, code);
            }
            _ => close(conn, log, frame::PROTOCOL_ERROR),
        }
        used += len;
    }
    if conn.closing {
        buf.len()
    } else {
        used
    }
}

/// Queues a frame for this connection only, after the shared bytes it is owed so far.
fn queue_reply(conn: &mut Conn, log: &Log, bytes: &[u8]) {
    if conn.reply.is_empty() {
        conn.reply_at = log.end();
    }
    conn.reply.extend_from_slice(bytes);
}

fn close(conn: &mut Conn, log: &Log, code: u16) {
    let mut out = Vec::with_capacity(4);
    frame::push_close(&mut out, code);
    queue_reply(conn, log, &out);
    conn.closing = true;
}

/// Writes what `conn` is owed, shared log bytes and its own replies in order, until done
/// or the socket would block. A closing connection is dropped once its close is out.
fn flush(conn: &mut Conn, log: &Log) -> Keep {
    loop {
        // Shared bytes up to the reply's place (or all of them), then the reply.
        let limit = if conn.reply.is_empty() { log.end() } else { conn.reply_at };
        let closed_out = conn.closing && conn.reply.is_empty();
        // Nothing shared before the upgrade: `pos` only means something once open.
        let (bytes, shared) = if conn.open && conn.pos < limit && !closed_out {
            (log.range(conn.pos, limit), true)
        } else if !conn.reply.is_empty() {
            (&conn.reply[..], false)
        } else if conn.closing {
            return Keep::Drop; // the close went out
        } else {
            return Keep::Yes;
        };
        match conn.stream.write(bytes) {
            Ok(0) => return Keep::Drop,
            Ok(n) if shared => conn.pos += n as u64,
            Ok(n) => {
                conn.reply.drain(..n);
                if conn.reply.is_empty() {
                    conn.reply = Vec::new(); // idle connections hold no heap memory
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                conn.blocked = true;
                return Keep::Yes;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Keep::Drop,
        }
    }
}
