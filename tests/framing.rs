//! RFC 6455 framing over real sockets: limits and the close codes they give,
//! fragmentation, server pings and idle timeouts. (The hub's own JSON protocol,
//! `src/protocol.rs`, is tested in `messaging.rs`.)

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

#[test]
fn an_oversized_message_closes_with_1009() {
    let mut config = config(1);
    config.max_message_size = 1024;
    config.max_pending_bytes = 64 * 1024;
    let server = start(config, |_| wshub::Echo);
    let mut client = connect(server.local_addr(), "/");
    client.send(Message::text("x".repeat(1024))).unwrap();
    assert_eq!(next_text(&mut client).len(), 1024, "exactly the limit is fine");
    client.send(Message::text("x".repeat(1025))).unwrap();
    assert_eq!(close_code(&mut client), CloseCode::Size);
    stop(server);
}

#[test]
fn a_huge_claimed_length_is_refused_before_it_arrives() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    // Header claims 1 GiB; only the header is sent.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.write_all(&header).unwrap();
    assert_eq!(raw_close_code(&mut raw), Some(1009));
    stop(server);
}

#[test]
fn fragments_adding_up_past_the_limit_close_with_1009() {
    let mut config = config(1);
    config.max_message_size = 1000;
    config.max_pending_bytes = 64 * 1024;
    let server = start(config, |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    let mut bytes = frame(0x01, &[b'a'; 600], MASK); // text, not final
    bytes.extend(frame(0x80, &[b'b'; 600], MASK)); // final continuation
    raw.write_all(&bytes).unwrap();
    assert_eq!(raw_close_code(&mut raw), Some(1009));
    stop(server);
}

/// A text message in three fragments (text, continuation, final continuation) with a ping
/// between them, ended by a close: what the echo handler must get is the whole message.
fn fragmented_message_with_a_ping_then_close() -> Vec<u8> {
    let mut bytes = frame(0x01, b"frag", MASK); // text, FIN clear
    bytes.extend(frame(0x89, b"ping in between", MASK)); // control frames may interleave
    bytes.extend(frame(0x00, b"men", MASK)); // continuation, FIN clear
    bytes.extend(frame(0x80, b"ted", MASK)); // continuation, FIN set
    bytes.extend(frame(0x88, &1000u16.to_be_bytes(), MASK));
    bytes
}

/// What the server must answer to [`fragmented_message_with_a_ping_then_close`]: the pong
/// as soon as the ping is read, one unfragmented echo of the reassembled message, and
/// its side of the close handshake.
fn assert_reassembled_answers(frames: &[(u8, Vec<u8>)]) {
    let expected =
        [(0x8A, b"ping in between".to_vec()), (0x81, b"fragmented".to_vec()), (0x88, 1000u16.to_be_bytes().to_vec())];
    assert_eq!(frames, expected, "pong, the whole message once, then the close reply");
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    raw.set_nodelay(true).unwrap();
    // Dribble the bytes, 3 to a segment, so frames and their headers straddle reads.
    // The pause between writes waits for nothing: it only keeps the segments apart.
    for chunk in fragmented_message_with_a_ping_then_close().chunks(3) {
        raw.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_reassembled_answers(&read_frames_to_end(&mut raw));
    stop(server);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    raw.write_all(&frame(0x81, &[0xC3, 0x28, b'o', b'k'], MASK)).unwrap();
    assert_eq!(raw_close_code(&mut raw), Some(1007));
    stop(server);
}

#[test]
fn an_unmasked_frame_closes_with_1002() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    raw.write_all(&frame(0x81, b"no mask", None)).unwrap();
    assert_eq!(raw_close_code(&mut raw), Some(1002));
    stop(server);
}

#[test]
fn a_reserved_opcode_closes_with_1002_after_earlier_messages_are_answered() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    let mut bytes = frame(0x81, b"first", MASK);
    bytes.extend(frame(0x83, b"bad opcode", MASK));
    raw.write_all(&bytes).unwrap();
    let mut everything = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut everything).unwrap();
    let echo = frame(0x81, b"first", None);
    assert!(everything.starts_with(&echo), "the echo goes out before the close");
    assert_eq!(&everything[echo.len()..echo.len() + 4], &[0x88, 16, 0x03, 0xEA]);
    stop(server);
}

#[test]
fn silent_clients_are_pinged_and_kept_while_they_answer() {
    let mut config = config(1);
    config.ping_interval = Duration::from_millis(200);
    config.idle_timeout = Duration::from_millis(600);
    let server = start(config, |_| wshub::Echo);
    let mut client = connect(server.local_addr(), "/");
    client.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut pings = 0;
    let started = std::time::Instant::now();
    // Three idle timeouts long: only the pongs (sent by tungstenite on read) keep it open.
    while started.elapsed() < Duration::from_millis(1800) {
        match client.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("connection lost while answering pings: {e}"),
        }
    }
    assert!(pings >= 3, "pinged every interval while silent, got {pings}");
    client.send(Message::text("still here")).unwrap();
    client.get_mut().set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(next_text(&mut client), "still here");
    stop(server);
}

#[test]
fn a_peer_that_never_answers_is_closed_at_the_idle_timeout() {
    let mut config = config(1);
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(400);
    config.close_timeout = Duration::from_millis(300);
    let server = start(config, |_| wshub::Echo);
    // A raw socket reads nothing and answers nothing.
    let mut raw = raw_upgrade(server.local_addr());
    eventually("idle connection closed", || server.connection_count() == 0);
    assert_eq!(raw_close_code(&mut raw), Some(1001), "told why before being dropped");
    stop(server);
}

#[test]
fn a_fragmented_message_read_together_with_a_close_is_still_answered() {
    let server = start(config(1), |_| wshub::Echo);
    let mut raw = raw_upgrade(server.local_addr());
    // One write: the close frame arrives in the same read as the fragments before it.
    raw.write_all(&fragmented_message_with_a_ping_then_close()).unwrap();
    assert_reassembled_answers(&read_frames_to_end(&mut raw));
    stop(server);
}
