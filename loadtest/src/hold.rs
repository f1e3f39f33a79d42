//! One process's share of `hold`: a single mio poll loop that opens connections at a
//! fixed rate, upgrades them, then keeps them idle until the hold period ends.
//!
//! There is no thread or task per connection: a connection is an fd plus ~100 bytes of
//! state in a `Vec` indexed by its mio token, so a process can hold as many sockets as
//! its fd limit allows without the tool itself becoming the bottleneck.

use crate::opts::{self, WsUrl};
use crate::procs;
use crate::stats::{Cause, Report};
use crate::ws::{self, FrameReader, Rng};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// If every one of the first this-many attempts is refused, nobody is listening:
/// say so at once instead of ramping through the rest.
pub const REFUSED_ABORT_AFTER: u64 = 100;

#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub url: WsUrl,
    pub connections: u64,
    /// New connections per second (this process's share).
    pub rate: f64,
    /// How long to keep the connections once all are up. For a worker this is only a
    /// safety cap: the parent ends the hold through stdin so all workers end together.
    pub duration: Duration,
    /// Round-robin source addresses; empty lets the kernel choose.
    pub source_ips: Vec<Ipv4Addr>,
    pub handshake_timeout: Duration,
    pub max_inflight: usize,
    /// Running as one of several processes under a parent `hold`.
    pub worker: bool,
    pub seed: u64,
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
    stream: Option<TcpStream>,
    state: State,
    started: Instant,
    /// The request while sending it, then the response head while reading it;
    /// empty (no allocation) once the connection is open.
    buf: Vec<u8>,
    frames: FrameReader,
}

impl Conn {
    fn handshaking(&self) -> bool {
        matches!(self.state, State::Connecting | State::Sending { .. } | State::Reading)
    }

    fn close(&mut self) {
        // Dropping the stream closes the fd, which also removes it from epoll.
        self.stream = None;
        self.state = State::Closed;
        self.buf = Vec::new();
        self.frames = FrameReader::default();
    }
}

/// What one round of I/O on a connection led to.
#[derive(Default)]
struct Outcome {
    established: bool,
    end: Option<End>,
}

enum End {
    Failed(Cause, String),
    Dropped,
}

/// Everything `drive` needs besides the connection itself (kept apart from `Holder` so
/// a connection and these can be borrowed mutably at the same time).
struct IoCtx<'a> {
    url: &'a WsUrl,
    rng: Rng,
    scratch: Vec<u8>,
    events: Vec<ws::Event>,
    pings_answered: u64,
}

struct Holder<'a> {
    cfg: &'a HoldConfig,
    poll: Poll,
    conns: Vec<Conn>,
    inflight: usize,
    /// Handshake deadlines in start order; the timeout is fixed, so this stays sorted.
    deadlines: VecDeque<(Instant, usize)>,
    report: Report,
    io: IoCtx<'a>,
    /// Set when the parent of a worker says the hold is over.
    control_stop: Arc<AtomicBool>,
}

/// Runs the whole hold in this process: ramp, `READY`, hold, close.
pub fn run(cfg: &HoldConfig) -> io::Result<Report> {
    let mut h = Holder {
        cfg,
        poll: Poll::new()?,
        conns: Vec::with_capacity(cfg.connections as usize),
        inflight: 0,
        deadlines: VecDeque::new(),
        report: Report { connections: cfg.connections, processes: 1, ..Report::default() },
        io: IoCtx {
            url: &cfg.url,
            rng: Rng::seeded(cfg.seed),
            scratch: vec![0; 16 * 1024],
            events: Vec::new(),
            pings_answered: 0,
        },
        // The parent ends a worker's hold through its stdin.
        control_stop: if cfg.worker { procs::stop_flag_from_stdin() } else { Arc::new(AtomicBool::new(false)) },
    };
    let mut events = Events::with_capacity(1024);

    h.ramp(&mut events)?;
    opts::emit_line(&h.report.ready_line());

    if h.report.established > 0 && !h.should_stop() {
        h.hold(&mut events)?;
    }
    h.close_all();
    h.report.interrupted = opts::stop_requested();
    h.report.pings_answered = h.io.pings_answered;
    Ok(h.report)
}

impl Holder<'_> {
    fn should_stop(&self) -> bool {
        self.control_stop.load(Ordering::SeqCst) || opts::stop_requested()
    }

    fn ramp(&mut self, events: &mut Events) -> io::Result<()> {
        let (n, rate) = (self.cfg.connections, self.cfg.rate);
        let start = Instant::now();
        // Every attempt ends by its own handshake timeout; this is the backstop.
        let deadline =
            start + Duration::from_secs_f64(n as f64 / rate) + self.cfg.handshake_timeout + Duration::from_secs(30);
        let mut next = 0u64;
        let mut cut_short = None;
        loop {
            if self.should_stop() {
                cut_short = Some((Cause::Other, "run stopped during the handshake"));
                break;
            }
            let now = Instant::now();
            let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(n);
            while next < due && self.inflight < self.cfg.max_inflight {
                self.start_connection(next as usize);
                next += 1;
            }
            if next == n && self.inflight == 0 {
                break;
            }
            if self.nobody_listening() {
                let addr = self.cfg.url.addr;
                eprintln!(
                    "wshub-load: the first {REFUSED_ABORT_AFTER} connections to {addr} were all \
                     refused; is the server listening there? Not trying the other {}.",
                    n - next
                );
                self.report.failed[Cause::Refused as usize] += n - next;
                cut_short = Some((Cause::Refused, "abandoned: nobody is listening"));
                break;
            }
            if now > deadline {
                cut_short = Some((Cause::Timeout, "ramp deadline passed during the handshake"));
                break;
            }
            // While ramping, wake often enough to keep the rate smooth.
            let wait = if next < n { 1 } else { 50 };
            self.poll_once(events, Duration::from_millis(wait))?;
            self.expire_handshakes(Instant::now());
        }
        if let Some((cause, why)) = cut_short {
            for conn in self.conns.iter_mut().filter(|c| c.handshaking()) {
                conn.close();
                self.report.fail(cause, || why.to_string());
            }
            self.inflight = 0;
        }
        self.report.ramp_secs = start.elapsed().as_secs_f64();
        Ok(())
    }

    fn nobody_listening(&self) -> bool {
        let refused = self.report.failed[Cause::Refused as usize];
        self.report.established == 0 && refused >= REFUSED_ABORT_AFTER && refused == self.report.failed_total()
    }

    fn hold(&mut self, events: &mut Events) -> io::Result<()> {
        let start = Instant::now();
        let end = start + self.cfg.duration;
        while !self.should_stop() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Short enough that a signal is noticed promptly.
            self.poll_once(events, (end - now).min(Duration::from_millis(100)))?;
        }
        self.report.held_secs = start.elapsed().as_secs_f64();
        Ok(())
    }

    fn close_all(&mut self) {
        for conn in &mut self.conns {
            if let (State::Open, Some(stream)) = (conn.state, conn.stream.as_mut()) {
                // A polite goodbye so the server logs a normal closure rather than a
                // reset; best effort, we do not wait for its answer.
                let _ = stream.write(&ws::close_frame(self.io.rng.mask()));
            }
            conn.close();
        }
    }

    fn start_connection(&mut self, idx: usize) {
        debug_assert_eq!(idx, self.conns.len(), "tokens are indexes into conns");
        let started = Instant::now();
        let src = (!self.cfg.source_ips.is_empty()).then(|| self.cfg.source_ips[idx % self.cfg.source_ips.len()]);
        let mut conn =
            Conn { stream: None, state: State::Closed, started, buf: Vec::new(), frames: FrameReader::default() };
        let opened = open_socket(self.cfg.url.addr, src).and_then(|mut stream| {
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.poll.registry().register(&mut stream, Token(idx), interest)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.state = State::Connecting;
                self.inflight += 1;
                self.deadlines.push_back((started + self.cfg.handshake_timeout, idx));
            }
            Err(e) => {
                let cause = Cause::of(&e);
                self.report.fail(cause, || describe_open_error(&e, src));
            }
        }
        self.conns.push(conn);
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            self.on_event(event.token().0);
        }
        Ok(())
    }

    fn on_event(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        if conn.stream.is_none() {
            return; // already closed; a stale event from the same poll batch
        }
        let outcome = drive(conn, &mut self.io);
        if outcome.established {
            self.inflight -= 1;
            self.report.established += 1;
            self.report.latencies_us.push(conn.started.elapsed().as_micros() as u64);
        }
        match outcome.end {
            None => {}
            Some(End::Failed(cause, message)) => {
                conn.close();
                self.inflight -= 1;
                self.report.fail(cause, || message);
            }
            Some(End::Dropped) => {
                conn.close();
                self.report.dropped += 1;
            }
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(deadline, idx)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let conn = &mut self.conns[idx];
            if conn.handshaking() {
                let state = conn.state;
                conn.close();
                self.inflight -= 1;
                let limit = self.cfg.handshake_timeout;
                self.report.fail(Cause::Timeout, || format!("no 101 within {limit:?} (stuck in {state:?})"));
            }
        }
    }
}

/// Advances one connection as far as its socket allows right now.
fn drive(conn: &mut Conn, io: &mut IoCtx) -> Outcome {
    let mut outcome = Outcome::default();
    let fail = |cause, message: String| Outcome { established: false, end: Some(End::Failed(cause, message)) };
    loop {
        // Re-borrowed each round so `on_frames` can take the whole connection.
        let Some(stream) = conn.stream.as_mut() else {
            return outcome;
        };
        match conn.state {
            State::Connecting => {
                if let Some(e) = stream.take_error().unwrap_or_else(Some) {
                    return fail(Cause::of(&e), format!("connect: {e}"));
                }
                match stream.peer_addr() {
                    Ok(_) => {}
                    // Writable/readable fired but the connect has not finished yet.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return outcome,
                    Err(e) => return fail(Cause::of(&e), format!("connect: {e}")),
                }
                conn.buf = ws::upgrade_request(io.url, &mut io.rng);
                conn.state = State::Sending { written: 0 };
            }
            State::Sending { written } => match stream.write(&conn.buf[written..]) {
                Ok(n) if written + n == conn.buf.len() => {
                    conn.buf.clear();
                    conn.state = State::Reading;
                }
                Ok(n) => conn.state = State::Sending { written: written + n },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return outcome,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return fail(Cause::of(&e), format!("sending upgrade request: {e}")),
            },
            State::Reading => match stream.read(&mut io.scratch) {
                Ok(0) => {
                    let msg = "server closed the connection before answering the upgrade";
                    return fail(Cause::BadHandshake, msg.into());
                }
                Ok(n) => {
                    conn.buf.extend_from_slice(&io.scratch[..n]);
                    let Some(end) = ws::response_head_end(&conn.buf) else {
                        if conn.buf.len() > ws::MAX_RESPONSE_HEAD {
                            return fail(Cause::BadHandshake, "response head too long".into());
                        }
                        continue;
                    };
                    if let Err(msg) = ws::check_response(&conn.buf[..end]) {
                        return fail(Cause::BadHandshake, msg);
                    }
                    // Frames may already follow the head (e.g. an immediate ping).
                    let rest = conn.buf.split_off(end);
                    conn.buf = Vec::new();
                    conn.state = State::Open;
                    outcome.established = true;
                    if let Some(end) = on_frames(conn, io, &rest) {
                        outcome.end = Some(end);
                        return outcome;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return outcome,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return fail(Cause::of(&e), format!("reading upgrade response: {e}")),
            },
            State::Open => {
                // Edge-triggered: read until the socket is empty or we'd miss data.
                let end = match stream.read(&mut io.scratch) {
                    Ok(0) => Some(End::Dropped),
                    Ok(n) => {
                        let data = std::mem::take(&mut io.scratch);
                        let end = on_frames(conn, io, &data[..n]);
                        io.scratch = data;
                        end
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return outcome,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(_) => Some(End::Dropped),
                };
                if end.is_some() {
                    outcome.end = end;
                    return outcome;
                }
            }
            State::Closed => return outcome,
        }
    }
}

/// Feeds bytes from an open connection to its frame reader and answers what needs
/// answering. Returns how the connection ended, if the server ended it.
fn on_frames(conn: &mut Conn, io: &mut IoCtx, data: &[u8]) -> Option<End> {
    if conn.frames.feed(data, &mut io.events).is_err() {
        return Some(End::Dropped);
    }
    let stream = conn.stream.as_mut()?;
    for event in io.events.drain(..) {
        match event {
            ws::Event::Close => return Some(End::Dropped),
            ws::Event::Ping(payload) => {
                // A pong is at most 131 bytes into an idle socket's empty send buffer,
                // so a short write cannot happen in practice; a lost pong only risks
                // the server timing us out, which would show up as "dropped".
                if stream.write(&ws::pong_frame(&payload, io.rng.mask())).is_ok() {
                    io.pings_answered += 1;
                }
            }
        }
    }
    None
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
