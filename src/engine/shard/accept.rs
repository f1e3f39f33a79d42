//! Accepting: the listener's readiness drains the accept queue until WouldBlock; each
//! socket is admitted as a handshaking connection, or answered 503 (over
//! `--max-connections`) or 429 (over `--max-connections-per-ip`). Out of file descriptors,
//! accepting pauses instead of spinning, until a connection closes or the back-off ends.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Shard, ACCEPT_BACKOFF};
use crate::clock::{self, Tick};
use crate::engine::conn::{Connection, Outcome};
use crate::engine::timers::Entry;
use crate::engine::wire::{TlsSession, Wire};
use crate::http::HttpResponse;
use crate::hub::handler::Handler;
use crate::hub::ConnId;

impl<H: Handler> Shard<H> {
    /// Accepts until the listener would block (its readiness is edge-triggered).
    pub(super) fn accept_until_would_block(&mut self, now: Tick) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((tcp, peer)) => self.take_in(tcp, peer.ip(), now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if out_of_descriptors(&e) => {
                    // Retrying now would spin: the backlog keeps the connections until a
                    // descriptor frees up (a close) or the back-off ends.
                    log::warn!("shard {}: accept paused: {e}", self.index);
                    self.accept_paused_until = Some(now + clock::ticks(ACCEPT_BACKOFF));
                    return;
                }
                // The peer gave up while queued (ECONNABORTED and the like).
                Err(e) => log::debug!("shard {}: accept failed: {e}", self.index),
            }
        }
    }

    pub(super) fn take_in(&mut self, mut tcp: TcpStream, ip: IpAddr, now: Tick) {
        // Over the limit, the connection is still taken in, briefly: it is answered 503
        // and lingers until the client has read that (closing at once could turn the
        // answer into a reset). It counts toward the limit until it is gone.
        let over_limit = self.shared.live.fetch_add(1, Ordering::AcqRel) >= self.shared.config.max_connections;
        if self.conns.len() >= ConnId::MAX_SLOTS {
            // Past what a connection id can name (16.7 M on one shard): not even a 503.
            log::warn!("shard {}: at the most connections one shard can hold; dropping a new one", self.index);
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let _ = tcp.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.io.poll.registry().register(&mut tcp, Token(key), Interest::READABLE) {
            log::warn!("shard {}: cannot register connection: {e}", self.index);
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let generation = self.next_generation;
        // The node number now, not when the id is next needed: it may change meanwhile.
        let node = self.routing.hub.node().mint();
        self.next_generation = (self.next_generation + 1) & ConnId::GENERATION_MASK;
        self.routing.hub.shared(self.index).connections.fetch_add(1, Ordering::AcqRel);
        let at = now + self.io.limits.handshake;
        let (tls, refused) = match self.io.limits.tls.as_ref().map(TlsSession::new).transpose() {
            Ok(tls) => (tls, false),
            Err(e) => {
                // Not with a config `TlsSettings` accepted; but if it happens, the
                // connection is dropped, never served in plaintext.
                log::error!("cannot start a TLS session: {e}");
                (None, true)
            }
        };
        let wire = Wire::new(tcp, tls);
        let conn = entry.insert(Connection::accepted(wire, refused, (node, generation), now, at));
        self.timers.schedule(Entry { key: key as u32, generation, at });
        // Counted per address only once admitted, so `remove` releases exactly what was taken.
        let ip_refused = match &self.shared.per_ip {
            Some(per_ip) if !over_limit => {
                let acquired = per_ip.acquire(ip);
                if acquired {
                    self.peer_ips.insert(key, ip);
                }
                !acquired
            }
            _ => false,
        };
        if over_limit || ip_refused {
            self.io.counters.handshake_failures += 1;
            let busy = match over_limit {
                true => HttpResponse::text(503, "Service Unavailable", "connection limit reached"),
                false => HttpResponse::text(429, "Too Many Requests", "too many connections from your address"),
            };
            let mut cx = self.io.cx(key, now);
            if conn.respond(&busy, &mut cx) == Outcome::Remove {
                self.remove(key, now);
            }
        }
    }

    /// Resumes accepting after an fd-limit pause, once the back-off ends or a close freed
    /// a descriptor.
    pub(super) fn resume_accepting(&mut self, now: Tick) {
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept_until_would_block(now);
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
