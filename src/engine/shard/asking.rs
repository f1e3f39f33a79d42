//! Requests whose answer needs the cluster's Redis: a ticket to take before an upgrade,
//! a ticket to store before `POST /api/ticket` is answered. One mechanism for both: the
//! shard queues a question for the cluster's ask thread and goes on; the connection
//! waits (see the connection core's `waiting`); the question's answer comes back through
//! this shard's inbox as [`Command::Resume`](crate::hub::Command), addressed to the
//! connection's id, and resumes it. A connection that is gone by then (its deadline
//! passed, its peer left, the server is stopping), or whose slot now holds another
//! (generation), matches nothing. When the question cannot be queued the connection is
//! answered 503 at once.

use super::Shard;
use crate::api::{self, Reply};
use crate::auth::{Gate, NewTicket};
use crate::clock::Tick;
use crate::cluster::{Busy, Unreachable};
use crate::engine::conn::{Outcome, Resumption, Waiting};
use crate::http::PlainRequest;
use crate::hub::handler::Handler;
use crate::hub::{Answer, ConnId};

impl<H: Handler> Shard<H> {
    /// Answers a plain HTTP request: a built-in endpoint (now, or once the cluster has
    /// done its part), else the handler's `on_http`.
    pub(super) fn serve_http(&mut self, key: usize, request: &PlainRequest, now: Tick) {
        let reply =
            api::serve(request, &self.routing.hub, &self.shared.config, &self.shared.gate, &mut self.io.counters);
        let response = match reply {
            Some(Reply::Now(response)) => response,
            Some(Reply::StoreTicket(ticket)) => return self.store_ticket(key, ticket, now),
            None => self.handler.on_http(request),
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut cx = self.io.cx(key, now);
        let outcome = conn.respond(&response, &mut cx);
        if outcome == Outcome::Remove || !self.io.sync_interest(key, conn) {
            self.remove(key, now);
        }
    }

    /// `POST /api/ticket` in a cluster: the ticket is handed out once Redis holds it.
    fn store_ticket(&mut self, key: usize, new: NewTicket, now: Tick) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let id = ConnId::new(conn.node, self.index, key, conn.generation);
        let NewTicket { ticket, record, ttl } = new;
        let issued = api::issued(&ticket, ttl);
        let hub = self.routing.hub.clone();
        let asked = self.shared.cluster.as_ref().ok_or(Busy).and_then(|cluster| {
            cluster.put_ticket(&ticket, record, ttl, move |stored| {
                hub.resume(id, stored.map_or(Answer::Unavailable, |()| Answer::Http(issued)));
            })
        });
        match asked {
            Ok(()) => conn.await_response(now),
            Err(Busy) => self.resume_now(key, Resumption::Response(api::unavailable()), now),
        }
    }

    /// An upgrade presented a ticket kept in the cluster: its verdict comes once Redis
    /// has given it up.
    pub(super) fn take_ticket(&mut self, key: usize, ticket: &str, now: Tick) {
        let Some(conn) = self.conns.get(key) else { return };
        let id = ConnId::new(conn.node, self.index, key, conn.generation);
        let hub = self.routing.hub.clone();
        let asked = self.shared.cluster.as_ref().ok_or(Busy).and_then(|cluster| {
            cluster.take_ticket(ticket, move |taken| {
                hub.resume(id, taken.map_or_else(|Unreachable| Answer::Unavailable, Answer::Ticket));
            })
        });
        if asked == Err(Busy) {
            self.resume_now(key, Resumption::Admission(Err(Gate::unavailable())), now);
        }
    }

    /// The cluster's answer for connection `id`, from the inbox.
    pub(super) fn resume(&mut self, id: ConnId, answer: Answer, now: Tick) {
        let key = id.slot();
        let Some(conn) = self.conns.get_mut(key) else { return };
        if ConnId::new(conn.node, self.index, key, conn.generation) != id {
            return; // closed meanwhile; its slot may hold another connection now
        }
        let resumption = match (conn.waiting(), answer) {
            (Some(Waiting::Admission), Answer::Ticket(record)) => {
                Resumption::Admission(self.shared.gate.admit_taken(record.as_deref()))
            }
            (Some(Waiting::Admission), Answer::Unavailable) => Resumption::Admission(Err(Gate::unavailable())),
            (Some(Waiting::Response), Answer::Http(response)) => Resumption::Response(response),
            (Some(Waiting::Response), Answer::Unavailable) => Resumption::Response(api::unavailable()),
            // Not waiting for an answer of this kind: it is not for this connection.
            _ => return,
        };
        let mut cx = self.io.cx(key, now);
        let outcome = conn.resume(resumption, &mut cx);
        // Dispatches the upgrade (the handler's `on_open`), or a pipelined request now surfaced.
        self.conclude(key, outcome, now);
    }

    /// Ends a wait at once, from inside the dispatch that began it (which dispatches
    /// whatever this surfaces): the question could not be asked.
    fn resume_now(&mut self, key: usize, answer: Resumption, now: Tick) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut cx = self.io.cx(key, now);
        let outcome = conn.resume(answer, &mut cx);
        if outcome == Outcome::Remove || !self.io.sync_interest(key, conn) {
            self.remove(key, now);
        }
    }
}
