//! The shipped examples, run as they are (their `app()`) against real sockets.

mod common;

#[path = "../examples/chat.rs"]
mod chat;
#[path = "../examples/use_case.rs"]
mod use_case;

use std::net::TcpListener;
use std::path::PathBuf;

use common::postgres_server::PostgresServer;
use common::*;
use serde_json::{json, Value};
use use_case::Database;
use wshub::Server;

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

/// The use case on a SQLite file: what `scenario` checks, then a restart on the same file
/// keeps the users, and a database error is `unavailable`, not a panic.
#[test]
fn use_case_on_sqlite() {
    let dir = TempDir::new("use-case-sqlite");
    let database = Database::Sqlite(dir.0.join("users.db"));
    let mut behind = Behind::Sqlite(rusqlite::Connection::open(dir.0.join("users.db")).unwrap());
    let (server, mut client) = scenario(&database, &mut behind);
    let mode: String = match &behind {
        Behind::Sqlite(db) => db.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap(),
        Behind::Postgres(_) => unreachable!(),
    };
    assert_eq!(mode, "wal", "the app puts the file in WAL mode");
    refused_without_its_table(server, &mut client, &mut behind);
}

/// The same on a private PostgreSQL; and a server that goes away and comes back: requests
/// meanwhile are `unavailable`, and the next one after it is back succeeds.
#[test]
fn use_case_on_postgres() {
    let Some(mut postgres) = PostgresServer::start() else { return };
    let database = Database::Postgres(postgres.url());
    let mut behind = Behind::Postgres(postgres.client());
    let (server, mut client) = scenario(&database, &mut behind);
    postgres.stop();
    assert_eq!(client.call(create("Gus", "gus@example.com"), 40)["error"]["code"], "unavailable");
    postgres.restart();
    let gus = client.call(create("Gus", "gus@example.com"), 41);
    assert_eq!(gus["result"]["email"], "gus@example.com", "a new connection once the server is back: {gus}");
    let mut behind = Behind::Postgres(postgres.client());
    assert_eq!(behind.count(), 14);
    refused_without_its_table(server, &mut client, &mut behind);
}

/// A database that cannot be opened fails the start with a message naming it.
#[test]
fn use_case_refuses_to_start_without_its_database() {
    let dir = TempDir::new("use-case-missing");
    let missing = Database::Sqlite(dir.0.join("no-such-directory").join("users.db"));
    let error = use_case::app(&missing).err().expect("no SQLite file can be made there").to_string();
    assert!(error.contains("no-such-directory"), "{error}");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nobody_there = Database::Postgres(format!("postgres://wshub@127.0.0.1:{port}/postgres"));
    let error = use_case::app(&nobody_there).err().expect("no PostgreSQL listens there").to_string();
    assert!(error.contains("PostgreSQL"), "{error}");
    let error = use_case::app(&Database::Postgres("postgres://host:notaport/db".into())).err().expect("a bad URL");
    assert!(error.to_string().contains("DATABASE_URL"), "{error}");
}

fn create(name: &str, email: &str) -> Value {
    json!({"type": "request", "method": "create_user", "params": {"name": name, "email": email}})
}

/// What both databases must do: create with the database's id, refuse a duplicate email
/// (also one the app never saw, and also when four clients race for it on several
/// workers), refuse bad input, and keep the users across a restart of the app. Returns
/// the restarted app and a client of it.
fn scenario(database: &Database, behind: &mut Behind) -> (Server, JsonClient) {
    let server = use_case::app(database).unwrap().start(config(2)).unwrap();
    let addr = server.local_addr();
    let mut client = JsonClient::connect(addr, "/");
    let created = client.call(create(" Ann ", "Ann@Example.com"), 1);
    assert_eq!(created["result"], json!({"id": 1, "name": "Ann", "email": "ann@example.com"}));
    let duplicate = client.call(create("Ann Again", "ann@example.com"), 2);
    assert_eq!(duplicate["error"], json!({"code": "conflict", "message": "a user with email ann@example.com exists"}));
    let invalid = client.call(create("A", "ann@example.com"), 3);
    assert_eq!(invalid["error"], json!({"code": "invalid_params", "message": "name must be 2 to 40 characters"}));
    let invalid = client.call(create("Bob", "bob-at-example"), 4);
    assert_eq!(invalid["error"]["code"], "invalid_params");
    let missing = client.call(json!({"type": "request", "method": "create_user", "params": {"name": "Cy"}}), 5);
    assert_eq!(missing["error"]["code"], "invalid_params");

    // The database decides: a row written behind the app's back is a conflict too.
    behind.execute("INSERT INTO users (name, email) VALUES ('Dee', 'dee@example.com')");
    assert_eq!(client.call(create("Dee", "dee@example.com"), 6)["error"]["code"], "conflict");

    // Four clients (on both shards, so on more than one worker) ask for the same email at
    // once: exactly one gets it.
    let mut racers: Vec<JsonClient> = (0..4).map(|_| JsonClient::connect(addr, "/")).collect();
    for round in 0..10u64 {
        let email = format!("racer{round}@example.com");
        for racer in racers.iter_mut() {
            let mut frame = create("Racer", &email);
            frame["id"] = (100 + round).into();
            racer.send(frame);
        }
        let answers: Vec<Value> = racers.iter_mut().map(|racer| racer.next()).collect();
        let won: Vec<&Value> = answers.iter().filter(|a| a.get("result").is_some()).collect();
        assert_eq!(won.len(), 1, "one creation of {email}: {answers:?}");
        assert!(won[0]["result"]["id"].as_i64().is_some_and(|id| id > 1), "an id from the database: {answers:?}");
        let conflicts = answers.iter().filter(|a| a["error"]["code"] == "conflict").count();
        assert_eq!(conflicts, 3, "the others are refused: {answers:?}");
    }
    assert_eq!(behind.count(), 12, "Ann, Dee and one user per race");
    stop(server);

    // A restart on the same database finds the users there.
    let server = use_case::app(database).unwrap().start(config(2)).unwrap();
    let mut client = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(client.call(create("Ann", "ann@example.com"), 20)["error"]["code"], "conflict");
    let eve = client.call(create("Eve", "eve@example.com"), 21);
    assert!(eve["result"]["id"].as_i64().is_some_and(|id| id > 1), "{eve}");
    assert_eq!(behind.count(), 13);
    (server, client)
}

/// Any other database error (here: the table dropped behind the app) is `unavailable`,
/// and the app keeps answering.
fn refused_without_its_table(server: Server, client: &mut JsonClient, behind: &mut Behind) {
    behind.execute("DROP TABLE users");
    let refused = client.call(create("Fay", "fay@example.com"), 50);
    assert_eq!(
        refused["error"],
        json!({"code": "unavailable", "message": "the user store is unavailable, try again later"})
    );
    let invalid = client.call(create("F", "fay@example.com"), 51);
    assert_eq!(invalid["error"]["code"], "invalid_params", "still answering");
    stop(server);
}

/// The database behind the app, reached directly, as another program would.
enum Behind {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl Behind {
    fn execute(&mut self, sql: &str) {
        match self {
            Behind::Sqlite(db) => db.execute_batch(sql).unwrap(),
            Behind::Postgres(db) => db.batch_execute(sql).unwrap(),
        }
    }

    fn count(&mut self) -> i64 {
        const COUNT: &str = "SELECT count(*) FROM users";
        match self {
            Behind::Sqlite(db) => db.query_row(COUNT, [], |row| row.get(0)).unwrap(),
            Behind::Postgres(db) => db.query_one(COUNT, &[]).unwrap().get(0),
        }
    }
}

/// A fresh directory under the system's temporary one, removed with what it holds (the
/// SQLite file and its -wal and -shm companions).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wshub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
