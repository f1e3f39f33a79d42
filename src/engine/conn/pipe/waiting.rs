//! The connection core waiting for the cluster, in memory: an upgrade whose ticket is
//! being taken from Redis, and an HTTP answer that waits for Redis.

use super::*;
use crate::auth::Gate;
use crate::engine::conn::{Resumption, Waiting};

const RECORD: &str = r#"{"user":"cy","subs":null,"pubs":null,"admin":false}"#;
const TICKET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

/// A shard whose tickets live in the cluster.
fn clustered() -> Shard {
    let mut shard = Shard::new(1 << 20);
    shard.gate = Gate::new(&AuthSettings { tickets: true, ..AuthSettings::default() }).in_cluster();
    shard
}

/// A connection that sent an upgrade with a cluster ticket (and a frame right behind
/// it) at tick 5, and now waits for the verdict.
fn admitting(shard: &mut Shard) -> Connection<Pipe> {
    let pipe = Pipe { window: usize::MAX, ..Pipe::default() };
    let mut conn = Connection::accepted(pipe, false, (0, 0), 0, shard.limits.handshake);
    let request = format!(
        "GET /?ticket={TICKET} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.wire.from_peer.extend(request.as_bytes());
    conn.wire.from_peer.extend(client_frame(0x81, b"early"));
    assert_eq!(conn.ready(true, false, &mut shard.cx(5)), Outcome::Keep);
    assert!(conn.wire.to_peer.is_empty(), "no answer before the verdict");
    let asked: Vec<Incoming> = shard.incoming.drain(..).collect();
    assert!(matches!(&asked[..], [Incoming::TakeTicket(ticket)] if ticket == TICKET), "{asked:?}");
    assert_eq!(conn.waiting(), Some(Waiting::Admission));
    conn
}

fn texts(incoming: Vec<Incoming>) -> Vec<String> {
    incoming
        .into_iter()
        .map(|item| match item {
            Incoming::Opened(_) => "opened".to_string(),
            Incoming::Message(message) => message.into_text().unwrap().to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn an_upgrade_waits_for_its_ticket_reading_nothing_then_opens_as_the_ticket_says() {
    let mut shard = clustered();
    let mut conn = admitting(&mut shard);
    assert_eq!(conn.take_reschedule(&shard.limits), Some(5 + shard.limits.handshake), "the wait has a deadline");
    // What the peer sends meanwhile stays in the socket.
    conn.wire.from_peer.extend(client_frame(0x81, b"later"));
    assert_eq!(conn.ready(true, false, &mut shard.cx(6)), Outcome::Keep);
    assert_eq!(conn.wire.from_peer.len(), 11, "not read");
    assert!(shard.incoming.is_empty() && conn.wire.to_peer.is_empty());

    let verdict = shard.gate.admit_taken(Some(RECORD));
    assert_eq!(conn.resume(Resumption::Admission(verdict), &mut shard.cx(7)), Outcome::Keep);
    let reply = String::from_utf8(std::mem::take(&mut conn.wire.to_peer)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 101") && reply.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{reply}");
    assert_eq!(conn.user.as_deref(), Some("cy"));
    assert!(conn.is_open() && conn.waiting().is_none());
    let incoming = shard.incoming.drain(..).collect();
    assert_eq!(texts(incoming), ["opened", "early", "later"], "the frames behind the request, in order");
    assert_eq!(shard.counters.handshakes, 1);
}

#[test]
fn a_refused_or_unavailable_ticket_is_answered_and_the_connection_closed() {
    let unknown = clustered().gate.admit_taken(None);
    for (verdict, status) in [(unknown, 401), (Err(Gate::unavailable()), 503)] {
        let mut shard = clustered();
        let mut conn = admitting(&mut shard);
        conn.resume(Resumption::Admission(verdict), &mut shard.cx(7));
        let reply = String::from_utf8(std::mem::take(&mut conn.wire.to_peer)).unwrap();
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        assert!(conn.wire.write_shut && !conn.was_opened() && shard.incoming.is_empty());
        assert_eq!(
            (shard.counters.handshake_failures, shard.counters.auth_failures),
            (1, u64::from(status == 401)),
            "{status}"
        );
        conn.wire.peer_closed = true;
        assert_eq!(conn.ready(true, false, &mut shard.cx(8)), Outcome::Remove, "lingers until EOF");
    }
}

#[test]
fn a_verdict_that_never_comes_ends_the_wait_at_the_deadline_as_a_failed_handshake() {
    let mut shard = clustered();
    let mut conn = admitting(&mut shard);
    let deadline = conn.take_reschedule(&shard.limits).unwrap();
    assert_eq!(conn.on_timer(&shard.limits, deadline - 1), Some(deadline));
    assert_eq!(conn.on_timer(&shard.limits, deadline), None, "dropped");
    assert!(conn.first_request_pending(), "counted as a failed handshake");
}

#[test]
fn an_answer_the_connection_does_not_wait_for_changes_nothing() {
    let mut shard = clustered();
    let mut open_mode = Shard::new(1 << 20);
    let mut open = open_mode.open();
    let verdict = shard.gate.admit_taken(Some(RECORD));
    assert_eq!(open.resume(Resumption::Admission(verdict), &mut open_mode.cx(1)), Outcome::Keep);
    assert!(open.out.is_empty() && open.is_open() && open.user.is_none());

    let mut conn = admitting(&mut shard);
    let response = HttpResponse::text(200, "OK", "not for an upgrade");
    assert_eq!(conn.resume(Resumption::Response(response), &mut shard.cx(7)), Outcome::Keep);
    assert!(conn.wire.to_peer.is_empty() && conn.waiting() == Some(Waiting::Admission), "still waiting");
}

#[test]
fn an_http_answer_from_the_cluster_goes_out_and_the_next_request_is_read() {
    let mut shard = clustered();
    let pipe = Pipe { window: usize::MAX, ..Pipe::default() };
    let mut conn = Connection::accepted(pipe, false, (0, 0), 0, shard.limits.handshake);
    let request = "POST /api/ticket HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}";
    conn.wire.from_peer.extend(request.as_bytes());
    conn.wire.from_peer.extend(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(conn.ready(true, false, &mut shard.cx(3)), Outcome::Keep);
    assert!(matches!(&shard.incoming.drain(..).collect::<Vec<_>>()[..], [Incoming::Http(r)] if r.method == "POST"));
    assert_eq!(conn.waiting(), Some(Waiting::Response));
    conn.take_reschedule(&shard.limits);
    conn.await_response(9);
    assert_eq!(conn.take_reschedule(&shard.limits), Some(9 + shard.limits.handshake), "waits from now");

    let issued = HttpResponse::json(201, r#"{"ticket":"t"}"#);
    assert_eq!(conn.resume(Resumption::Response(issued), &mut shard.cx(10)), Outcome::Keep);
    let reply = String::from_utf8(std::mem::take(&mut conn.wire.to_peer)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201") && reply.contains("keep-alive"), "{reply}");
    let next = shard.incoming.drain(..).collect::<Vec<_>>();
    assert!(matches!(&next[..], [Incoming::Http(r)] if r.target == "/health"), "{next:?}");
}
