//! `tokio-peer`: the reference peer `scripts/compare.sh` measures wshub against.
//!
//! It is a broadcast WebSocket server written the way a Rust user would write one with the
//! usual crates after reading their docs and examples: tokio's multi-thread runtime with
//! default settings, tokio-tungstenite's `accept_async_with_config`, one reader task and
//! one writer task per connection, and a `tokio::sync::broadcast` channel that carries
//! every text or binary message received to every connection, the sender included (the
//! same work as `wshub --relay`). A receiver that lags behind the channel is logged and
//! its connection dropped, as typical code does.
//!
//! It is deliberately *not* optimized: no custom allocator, no buffer pooling, no hand
//! rolled framing, no runtime tuning. The comparison answers "what does wshub buy me over
//! the straightforward thing?", so the peer must be the straightforward thing and not a
//! second attempt at wshub. The one knob is the one a careful user does turn:
//! `--read-buffer default` keeps tungstenite's `WebSocketConfig` defaults (128 KiB read
//! and write buffers per connection); `--read-buffer 4k` is the tuned variant with 4 KiB
//! buffers. `--echo` sends each message back to its sender only (like `wshub --echo`).
//! Ping/pong and close handshakes are left to tungstenite.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Reference tokio + tokio-tungstenite broadcast peer for wshub's benchmarks")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the bound address goes to stderr).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Per-connection buffers: tungstenite's defaults, or 4 KiB (the tuned variant).
    #[arg(long, value_enum, default_value_t = Buffers::Default)]
    read_buffer: Buffers,
    /// Echo each message to its sender instead of broadcasting it.
    #[arg(long)]
    echo: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Buffers {
    Default,
    #[value(name = "4k")]
    FourK,
}

/// Messages a slow connection may fall behind the broadcast before it is dropped.
const CHANNEL_CAPACITY: usize = 1024;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = match args.read_buffer {
        Buffers::Default => None,
        Buffers::FourK => Some(
            WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096).max_write_buffer_size(1 << 20),
        ),
    };
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let (hub, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically out of file descriptors: wait for some to free up.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Subscribed before the handshake: once a client has its 101, it gets every
        // message broadcast after that.
        let feed = if args.echo { None } else { Some(hub.subscribe()) };
        tokio::spawn(connection(stream, config, hub.clone(), feed));
    }
}

/// One connection: this task reads, a spawned task writes. When either side ends (the
/// peer closed, a send failed, the connection lagged), the other is stopped and both
/// halves are dropped, which closes the socket. `feed` is the broadcast subscription, or
/// `None` in echo mode.
async fn connection(
    stream: TcpStream,
    config: Option<WebSocketConfig>,
    hub: broadcast::Sender<Message>,
    feed: Option<broadcast::Receiver<Message>>,
) {
    let Ok(websocket) = tokio_tungstenite::accept_async_with_config(stream, config).await else {
        return;
    };
    let (mut sink, mut source) = websocket.split();
    let mut echo_tx = None;
    let mut writer = match feed {
        Some(mut feed) => tokio::spawn(async move {
            loop {
                let message = match feed.recv().await {
                    Ok(message) => message,
                    Err(RecvError::Lagged(missed)) => {
                        eprintln!("dropping a connection that fell {missed} messages behind");
                        break;
                    }
                    Err(RecvError::Closed) => break,
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        }),
        None => {
            // Echo: the reader hands messages to this connection's own writer.
            let (tx, mut rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
            echo_tx = Some(tx);
            tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            })
        }
    };
    let reader = async move {
        while let Some(Ok(message)) = source.next().await {
            if !(message.is_text() || message.is_binary()) {
                continue; // pings, pongs and closes are handled by tungstenite
            }
            match &echo_tx {
                Some(echo) => {
                    if echo.send(message).await.is_err() {
                        break;
                    }
                }
                None => {
                    // Err only when no connection is subscribed: nothing to deliver then.
                    let _ = hub.send(message);
                }
            }
        }
    };
    tokio::select! {
        _ = reader => writer.abort(),
        _ = &mut writer => {} // lagged, or the socket failed: drop the connection
    }
}
