//! `tokio-peer`: the server `scripts/compare.sh` measures wshub against. It is written the
//! way a Rust user would write a broadcast WebSocket server with the usual crates, not
//! tuned: tokio's multi-thread runtime, tokio-tungstenite, one reader task and one writer
//! task per connection, and a `tokio::sync::broadcast` channel that carries every text or
//! binary message received to every connection (the sender included), like `wshub --relay`.
//!
//! `--read-buffer default` keeps tungstenite's defaults (a 128 KiB read buffer per
//! connection); `--read-buffer 4k` is the tuned variant with 4 KiB buffers. `--echo` sends
//! each message back to its sender only, like `wshub --echo`.

use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Buffer sizes: `default` (tungstenite's) or `4k`.
    #[arg(long, default_value = "default")]
    read_buffer: String,
    /// Echo each message to its sender instead of broadcasting it.
    #[arg(long)]
    echo: bool,
}

/// Messages a slow connection may fall behind before it is dropped (as typical code does
/// on `RecvError::Lagged`).
const CHANNEL_CAPACITY: usize = 1024;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = match args.read_buffer.as_str() {
        "default" => None,
        "4k" => Some(
            WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096).max_write_buffer_size(1 << 20),
        ),
        other => {
            eprintln!("tokio-peer: --read-buffer is default or 4k, not {other}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let (broadcast, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: wait for some to free up.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let broadcast = broadcast.clone();
        let echo = args.echo;
        // Subscribed before the handshake completes: once a client sees its 101, it gets
        // every message broadcast after that.
        let mut receiver = broadcast.subscribe();
        tokio::spawn(async move {
            let Ok(websocket) = tokio_tungstenite::accept_async_with_config(stream, config).await else { return };
            let (mut sink, mut source) = websocket.split();
            if echo {
                while let Some(Ok(message)) = source.next().await {
                    if (message.is_text() || message.is_binary()) && sink.send(message).await.is_err() {
                        break;
                    }
                }
                return;
            }
            let writer = tokio::spawn(async move {
                loop {
                    match receiver.recv().await {
                        Ok(message) => {
                            if sink.send(message).await.is_err() {
                                break;
                            }
                        }
                        Err(RecvError::Lagged(missed)) => {
                            eprintln!("dropping a connection that fell {missed} messages behind");
                            break;
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            });
            while let Some(Ok(message)) = source.next().await {
                if message.is_text() || message.is_binary() {
                    let _ = broadcast.send(message);
                }
            }
            writer.abort();
        });
    }
}
