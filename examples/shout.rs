//! Embedding wshub with your own handler: every text message is upper-cased and sent to
//! every connection; `GET /health` answers over plain HTTP on the same port.
//!
//! Run: `cargo run --example shout -- 127.0.0.1:8080`, then connect with any WebSocket
//! client to `ws://127.0.0.1:8080/?user=ann`.

use wshub::{Config, Context, Handler, HttpResponse, Message, PlainRequest};

/// One per shard; this one keeps a per-shard count to show shard-local state.
struct Shout {
    shouted: u64,
}

impl Handler for Shout {
    fn on_open(&mut self, cx: &mut Context<'_>) {
        let who = cx.user().unwrap_or("someone").to_string();
        cx.reply(Message::text(format!("welcome, {who} (connection {})", cx.conn())));
    }

    fn on_message(&mut self, cx: &mut Context<'_>, message: Message) {
        if let Message::Text(text) = message {
            self.shouted += 1;
            if let Err(refused) = cx.broadcast(Message::text(text.to_uppercase())) {
                cx.reply(Message::text(format!("not everyone heard that: {refused}")));
            }
        }
    }

    fn on_http(&mut self, request: &PlainRequest) -> HttpResponse {
        match request.target.as_str() {
            "/health" => HttpResponse::text(200, "OK", format!("ok, {} shouted here", self.shouted)),
            _ => HttpResponse::not_found(),
        }
    }
}

fn main() -> Result<(), wshub::Error> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let config = Config { listen: listen.parse().expect("an address like 127.0.0.1:8080"), ..Config::default() };
    wshub::run(config, |_shard| Shout { shouted: 0 })
}
