//! The engine: sockets, threads and time. [`server`] binds the listeners and starts one
//! shard thread each; a shard ([`shard`]) owns a poller, a slab of connections ([`conn`],
//! over the bytes of [`wire`]), a timer wheel ([`timers`]) and the abuse [`limits`], and
//! turns readiness events into calls on the hub's handler and deliveries out of it.

mod conn;
mod limits;
mod server;
mod shard;
mod timers;
mod wire;

pub(crate) use limits::{RateLimiter, RateVerdict};
pub use server::{run, start, Server};
pub(crate) use server::{run_with, start_with};
