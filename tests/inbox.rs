//! A shard's inbox is bounded: past `inbox_capacity` waiting deliveries, a send to that
//! shard is refused and counted in `/stats` and `/metrics`, and everything that was
//! accepted still arrives, in order. (The HTTP API's 503 for a refusal is a unit test in
//! `src/api.rs`: a held shard could not answer the request.)

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use tungstenite::Message;
use wshub::{Context, Handler, InboxFull};

/// Holds its shard on `hold` until the test says go, so the inbox fills while no one
/// drains it; answers `ready` once it holds.
struct Holder {
    held: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Handler for Holder {
    fn on_message(&mut self, _cx: &mut Context<'_>, message: Message) {
        if message.to_text().ok() == Some("hold") {
            self.held.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
    }
}

#[test]
fn a_full_inbox_refuses_counts_and_keeps_what_it_accepted() {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(release_rx));
    let mut config = config(1);
    config.inbox_capacity = 3;
    let server = start(config, move |_| Holder { held: held_tx.clone(), release: release.clone() });
    let mut receiver = connect(server.local_addr(), "/");
    let mut holder = connect(server.local_addr(), "/");
    holder.send(Message::text("hold")).unwrap();
    held_rx.recv_timeout(PATIENCE).expect("the shard holds");

    let hub = server.hub();
    let sent: Vec<Result<(), InboxFull>> = (0..5).map(|i| hub.broadcast(Message::text(format!("m{i}")))).collect();
    assert_eq!(sent, [Ok(()), Ok(()), Ok(()), Err(InboxFull), Err(InboxFull)]);
    assert_eq!(hub.stats().inbox_refused, [2]);
    assert_eq!(hub.inbox_depths(), [3]);

    release_tx.send(()).unwrap();
    for i in 0..3 {
        assert_eq!(next_text(&mut receiver), format!("m{i}"));
    }
    // Drained: the inbox takes deliveries again, and the next one follows the first three.
    hub.broadcast(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut receiver), "after", "m3 and m4 were refused, not delayed");
    let metrics = http_once(server.local_addr(), "GET", "/metrics", None, "");
    assert!(metrics.body.contains("wshub_inbox_refused_total{shard=\"0\"} 2\n"), "{}", metrics.body);
    stop(server);
}
