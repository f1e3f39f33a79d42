//! A chat server: rooms are topics (clients `join` them with the built-in frame), and three
//! custom events show the application side:
//! - `nick {name}` stores a display name in the connection's session;
//! - `say {room, text}` checks the text and publishes `{nick, text}` to `room:<room>`;
//! - `typing {room}` publishes a typing notice to `room:<room>:typing`.
//!
//! Run: `cargo run --example chat -- 127.0.0.1:8080`, then from a client:
//! `{"type":"join","topic":"room:lobby"}`, `{"type":"nick","data":{"name":"Ann"}}`,
//! `{"type":"say","id":1,"data":{"room":"lobby","text":"hello"}}`.

use serde::Deserialize;
use serde_json::json;
use wshub::{App, AppContext, AppError, Config};

const MAX_TEXT: usize = 500;

#[derive(Deserialize)]
struct Nick {
    name: String,
}

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Deserialize)]
struct Typing {
    room: String,
}

/// The chat application; `main` runs it, the tests start it on port 0.
pub fn app() -> App {
    App::new()
        .on("nick", |ctx, data| {
            let Nick { name } = serde_json::from_value(data)?;
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 32 {
                return Err(AppError::invalid("a nick is 1 to 32 characters"));
            }
            ctx.set("nick", json!(name));
            Ok(())
        })
        .on("say", |ctx, data| {
            let Say { room, text } = serde_json::from_value(data)?;
            if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
                return Err(AppError::invalid(format!("a message is 1 to {MAX_TEXT} characters")));
            }
            ctx.publish(&format!("room:{room}"), &json!({ "nick": nick(ctx), "text": text }))
        })
        .on("typing", |ctx, data| {
            let Typing { room } = serde_json::from_value(data)?;
            ctx.publish(&format!("room:{room}:typing"), &json!({ "nick": nick(ctx) }))
        })
}

/// The display name: the session's nick, else the connection's user.
fn nick(ctx: &AppContext<'_>) -> String {
    ctx.get("nick").and_then(|nick| nick.as_str().map(String::from)).unwrap_or_else(|| ctx.user().to_string())
}

#[allow(dead_code)] // the tests include this file for `app()`
fn main() -> Result<(), wshub::Error> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    app().run(Config { listen: listen.parse().expect("an address like 127.0.0.1:8080"), ..Config::default() })
}
