//! Client WebSocket connections for every mode (hold, fanout, echo).
//!
//! One mio poll loop drives every connection of a process: a connection is an fd plus a
//! little state in a `Vec` indexed by its token, never a thread or a task.
//! The mode's logic is an [`App`], called back with whole text messages and able to
//! queue frames in reply; setup, write buffering, pings and failure accounting live here.
//! A connection's bytes go through a [`Wire`]: the socket itself, or TLS over it (`wss://`).

use crate::failures::{Cause, Failures};
use crate::opts::WsUrl;
use crate::tls::{TlsClient, Wire};
use crate::ws::{self, Frame, MessageReader, Rng};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// If every one of the first this-many attempts is refused, nobody is listening:
/// say so at once instead of ramping through the rest.
pub const REFUSED_ABORT_AFTER: u64 = 100;

/// What a mode does with its connections.
pub trait App {
    /// The upgrade completed; frames queued on `out` are sent at once.
    fn opened(&mut self, idx: usize, out: &mut Outbox<'_>);
    /// A whole text message arrived.
    fn message(&mut self, idx: usize, text: &[u8], out: &mut Outbox<'_>);
    /// The connection is gone: it never opened (`was_open` false; counted in
    /// `stats.failures`) or the server closed it (counted in `stats.dropped`).
    fn ended(&mut self, idx: usize, was_open: bool);
}

/// Queues masked frames on one connection.
pub struct Outbox<'a> {
    out: &'a mut Vec<u8>,
    rng: &'a mut Rng,
}

impl Outbox<'_> {
    pub fn text(&mut self, payload: &[u8]) {
        ws::push_text_frame(self.out, payload, self.rng.mask());
    }
}

#[derive(Debug, Default)]
pub struct NetStats {
    pub established: u64,
    pub failures: Failures,
    /// Open connections the server closed, and why the first one was.
    pub dropped: u64,
    pub first_drop: Option<String>,
    /// Connect start to 101 received, one entry per established connection.
    pub connect_latencies_us: Vec<u64>,
    /// Server pings answered with a pong.
    pub pings_answered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Connecting,
    Sending { written: usize },
    Reading,
    Open,
    Closed,
}

struct Conn {
    stream: Option<Wire>,
    /// Which of `Net::urls` it connects to.
    target: u32,
    state: State,
    started: Instant,
    /// The upgrade request, then the response head, while handshaking.
    handshake: Vec<u8>,
    /// Frames not yet taken by the socket, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    reader: MessageReader,
}

enum End {
    Failed(Cause, String),
    Dropped(String),
}

pub struct Net {
    /// The targets; each connection goes to the one its `connect` names.
    urls: Vec<WsUrl>,
    /// wss://: every connection's TLS client settings.
    tls: Option<TlsClient>,
    handshake_timeout: Duration,
    poll: Poll,
    events: Events,
    /// Tokens of the last poll, copied out so connections can be driven mutably.
    ready: Vec<usize>,
    conns: Vec<Conn>,
    handshaking: usize,
    /// Upgrade deadlines in start order; the timeout is fixed, so this stays sorted.
    deadlines: VecDeque<(Instant, usize)>,
    pub stats: NetStats,
    rng: Rng,
    scratch: Vec<u8>,
    /// With `Some(prefix)`, connection `idx` asks for `?user=<prefix><idx>`: each
    /// connection its own user, as deployed hubs see them.
    user_prefix: Option<String>,
}

impl Net {
    pub fn new(urls: &[WsUrl], tls: Option<&TlsClient>, handshake_timeout: Duration, seed: u64) -> io::Result<Net> {
        assert!(!urls.is_empty(), "a Net needs at least one target URL");
        Ok(Net {
            urls: urls.to_vec(),
            tls: tls.cloned(),
            handshake_timeout,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            conns: Vec::new(),
            handshaking: 0,
            deadlines: VecDeque::new(),
            stats: NetStats::default(),
            rng: Rng::seeded(seed),
            scratch: vec![0; 64 * 1024],
            user_prefix: None,
        })
    }

    /// Gives each connection opened from now on its own user, `<prefix><idx>`.
    pub fn set_user_prefix(&mut self, prefix: String) {
        self.user_prefix = Some(prefix);
    }

    /// The user connection `idx` asks for, if connections get users.
    pub fn user_of(&self, idx: usize) -> Option<String> {
        self.user_prefix.as_ref().map(|prefix| format!("{prefix}{idx}"))
    }

    pub fn targets(&self) -> usize {
        self.urls.len()
    }

    pub fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// Bytes queued on the connection that the socket has not taken yet.
    pub fn unsent(&self, idx: usize) -> usize {
        let conn = &self.conns[idx];
        conn.out.len() - conn.sent
    }

    /// Nothing but refusals so far: nobody is listening, so stop trying.
    pub fn nobody_listening(&self) -> bool {
        let refused = self.stats.failures.counts[Cause::Refused as usize];
        self.stats.established == 0 && refused >= REFUSED_ABORT_AFTER && refused == self.stats.failures.total()
    }

    /// Starts a connection to `urls[target]` from `src`; returns its index (a failure to
    /// even start is reported through `app.ended` before this returns).
    pub fn connect(&mut self, app: &mut impl App, src: Option<Ipv4Addr>, target: usize) -> usize {
        let idx = self.conns.len();
        let url = &self.urls[target];
        let mut conn = Conn {
            stream: None,
            target: target as u32,
            state: State::Closed,
            started: Instant::now(),
            handshake: Vec::new(),
            out: Vec::new(),
            sent: 0,
            reader: MessageReader::default(),
        };
        if let Some(user) = self.user_of(idx) {
            // Built now, while the index is known; the connect step sends it as is.
            let sep = if url.path.contains('?') { '&' } else { '?' };
            let path = format!("{}{sep}user={user}", url.path);
            conn.handshake = ws::upgrade_request_to(url, &path, &mut self.rng);
        }
        let opened = open_socket(url.addr, src).and_then(|stream| {
            let mut wire = Wire::new(stream, self.tls.as_ref())?;
            self.poll.registry().register(wire.tcp_mut(), Token(idx), Interest::READABLE | Interest::WRITABLE)?;
            Ok(wire)
        });
        match opened {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.state = State::Connecting;
                self.handshaking += 1;
                self.deadlines.push_back((Instant::now() + self.handshake_timeout, idx));
                self.conns.push(conn);
            }
            Err(e) => {
                self.conns.push(conn);
                self.stats.failures.fail(Cause::of(&e), || describe_open_error(&e, src));
                app.ended(idx, false);
            }
        }
        idx
    }

    /// Queues a text frame; [`Net::flush`] sends it.
    pub fn queue(&mut self, idx: usize, payload: &[u8]) {
        ws::push_text_frame(&mut self.conns[idx].out, payload, self.rng.mask());
    }

    /// Writes what the socket takes now; the rest goes when it becomes writable.
    pub fn flush(&mut self, app: &mut impl App, idx: usize) {
        let conn = &mut self.conns[idx];
        let Some(stream) = conn.stream.as_mut() else { return };
        if let Err(e) = write_out(stream, &mut conn.out, &mut conn.sent) {
            self.end(app, idx, End::Dropped(format!("writing: {e}")));
        }
    }

    /// Waits up to `timeout` for socket events and handles them, then fails the
    /// upgrades that are overdue.
    pub fn poll(&mut self, app: &mut impl App, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| e.token().0));
        for &idx in &ready {
            let conn = &mut self.conns[idx];
            if conn.stream.is_none() {
                continue; // closed earlier in this batch
            }
            let was_handshaking = conn.state != State::Open;
            let pings = &mut self.stats.pings_answered;
            let url = &self.urls[conn.target as usize];
            let (established, end) = drive(conn, idx, url, &mut self.rng, &mut self.scratch, pings, app);
            if established {
                self.handshaking -= 1;
                self.stats.established += 1;
                self.stats.connect_latencies_us.push(conn.started.elapsed().as_micros() as u64);
            }
            if let Some(end) = end {
                if was_handshaking && !established {
                    self.handshaking -= 1;
                }
                self.end(app, idx, end);
            }
        }
        let now = Instant::now();
        while let Some(&(deadline, idx)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if matches!(self.conns[idx].state, State::Connecting | State::Sending { .. } | State::Reading) {
                self.handshaking -= 1;
                let limit = self.handshake_timeout;
                self.end(app, idx, End::Failed(Cause::Timeout, format!("no 101 within {limit:?}")));
            }
        }
        self.ready = ready;
        Ok(())
    }

    /// Closes one open connection on the mode's behalf (no callback: the mode knows).
    pub fn close(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        if let (State::Open, Some(stream)) = (conn.state, conn.stream.as_mut()) {
            // Best effort: a normal closure rather than a reset in the server's log.
            stream.goodbye(&ws::close_frame(self.rng.mask()));
        }
        conn.stream = None;
        conn.state = State::Closed;
        conn.out = Vec::new();
    }

    pub fn close_all(&mut self) {
        (0..self.conns.len()).for_each(|idx| self.close(idx));
    }

    /// Gives up on every connection still upgrading, counting each as failed for `cause`.
    pub fn fail_handshaking(&mut self, app: &mut impl App, cause: Cause, why: &str) {
        for idx in 0..self.conns.len() {
            if matches!(self.conns[idx].state, State::Connecting | State::Sending { .. } | State::Reading) {
                self.handshaking -= 1;
                self.end(app, idx, End::Failed(cause, why.to_string()));
            }
        }
    }

    fn end(&mut self, app: &mut impl App, idx: usize, end: End) {
        let was_open = self.conns[idx].state == State::Open;
        self.conns[idx].stream = None;
        self.conns[idx].state = State::Closed;
        self.conns[idx].out = Vec::new();
        match end {
            End::Failed(cause, message) => self.stats.failures.fail(cause, || message),
            End::Dropped(why) => {
                self.stats.dropped += 1;
                self.stats.first_drop.get_or_insert(why);
            }
        }
        app.ended(idx, was_open);
    }
}

/// Advances one connection as far as its socket allows right now: (upgrade completed
/// in this call, how it ended if it did).
fn drive(
    conn: &mut Conn,
    idx: usize,
    url: &WsUrl,
    rng: &mut Rng,
    scratch: &mut Vec<u8>,
    pings: &mut u64,
    app: &mut impl App,
) -> (bool, Option<End>) {
    let mut established = false;
    let failed = |cause, message: String| Some(End::Failed(cause, message));
    loop {
        let Some(stream) = conn.stream.as_mut() else { return (established, None) };
        let end = match conn.state {
            State::Connecting => {
                if let Some(e) = stream.tcp().take_error().unwrap_or_else(Some) {
                    return (false, failed(Cause::of(&e), format!("connect: {e}")));
                }
                match stream.tcp().peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return (false, None),
                    Err(e) => return (false, failed(Cause::of(&e), format!("connect: {e}"))),
                }
                if conn.handshake.is_empty() {
                    conn.handshake = ws::upgrade_request(url, rng);
                }
                conn.state = State::Sending { written: 0 };
                None
            }
            State::Sending { written } => match stream.write(&conn.handshake[written..]) {
                Ok(n) if written + n == conn.handshake.len() => {
                    conn.handshake.clear();
                    conn.state = State::Reading;
                    None
                }
                Ok(n) => {
                    conn.state = State::Sending { written: written + n };
                    None
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(e) => failed(Cause::of(&e), format!("sending upgrade request: {e}")),
            },
            State::Reading => match stream.read(scratch) {
                Ok(0) => failed(Cause::BadHandshake, "server closed the connection before answering".into()),
                Ok(n) => {
                    conn.handshake.extend_from_slice(&scratch[..n]);
                    match ws::response_head_end(&conn.handshake) {
                        None if conn.handshake.len() > ws::MAX_RESPONSE_HEAD => {
                            failed(Cause::BadHandshake, "response head too long".into())
                        }
                        None => None,
                        Some(end) => match ws::check_response(&conn.handshake[..end]) {
                            Err(msg) => failed(Cause::BadHandshake, msg),
                            Ok(()) => {
                                let rest = conn.handshake.split_off(end);
                                conn.handshake = Vec::new();
                                conn.state = State::Open;
                                established = true;
                                app.opened(idx, &mut Outbox { out: &mut conn.out, rng });
                                // Frames may already follow the head (the hub's welcome).
                                on_data(conn, idx, &rest, rng, pings, app)
                            }
                        },
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(e) => failed(Cause::of(&e), format!("reading upgrade response: {e}")),
            },
            State::Open => {
                // Edge-triggered: write and read until the socket would block.
                if let Err(e) = write_out(stream, &mut conn.out, &mut conn.sent) {
                    return (established, Some(End::Dropped(format!("writing: {e}"))));
                }
                match stream.read(scratch) {
                    Ok(0) => Some(End::Dropped("server closed the connection (EOF)".into())),
                    Ok(n) => {
                        let data = std::mem::take(scratch);
                        let end = on_data(conn, idx, &data[..n], rng, pings, app);
                        *scratch = data;
                        end
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (established, None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(e) => Some(End::Dropped(format!("reading: {e}"))),
                }
            }
            State::Closed => return (established, None),
        };
        if end.is_some() {
            return (established, end);
        }
    }
}

/// Passes an open connection's bytes to the mode and answers pings.
fn on_data(
    conn: &mut Conn,
    idx: usize,
    data: &[u8],
    rng: &mut Rng,
    pings: &mut u64,
    app: &mut impl App,
) -> Option<End> {
    let Conn { reader, out, .. } = conn;
    let mut closed = None;
    let fed = reader.feed(data, |frame| match frame {
        Frame::Text(text) => app.message(idx, text, &mut Outbox { out, rng }),
        Frame::Ping(payload) => {
            ws::push_masked_frame(out, 0xA, payload, rng.mask());
            *pings += 1;
        }
        Frame::Close(payload) => closed = Some(describe_close(payload)),
    });
    match (fed, closed) {
        (Err(e), _) => Some(End::Dropped(format!("protocol error: {e}"))),
        (Ok(()), Some(why)) => Some(End::Dropped(why)),
        (Ok(()), None) => None,
    }
}

/// "server closed the connection: 1008 slow consumer".
fn describe_close(payload: &[u8]) -> String {
    let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
    format!("server closed the connection: {code} {reason}").trim_end().to_string()
}

/// Writes queued bytes until done or the socket is full.
fn write_out(stream: &mut Wire, out: &mut Vec<u8>, sent: &mut usize) -> io::Result<()> {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *sent == out.len() {
        out.clear();
        *sent = 0;
        if out.capacity() > 256 * 1024 {
            *out = Vec::new(); // a burst's buffer should not stay with the connection
        }
    } else if *sent > 64 * 1024 {
        out.drain(..*sent);
        *sent = 0;
    }
    Ok(())
}

/// A non-blocking socket with its connect already under way.
pub fn open_socket(addr: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    if let Some(ip) = src {
        // Let connect() pick the port: bind() alone reserves a port per socket and
        // fails on ports still in TIME_WAIT from the previous run, while connect only
        // needs the whole 4-tuple to be unique.
        let one: libc::c_int = 1;
        // SAFETY: plain setsockopt on a socket we own, with a correctly sized int.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::new(ip.into(), 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

pub fn describe_open_error(e: &io::Error, src: Option<Ipv4Addr>) -> String {
    let from = src.map_or(String::new(), |ip| format!(" from {ip}"));
    match e.raw_os_error() {
        Some(libc::EMFILE) => format!(
            "opening a socket{from}: {e} (the per-process fd limit is reached; \
             lower --connections or raise --processes)"
        ),
        Some(libc::EADDRNOTAVAIL) => {
            format!("connecting{from}: {e} (out of source ports; widen --source-ips)")
        }
        _ => format!("connecting{from}: {e}"),
    }
}
