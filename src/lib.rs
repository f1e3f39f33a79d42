//! wshub: a WebSocket hub that holds very many connections on a few mio poller threads
//! and fans messages out to them.
//!
//! The folders are layers, each using only those listed before it:
//!
//! - Vocabulary, free of I/O: `protocol` (the hub protocol's JSON frames and built-in
//!   names, topic names and patterns, its close codes and timings), `metrics` (what shards
//!   count, [`Stats`]), `clock` (ticks), `frame` (a server frame encoded once and shared
//!   by its receivers), `sync`, [`Error`].
//! - `http`: what a connection's first bytes ask for (upgrade, plain request, refusal) and
//!   the responses written back.
//! - `auth`: the gate an upgrade passes (origin, token, JWT, ticket) and the policy on
//!   what an identity may do with topics and broadcasts. One-time tickets live in a local
//!   table, or in a cluster in Redis, where the gate's verdict waits for the ticket to be
//!   taken.
//! - `config`: every setting ([`Config`]), the command line that fills them ([`Cli`]),
//!   durations and sizes, the TLS certificate.
//! - `hub`: where a message goes. The [`Hub`] handle routes a delivery (a topic, everyone,
//!   a user, a connection, a filter) to the shards that hold receivers, through each
//!   shard's inbox; connection ids ([`ConnId`]: node number, shard, slot, generation);
//!   filters (closures, or named ones an [`App`] registers, which cross instances); a
//!   shard's topic tables and batches; the [`Handler`] hook and the [`Context`] it acts
//!   through; which topics keep history, the queue to the history thread, and each
//!   shard's subscriptions waiting for their replay.
//! - `cluster`: several instances acting as one over Redis (`--redis`). The hub's routing
//!   seam hands it what other instances may hold receivers of (topic publications,
//!   broadcasts, sends to a user or to another instance's connection id, named filters);
//!   bus threads, each with one Redis connection, publish those (already-encoded frame
//!   plus a small envelope) and subscribe the channels that local connections want (and
//!   always everyone's and the instance's own), handing what arrives to the local
//!   shards' inboxes; a third runs the questions whose answer comes back later (a
//!   cluster-wide `presence`; one-time tickets, stored when issued and taken atomically
//!   when redeemed), each answer handed to the asking connection through its shard's
//!   inbox. Shards never wait on Redis. Each instance claims a node number, which its
//!   connection ids carry so they are unique across the cluster, and renews it with an
//!   entry among the cluster's members (a heartbeat with a TTL, a summary that `/stats`
//!   sums); it keeps its topics' local subscribers in Redis (only what changed, from the
//!   publisher thread), which presence reads for the live instances only.
//! - `history`: topic history (`--history`). One thread owns the store (an embedded
//!   SQLite database, `--store`) and orders every kept topic: a publication on such a
//!   topic is queued to it by the hub, given the topic's next offset, committed with its
//!   batch (group commit), and only then routed through the hub's seam and acked. A
//!   `subscribe` with `since` is queued the same way; the thread replays what was missed
//!   through the subscriber's shard inbox, which holds back the topic's live deliveries
//!   to it until then, so the switch to live has no gap and no repeat. Shards never wait
//!   on the store. Without `--history` there is no thread and no store.
//! - `api`: the plain HTTP endpoints (web demo, publish API, tickets, health, stats,
//!   metrics).
//! - `engine`: sockets, threads and time. [`start`] binds the listeners and runs one shard
//!   thread each; a shard accepts, reads frames, calls the handler, applies what it asked
//!   for through the hub, fires timers, and flushes output once per loop pass. Inside it,
//!   `wire` is the bytes (socket, TLS, the shard's inbound buffer) and `conn` the
//!   connection core (phases, outbound queue, deadlines), which runs without a socket. A
//!   handshaking connection may wait for the cluster (a ticket to take or to store),
//!   reading nothing, until the answer resumes it through the shard's inbox.
//! - `app`: the hub protocol as a handler, and the [`App`] API that runs the application's
//!   own event and request handlers on a worker pool.
//!
//! A message from a client thus flows: engine (bytes → frame) → hub handler (app's hub
//! protocol) → hub routing, where it is framed once → the shards' inboxes → each
//! receiver's outbound queue (a reference) → one vectored write per connection per pass.
//! In a cluster, hub routing also queues it for the bus → Redis → each other instance's
//! bus → its shards' inboxes.

mod api;
mod app;
mod auth;
mod clock;
mod cluster;
mod config;
mod engine;
mod error;
mod frame;
mod history;
mod http;
mod hub;
mod metrics;
pub mod protocol;
mod sync;

pub use app::{App, AppContext, AppError};
pub use auth::{
    sign_jwt, unix_now, ApiKey, AuthError, AuthSettings, Grants, JwtVerifier, Policy, Secret, StaticToken, TopicAction,
    TopicDenied, TopicRule,
};
pub use config::{BatchRule, Cli, ClusterSettings, Config, HistoryRule, Mode, RedisUrl, Store, TlsSettings};
pub use engine::{run, start, Server};
pub use error::Error;
pub use http::{HttpResponse, PlainRequest};
/// For `benches/tables.rs` only: one shard's per-connection tables, driven directly.
#[doc(hidden)]
pub use hub::bench::Tables as BenchTables;
pub use hub::handler::{Context, Echo, Handler, RefreshError, Relay};
pub use hub::{
    ConnId, Filter, Hub, InboxFull, Presence, PresenceError, Session, SubscribeError, Target, UnknownFilter,
};
pub use metrics::{ClusterStats, Counters, HistoryStats, InstanceStats, Stats};
pub use tungstenite::protocol::frame::coding::CloseCode;
pub use tungstenite::Message;
