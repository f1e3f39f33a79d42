//! The connection core run in memory (quiche's `Pipe` style): a [`Pipe`] stands in for
//! the socket, with a write window the test opens a few bytes at a time, and the clock is
//! whatever tick the test says. No threads, no sockets, nothing timed.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use super::*;
use crate::auth::AuthSettings;

/// A socket in memory: what the peer sent waits in `from_peer`; what the connection
/// writes lands in `to_peer`, at most `window` bytes until the test opens it further.
#[derive(Default)]
struct Pipe {
    from_peer: VecDeque<u8>,
    peer_closed: bool,
    to_peer: Vec<u8>,
    window: usize,
    write_shut: bool,
}

impl Transport for Pipe {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.from_peer.is_empty() {
            return if self.peer_closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.from_peer.len());
        for (slot, byte) in buf.iter_mut().zip(self.from_peer.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        assert!(!self.write_shut, "wrote after shutting the write side");
        if self.window == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        for buf in bufs {
            let n = buf.len().min(self.window - taken);
            self.to_peer.extend_from_slice(&buf[..n]);
            taken += n;
            if taken == self.window {
                break;
            }
        }
        self.window -= taken;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn output_pending(&self) -> bool {
        false
    }

    fn handshaking(&self) -> bool {
        false
    }

    fn is_tls(&self) -> bool {
        false
    }

    fn shutdown_write(&mut self) {
        self.write_shut = true;
    }

    fn shutdown_both(&mut self) {
        self.write_shut = true;
    }

    fn release_idle(&mut self) {}
}

/// What a shard lends a connection, owned by the test.
struct Shard {
    limits: Limits,
    gate: Gate,
    inbound: Inbound,
    incoming: Vec<Incoming>,
    counters: Counters,
    started: Instant,
}

const PING: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(3);

impl Shard {
    fn new(max_pending_bytes: usize) -> Self {
        let config = Config {
            max_message_size: 1024,
            max_pending_bytes,
            ping_interval: PING,
            idle_timeout: IDLE,
            ..Config::default()
        };
        Shard {
            limits: Limits::new(&config),
            gate: Gate::new(&AuthSettings::default()),
            inbound: Inbound::default(),
            incoming: Vec::new(),
            counters: Counters::default(),
            started: Instant::now(),
        }
    }

    fn cx(&mut self, now: Tick) -> ConnEnv<'_> {
        ConnEnv {
            key: 0,
            limits: &self.limits,
            now,
            wall: self.started,
            incoming: &mut self.incoming,
            counters: &mut self.counters,
            gate: &self.gate,
            inbound: &mut self.inbound,
        }
    }

    /// A connection that has completed its upgrade, its 101 already read by the peer.
    fn open(&mut self) -> Connection<Pipe> {
        let pipe = Pipe { window: usize::MAX, ..Pipe::default() };
        let mut conn = Connection::accepted(pipe, false, (0, 0), 0, self.limits.handshake);
        conn.wire.from_peer.extend(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        assert_eq!(conn.ready(true, false, &mut self.cx(0)), Outcome::Keep);
        let reply = String::from_utf8(std::mem::take(&mut conn.wire.to_peer)).unwrap();
        assert!(reply.starts_with("HTTP/1.1 101"), "{reply}");
        assert!(reply.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "the RFC's example accept key");
        assert!(matches!(self.incoming.drain(..).collect::<Vec<_>>()[..], [Incoming::Opened(_)]));
        assert!(conn.is_open());
        conn.wire.window = 0;
        conn
    }

    /// Flushes as the shard does at the end of a pass.
    fn flush(&mut self, conn: &mut Connection<Pipe>, now: Tick) -> Outcome {
        if conn.claim_flush() {
            conn.flush(&mut self.cx(now))
        } else {
            Outcome::Keep
        }
    }
}

/// A frame as a client sends it: masked.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend(reason.as_bytes());
    payload
}

fn frames(count: usize) -> Vec<SharedFrame> {
    (0..count).map(|i| SharedFrame::text(format!("message number {i}"))).collect()
}

fn concat(frames: &[&SharedFrame]) -> Vec<u8> {
    frames.iter().flat_map(|frame| frame.as_bytes().iter().copied()).collect()
}

#[test]
fn a_slow_reader_gets_every_byte_of_many_shared_frames_in_order() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    let sent = frames(100);
    for frame in &sent {
        assert_eq!(conn.send(frame, 1, &shard.limits), Delivery::Queued);
    }
    // The socket takes 7 bytes a pass: every frame is split across writes.
    for pass in 0.. {
        conn.wire.window = 7;
        assert_eq!(shard.flush(&mut conn, 1), Outcome::Keep);
        if conn.out.is_empty() {
            break;
        }
        assert!(conn.interest_change() == Some(true) || conn.has(REGISTERED_WRITABLE), "pass {pass}");
        conn.interest_synced(true);
        // WRITABLE: the shard lists it for the next flush.
        conn.ready(false, true, &mut shard.cx(1));
    }
    assert_eq!(conn.wire.to_peer, concat(&sent.iter().collect::<Vec<_>>()));
    assert_eq!(conn.interest_change(), Some(false), "drained: WRITABLE is no longer wanted");
}

#[test]
fn a_thousand_receivers_of_the_same_frames_finish_at_their_own_pace() {
    let mut shard = Shard::new(1 << 20);
    let mut conns: Vec<Connection<Pipe>> = (0..1000).map(|_| shard.open()).collect();
    let sent = frames(20);
    for frame in &sent {
        for conn in &mut conns {
            assert_eq!(conn.send(frame, 1, &shard.limits), Delivery::Queued);
        }
    }
    let expected = concat(&sent.iter().collect::<Vec<_>>());
    let mut passes = vec![0; conns.len()];
    for round in 1..=expected.len() {
        for (i, conn) in conns.iter_mut().enumerate() {
            if conn.out.is_empty() {
                continue;
            }
            // Receiver i drains i % 50 + 1 bytes a round.
            conn.wire.window = i % 50 + 1;
            conn.set(NEEDS_FLUSH, true);
            shard.flush(conn, 1);
            passes[i] = round;
        }
    }
    for (i, conn) in conns.iter().enumerate() {
        assert_eq!(conn.wire.to_peer, expected, "receiver {i}");
        assert!(conn.out.is_empty());
    }
    assert!(passes[0] > passes[49], "the slowest finished last");
}

#[test]
fn a_reply_queued_between_shared_frames_keeps_its_place() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    let shared = frames(2);
    let reply = SharedFrame::text("just for you");
    conn.send(&shared[0], 1, &shard.limits);
    conn.send(&reply, 1, &shard.limits);
    conn.send(&shared[1], 1, &shard.limits);
    conn.wire.window = usize::MAX;
    shard.flush(&mut conn, 1);
    assert_eq!(conn.wire.to_peer, concat(&[&shared[0], &reply, &shared[1]]));
}

#[test]
fn a_pong_takes_its_place_behind_what_is_queued() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    let shared = frames(1);
    conn.send(&shared[0], 1, &shard.limits);
    conn.wire.from_peer.extend(client_frame(0x89, b"are you there"));
    conn.ready(true, false, &mut shard.cx(1));
    conn.wire.window = usize::MAX;
    shard.flush(&mut conn, 1);
    let mut expected = shared[0].as_bytes().to_vec();
    expected.extend(b"\x8a\x0dare you there");
    assert_eq!(conn.wire.to_peer, expected);
}

#[test]
fn replies_to_messages_before_a_close_go_out_before_the_close_reply() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    conn.wire.window = usize::MAX;
    conn.wire.from_peer.extend(client_frame(0x81, b"hi"));
    conn.wire.from_peer.extend(client_frame(0x88, &close_payload(1000, "bye")));
    // The message comes out first; the close waits until the handler has answered it.
    assert_eq!(conn.ready(true, false, &mut shard.cx(1)), Outcome::ReadAgain);
    assert!(matches!(&shard.incoming[..], [Incoming::Message(Message::Text(text))] if text.as_str() == "hi"));
    shard.incoming.clear();
    let answer = SharedFrame::text("answer to hi");
    assert_eq!(conn.send(&answer, 1, &shard.limits), Delivery::Queued);
    assert_eq!(conn.ready(true, false, &mut shard.cx(1)), Outcome::Keep);
    assert!(!conn.is_open(), "closing");
    // Our reply, then the close reply; the handshake is complete, so the server closes.
    assert_eq!(shard.flush(&mut conn, 1), Outcome::Remove);
    let mut expected = answer.as_bytes().to_vec();
    expected.extend(b"\x88\x05\x03\xe8bye");
    assert_eq!(conn.wire.to_peer, expected);
}

#[test]
fn a_consumer_past_the_limit_is_evicted_and_others_are_not() {
    let mut shard = Shard::new(300);
    let mut slow = shard.open();
    let mut fast = shard.open();
    fast.wire.window = usize::MAX;
    let sent = frames(20); // 19 or 20 bytes each
    let mut evicted_at = None;
    for (i, frame) in sent.iter().enumerate() {
        if slow.send(frame, 1, &shard.limits) == Delivery::Evicted {
            evicted_at.get_or_insert(i);
        }
        assert_eq!(fast.send(frame, 1, &shard.limits), Delivery::Queued);
        shard.flush(&mut fast, 1);
    }
    let evicted_at = evicted_at.expect("the slow consumer was evicted");
    assert!(slow.out.owed() <= 300 + 17, "it owes at most the limit and its close frame");
    assert_eq!(slow.send(&sent[0], 1, &shard.limits), Delivery::NotOpen, "nothing more is queued");
    // Once it reads, it gets what was queued before the eviction, then the 1008.
    slow.wire.window = usize::MAX;
    shard.flush(&mut slow, 1);
    let mut expected = concat(&sent[..evicted_at].iter().collect::<Vec<_>>());
    expected.extend(b"\x88\x0f\x03\xf0slow consumer");
    assert_eq!(slow.wire.to_peer, expected);
    assert_eq!(fast.wire.to_peer, concat(&sent.iter().collect::<Vec<_>>()));
}

#[test]
fn an_idle_connection_gives_its_memory_back() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    conn.wire.window = usize::MAX;
    conn.wire.from_peer.extend(client_frame(0x81, b"hello"));
    conn.ready(true, false, &mut shard.cx(1));
    for frame in &frames(3) {
        conn.send(frame, 1, &shard.limits);
    }
    shard.flush(&mut conn, 1);
    assert!(matches!(conn.phase, Phase::Open(Some(_))) && conn.out.holds_memory());
    assert!(conn.claim_sweep());
    assert!(conn.sweep_buffers(), "active this tick: keeps its buffers");
    assert!(!conn.sweep_buffers(), "quiet for a tick: gives them back");
    assert!(matches!(conn.phase, Phase::Open(None)) && !conn.out.holds_memory());
    // And reads again afterwards, with fresh state.
    conn.wire.from_peer.extend(client_frame(0x81, b"again"));
    conn.ready(true, false, &mut shard.cx(2));
    assert_eq!(shard.incoming.len(), 2);
}

#[test]
fn timers_ping_a_silent_peer_then_close_it() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    conn.wire.window = usize::MAX;
    let ping_at = conn.on_timer(&shard.limits, 0).unwrap();
    assert_eq!(ping_at, shard.limits.ping);
    let next = conn.on_timer(&shard.limits, ping_at).unwrap();
    shard.flush(&mut conn, ping_at);
    assert_eq!(conn.wire.to_peer, [0x89, 0x00]);
    // Silent until the idle timeout: a 1001.
    let mut at = next;
    while conn.is_open() {
        at = conn.on_timer(&shard.limits, at).unwrap();
    }
    assert_eq!(at, shard.limits.idle + shard.limits.close);
    conn.wire.to_peer.clear();
    shard.flush(&mut conn, at);
    // A ping every interval while it stays silent, then the close frame.
    let close = b"\x88\x0e\x03\xe9idle timeout";
    let (pings, rest) = conn.wire.to_peer.split_at(conn.wire.to_peer.len() - close.len());
    assert_eq!(rest, close);
    assert!(!pings.is_empty() && pings.chunks(2).all(|ping| ping == [0x89, 0x00]));
    assert_eq!(conn.on_timer(&shard.limits, at), None, "close deadline passed: removed");
}

#[test]
fn a_protocol_error_closes_after_earlier_replies_and_shuts_the_write_side() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    conn.wire.window = usize::MAX;
    // An unmasked client frame is a protocol error.
    conn.wire.from_peer.extend(b"\x81\x02hi");
    conn.ready(true, false, &mut shard.cx(1));
    let Some(Incoming::Failed(code, reason)) = shard.incoming.pop() else { panic!("no failure") };
    assert_eq!(code, CloseCode::Protocol);
    conn.close(code, reason, 1, &shard.limits);
    assert_eq!(shard.flush(&mut conn, 1), Outcome::Keep, "waits for the peer's EOF");
    assert!(conn.wire.to_peer.starts_with(b"\x88"));
    assert!(conn.wire.write_shut);
    conn.wire.peer_closed = true;
    assert_eq!(conn.ready(true, false, &mut shard.cx(1)), Outcome::Remove);
}

#[test]
fn a_paced_delivery_leaves_nothing_to_sweep() {
    let mut shard = Shard::new(1 << 20);
    let mut conn = shard.open();
    conn.wire.window = usize::MAX;
    for frame in &frames(3) {
        conn.send(frame, 1, &shard.limits);
        shard.flush(&mut conn, 1);
        assert!(!conn.claim_sweep(), "one frame a pass waits in the inline slot: nothing to give back");
    }
    assert_eq!(conn.wire.to_peer.len(), frames(3).iter().map(SharedFrame::len).sum::<usize>());
}

mod waiting;
