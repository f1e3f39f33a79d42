//! The shipped examples, run as they are (their `app()`) against real sockets.

mod common;

#[path = "../examples/chat.rs"]
mod chat;
#[path = "../examples/use_case.rs"]
mod use_case;

use common::*;
use serde_json::json;

#[test]
fn chat_rooms_nicks_and_typing() {
    let server = chat::app().start(config(2)).unwrap();
    let addr = server.local_addr();
    let mut ann = JsonClient::connect(addr, "/?user=ann");
    let mut bob = JsonClient::connect(addr, "/?user=bob");
    for (i, client) in [&mut ann, &mut bob].into_iter().enumerate() {
        client.call(json!({"type": "join", "topic": "room:lobby"}), i as u64);
    }
    bob.call(json!({"type": "join", "topic": "room:lobby:typing"}), 9);
    assert_eq!(ann.call(json!({"type": "nick", "data": {"name": "Annie"}}), 1)["type"], "ack");
    ann.send(json!({"type": "typing", "data": {"room": "lobby"}}));
    assert_eq!(bob.next()["data"], json!({"nick": "Annie"}));
    // What the handler published reaches the sender before the ack that follows its return.
    ann.send(json!({"type": "say", "id": 2, "data": {"room": "lobby", "text": "hello"}}));
    for client in [&mut ann, &mut bob] {
        let frame = client.next();
        assert_eq!(frame["topic"], "room:lobby");
        assert_eq!(frame["data"], json!({"nick": "Annie", "text": "hello"}));
        assert_eq!(frame["from"], "ann");
    }
    assert_eq!(ann.next(), json!({"type": "ack", "id": 2}));
    let refused = bob.call(json!({"type": "say", "data": {"room": "lobby", "text": " "}}), 3);
    assert_eq!(refused["code"], "invalid_params");
    let refused = bob.call(json!({"type": "nick", "data": {"nom": "x"}}), 4);
    assert_eq!(refused["code"], "invalid_params", "a missing field is invalid input");
    stop(server);
}

#[test]
fn use_case_validates_creates_and_refuses_duplicates() {
    let server = use_case::app().start(config(2)).unwrap();
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let create = |name: &str, email: &str| json!({"type": "request", "method": "create_user", "params": {"name": name, "email": email}});
    let created = client.call(create(" Ann ", "Ann@Example.com"), 1);
    assert_eq!(created["result"], json!({"id": 1, "name": "Ann", "email": "ann@example.com"}));
    let duplicate = client.call(create("Ann Again", "ann@example.com"), 2);
    assert_eq!(duplicate["error"]["code"], "conflict");
    let invalid = client.call(create("A", "ann@example.com"), 3);
    assert_eq!(invalid["error"], json!({"code": "invalid_params", "message": "name must be 2 to 40 characters"}));
    let invalid = client.call(create("Bob", "bob-at-example"), 4);
    assert_eq!(invalid["error"]["code"], "invalid_params");
    let missing = client.call(json!({"type": "request", "method": "create_user", "params": {"name": "Cy"}}), 5);
    assert_eq!(missing["error"]["code"], "invalid_params");
    stop(server);
}
