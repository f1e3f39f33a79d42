//! One-time tickets in Redis, so that a ticket issued by any instance opens a connection
//! on any instance, exactly once: `<prefix>:ticket:<ticket>` holds the identity's record
//! for the ticket's lifetime (`SET … PX`, Redis expires it), and redeeming takes it with
//! `GETDEL`, one atomic command (Redis 6.2 or later): of two instances redeeming the same
//! ticket at once, one gets the record and the other nothing.
//!
//! Both run as [`ask`](super::ask) jobs: the shard thread queues one and goes on, and the
//! job hands its result to `done` (which routes it back to the waiting connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{Connection, RedisError};

use super::ask::Busy;
use super::Cluster;

/// The cluster could not be asked (Redis unreachable, or it failed the command):
/// nothing is known to be done; the caller answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreachable;

impl Cluster {
    fn ticket_key(&self, ticket: &str) -> String {
        format!("{}:ticket:{ticket}", self.keys.prefix())
    }

    /// Stores `record` under `ticket` for `ttl`, then calls `done` (`Ok` once Redis has
    /// it). `Err(Busy)`: not queued, `done` is never called.
    pub(crate) fn put_ticket(
        &self,
        ticket: &str,
        record: String,
        ttl: Duration,
        done: impl FnOnce(Result<(), Unreachable>) + Send + 'static,
    ) -> Result<(), Busy> {
        let key = self.ticket_key(ticket);
        // At least a millisecond: `PX 0` is an error, not an instant expiry.
        let ttl_ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.ask(Box::new(move |connection: Option<&mut Connection>| {
            let Some(connection) = connection else {
                done(Err(Unreachable));
                return Ok(());
            };
            let stored = redis::cmd("SET").arg(&key).arg(record).arg("PX").arg(ttl_ms).exec(connection);
            if let Err(e) = &stored {
                explain("storing", e);
            }
            done(stored.as_ref().map_err(|_| Unreachable).copied());
            stored
        }))
    }

    /// Takes what is stored under `ticket` (so no one else can), then calls `done` with
    /// it: `Ok(None)` when nothing was. `Err(Busy)`: not queued, `done` is never called.
    pub(crate) fn take_ticket(
        &self,
        ticket: &str,
        done: impl FnOnce(Result<Option<String>, Unreachable>) + Send + 'static,
    ) -> Result<(), Busy> {
        let key = self.ticket_key(ticket);
        self.ask(Box::new(move |connection: Option<&mut Connection>| {
            let Some(connection) = connection else {
                done(Err(Unreachable));
                return Ok(());
            };
            match redis::cmd("GETDEL").arg(&key).query::<Option<String>>(connection) {
                Ok(record) => {
                    done(Ok(record));
                    Ok(())
                }
                Err(e) => {
                    // Whether Redis took it is unknown: the ticket counts as spent.
                    explain("taking", &e);
                    done(Err(Unreachable));
                    Err(e)
                }
            }
        }))
    }
}

/// Logs why a ticket could not be stored or taken. A lost connection is the outage the
/// bus already reports; Redis answering with an error (no `GETDEL` before Redis 6.2, a
/// read-only replica, out of memory) is a setup to fix, said once at warning level.
fn explain(doing: &str, e: &RedisError) {
    static TOLD: AtomicBool = AtomicBool::new(false);
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        log::debug!("cluster: {doing} a ticket failed: {e}");
    } else if !TOLD.swap(true, Ordering::Relaxed) {
        log::warn!("cluster: Redis refused {doing} a ticket ({e}); tickets need Redis 6.2 or later, writable");
    }
}
