//! The hub's view of the other instances of a cluster: where [`Hub::route_from`] hands a
//! delivery that must also reach connections elsewhere, where it asks who is subscribed
//! on the other instances, and what it reads for `/stats`.
//! The cluster bus implements it; the hub knows nothing of Redis.
//!
//! [`Hub::route_from`]: super::Hub::route_from

use std::sync::Arc;

use super::wanted::Wanted;
use super::{ConnId, Hub, InboxFull, NodeNumber, PresenceAnswer, Target};
use crate::frame::SharedFrame;
use crate::metrics::ClusterStats;

pub(crate) trait Remote: Send + Sync {
    /// Hands `frame` for `target` to the other instances, without waiting: `Err` when
    /// they will miss it (counted by the implementation), so the sender can be told.
    /// Targets that only this instance can hold (its own connection ids, a closure
    /// filter) are ignored.
    fn publish(&self, target: &Target, frame: &SharedFrame) -> Result<(), InboxFull>;

    /// This instance's node number, which the implementation claims among the others.
    fn node(&self) -> &Arc<NodeNumber>;

    /// The topics and users local connections want from the other instances.
    fn wanted(&self) -> &Arc<Wanted>;

    /// `frame` back (to send now) once publications to `topic` made on other instances
    /// reach this one, or `None` when the implementation sends it to `conn` itself as
    /// soon as they do (its subscription to the topic is under way).
    fn when_reachable(&self, topic: &str, conn: ConnId, frame: SharedFrame) -> Option<SharedFrame>;

    /// Asks who is subscribed to `topic` on every live instance (this one read from
    /// `hub`), without waiting: calls `answer` exactly once, later or (refused) at once.
    fn presence(&self, hub: Hub, topic: Arc<str>, answer: PresenceAnswer);

    fn stats(&self) -> ClusterStats;

    /// Stops talking to the other instances (the server is shutting down).
    fn shutdown(&self);
}
