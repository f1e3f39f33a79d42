//! wshub: a WebSocket hub that holds very many connections on a few mio poller threads
//! and fans messages out to them.
//!
//! How a connection's bytes flow, one module per step:
//!
//! - [`server`]: binds one `SO_REUSEPORT` listener per shard, starts the shards, handles
//!   SIGINT/SIGTERM.
//! - `shard`: one thread per shard; accepts (`shard::accept`), dispatches readiness
//!   events, fires timers and credential expiries, applies handler effects (deliveries in
//!   `shard::delivery`), flushes output once per loop pass.
//! - `conn`: one connection's phases (handshaking → open → closing): `conn::door` reads
//!   the request and answers it, `conn::frames` turns bytes into messages, `conn` queues
//!   and flushes output and runs its deadlines.
//! - [`front_door`]: each request before the upgrade: upgrade, plain HTTP, or refusal.
//! - [`auth`]: the gate an upgrade passes (origin, token, JWT, ticket) and the policy on
//!   what the identity may do with topics and broadcasts.
//! - `http_api`: the plain HTTP endpoints (web demo, publish API, health, stats,
//!   metrics); [`metrics`]: what the shards count, rendered for `/stats` and `/metrics`.
//! - `wire`: the bytes under tungstenite: a per-shard read buffer fed one whole frame at
//!   a time, so idle connections own no heap memory.
//! - [`handler`]: the engine's hook (`on_open`, `on_message`, `on_close`, `on_http`) and
//!   the `Context` it acts through.
//! - [`messaging`]: the hub protocol as a handler; [`protocol`] decodes and encodes its
//!   JSON frames; [`app`] runs the application's own event and request handlers on a
//!   worker pool.
//! - `routing`: shard-local topic indexes and the directory other threads read;
//!   `batch`: topics delivered in batches.
//! - [`inbox`]: crossing shards: per-shard inboxes, the [`Hub`] handle, [`ConnId`].
//! - `timers`: per-shard timing wheel for handshake, ping, idle and close deadlines.
//! - [`config`] and [`cli`]: settings, and the command line that fills them; [`tls`]: the
//!   certificate and key for `wss://` (the per-connection TLS session lives in `wire`).

pub mod app;
pub mod auth;
mod batch;
pub mod cli;
pub mod config;
mod conn;
pub mod error;
pub mod front_door;
pub mod handler;
mod http_api;
pub mod inbox;
mod limits;
pub mod messaging;
pub mod metrics;
pub mod protocol;
mod routing;
pub mod server;
mod shard;
mod timers;
pub mod tls;
mod wire;

pub use app::{App, AppError, Ctx};
pub use batch::BatchRule;
pub use config::{ApiKey, Config};
pub use error::Error;
pub use front_door::{HttpResponse, PlainRequest};
pub use handler::{Context, Echo, Handler, Relay};
pub use inbox::{ConnId, Filter, Hub, Presence, Publication, Session, Stats};
pub use metrics::Counters;
pub use routing::SubscribeError;
pub use server::{run, start, Server};
pub use tls::TlsSettings;
pub use tungstenite::protocol::frame::coding::CloseCode;
pub use tungstenite::Message;
