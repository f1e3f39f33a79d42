//! Deliveries across shards over real sockets: broadcast, per-user and per-connection
//! sends reach exactly who they should, once (an id of another node, or with bits past
//! 53, reaches nobody); many connections spread over shards; a slow reader is evicted
//! without holding anyone else back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::thread;

use common::*;
use tungstenite::Message;
use wshub::{Context, Handler};

/// Tells each client its connection id and shard on open; routes `user:NAME:TEXT` to a
/// user and `conn:ID:TEXT` to a connection; anything else is broadcast.
struct Router;

impl Handler for Router {
    fn on_open(&mut self, cx: &mut Context<'_>) {
        let hello = format!("{} {}", cx.conn().as_u64(), cx.conn().shard());
        cx.reply(Message::text(hello));
    }

    fn on_message(&mut self, cx: &mut Context<'_>, message: Message) {
        let text = message.to_text().unwrap_or_default().to_string();
        let parts: Vec<&str> = text.splitn(3, ':').collect();
        let routed = match parts.as_slice() {
            ["user", user, body] => cx.send_to_user(user, Message::text(*body)),
            ["conn", id, body] => cx.send_to(wshub::ConnId::from_u64(id.parse().unwrap()), Message::text(*body)),
            _ => cx.broadcast(message),
        };
        if let Err(refused) = routed {
            cx.reply(Message::text(format!("refused: {refused}")));
        }
    }
}

/// A connected client and what the server told it on open.
struct Peer {
    client: Client,
    id: u64,
    shard: usize,
}

fn join(addr: std::net::SocketAddr, path: &str) -> Peer {
    let mut client = connect(addr, path);
    let hello = next_text(&mut client);
    let (id, shard) = hello.split_once(' ').unwrap();
    Peer { client, id: id.parse().unwrap(), shard: shard.parse().unwrap() }
}

#[test]
fn a_broadcast_reaches_every_connection_exactly_once_across_shards() {
    let server = start(config(4), |_| Router);
    let mut peers: Vec<Peer> = (0..40).map(|_| join(server.local_addr(), "/")).collect();
    let shards: BTreeSet<usize> = peers.iter().map(|p| p.shard).collect();
    assert!(shards.len() >= 2, "40 clients should land on several shards, got {shards:?}");

    peers[7].client.send(Message::text("hello all")).unwrap();
    // A second broadcast from outside: if the first were duplicated anywhere, a copy
    // would show up where this one is expected.
    let hub = server.hub();
    for peer in &mut peers {
        assert_eq!(next_text(&mut peer.client), "hello all");
    }
    hub.broadcast(Message::text("marker")).unwrap();
    for peer in &mut peers {
        assert_eq!(next_text(&mut peer.client), "marker", "no duplicate before the marker");
    }
    stop(server);
}

#[test]
fn a_user_send_reaches_all_of_that_users_connections_and_nobody_else() {
    let server = start(config(4), |_| Router);
    let addr = server.local_addr();
    let mut ann: Vec<Peer> = (0..6).map(|_| join(addr, "/?user=ann")).collect();
    let mut bob: Vec<Peer> = (0..3).map(|_| join(addr, "/?user=bob")).collect();
    let mut eve = join(addr, "/?user=eve");

    eve.client.send(Message::text("user:ann:for ann")).unwrap();
    server.hub().send_to_user("bob", Message::text("for bob")).unwrap();
    for peer in &mut ann {
        assert_eq!(next_text(&mut peer.client), "for ann");
    }
    for peer in &mut bob {
        assert_eq!(next_text(&mut peer.client), "for bob");
    }
    server.hub().broadcast(Message::text("marker")).unwrap();
    for peer in ann.iter_mut().chain(bob.iter_mut()).chain([&mut eve]) {
        assert_eq!(next_text(&mut peer.client), "marker", "nothing else was delivered");
    }
    stop(server);
}

#[test]
fn a_connection_send_crosses_shards_and_stale_ids_match_nobody() {
    let server = start(config(4), |_| Router);
    let addr = server.local_addr();
    let mut peers: Vec<Peer> = (0..16).map(|_| join(addr, "/")).collect();
    let by_shard: BTreeMap<usize, usize> = peers.iter().enumerate().map(|(i, p)| (p.shard, i)).collect();
    let (from, to) = (*by_shard.values().next().unwrap(), *by_shard.values().last().unwrap());
    let target = peers[to].id;
    peers[from].client.send(Message::text(format!("conn:{target}:direct"))).unwrap();
    assert_eq!(next_text(&mut peers[to].client), "direct");

    // The target leaves; a new connection may take its slot, but not its id.
    let gone = peers.remove(to);
    drop(gone);
    eventually("connection released", || server.connection_count() == 15);
    let mut newcomer = join(addr, "/");
    server.hub().send_to(wshub::ConnId::from_u64(target), Message::text("stale")).unwrap();
    // A live connection's id with another instance's node number, or with bits past the
    // 53 an id has: neither is that connection.
    let live = peers[0].id;
    server.hub().send_to(wshub::ConnId::from_u64(live | 1 << 43), Message::text("node 1")).unwrap();
    server.hub().send_to(wshub::ConnId::from_u64(live | 1 << 53), Message::text("past 53 bits")).unwrap();
    server.hub().broadcast(Message::text("marker")).unwrap();
    for peer in peers.iter_mut().chain([&mut newcomer]) {
        assert_eq!(next_text(&mut peer.client), "marker", "the stale id reached nobody");
    }
    stop(server);
}

#[test]
fn two_thousand_connections_over_four_shards_all_work() {
    let server = start(config(4), |_| Router);
    let addr = server.local_addr();
    let mut peers: Vec<Peer> = (0..2000).map(|_| join(addr, "/")).collect();
    let mut per_shard = [0usize; 4];
    for peer in &peers {
        per_shard[peer.shard] += 1;
    }
    assert!(per_shard.iter().all(|&n| n > 0), "every shard holds some: {per_shard:?}");
    assert_eq!(server.connection_count(), 2000);
    for (i, peer) in peers.iter_mut().enumerate() {
        let id = peer.id;
        peer.client.send(Message::text(format!("conn:{id}:{i}"))).unwrap();
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        assert_eq!(next_text(&mut peer.client), i.to_string());
    }
    drop(peers);
    eventually("all released", || server.connection_count() == 0);
    stop(server);
}

#[test]
fn a_slow_reader_is_evicted_while_another_keeps_receiving() {
    let mut config = config(2);
    config.max_message_size = 16 * 1024;
    config.max_pending_bytes = 64 * 1024;
    config.close_timeout = std::time::Duration::from_secs(30);
    let server = start(config, |_| wshub::Echo);
    let addr = server.local_addr();

    // The slow reader: a tiny receive window, and it reads nothing until the end.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let slow_stream: TcpStream = socket.into();
    let mut slow = upgrade_raw(slow_stream);

    let mut fast = connect(addr, "/");
    // ~12 MB in all: far more than the kernel can buffer between the server and the slow
    // reader, even with the server's send buffer autotuned to its 4 MiB maximum.
    let count: usize = 1500;
    let payload = "x".repeat(8 * 1024);
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    // Reads up to the end marker (each read bounded by the client's PATIENCE timeout), so
    // a duplicate or any other extra message shows in the count instead of going unread.
    let reader = thread::spawn(move || {
        let mut received = 0;
        loop {
            let text = next_text(&mut fast);
            if text == "end" {
                return received;
            }
            assert!(text.starts_with(&format!("{received}:")), "message {received} in order");
            received += 1;
            seen.store(received, std::sync::atomic::Ordering::Release);
        }
    });
    // Paced to the fast reader (at most 4 messages ahead of it), so only the slow reader
    // can fall behind by more than `max_pending_bytes`, however loaded the machine is.
    let hub = server.hub();
    for i in 0..count {
        hub.broadcast(Message::text(format!("{i}:{payload}"))).unwrap();
        let ahead_limit = i.saturating_sub(4);
        eventually("the fast reader keeps up", || progress.load(std::sync::atomic::Ordering::Acquire) >= ahead_limit);
    }
    hub.broadcast(Message::text("end")).unwrap();
    assert_eq!(reader.join().unwrap(), count, "the fast reader got everything, once, and nothing else");

    // Now the slow reader drains what it was sent and finds why it was cut off.
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(raw_close_code(&mut slow), Some(1008));
    stop(server);
}
