//! Connection ids: which instance, which shard, which slot, which tenant of that slot.

use std::fmt;

/// A connection's identity, unique across the cluster (across shards without one) and
/// stable for its lifetime; a stale id (its connection closed, its slot reused) matches
/// nothing. It fits in 53 bits, so a JavaScript client can hold it as a number without
/// losing precision.
///
/// The 53 bits, high to low:
/// - node, 10 bits: the instance's number in its cluster (0 without `--redis`), so a
///   send to an id goes to the one instance that holds it. 1,024 instances is more than
///   one Redis pub/sub cluster sensibly fans out to (every broadcast reaches each), and a
///   wide space keeps a provisional number (Redis unreachable at start) unlikely to be
///   another instance's.
/// - shard, 6 bits: 64 shards, one poller thread per core; a larger machine runs more
///   instances (`--shards` is validated against it).
/// - slot, 21 bits: 2,097,152 connections one shard holds at once, past the default
///   `--max-connections` (1 M) even on one shard.
/// - generation, 16 bits: a shard-wide count of accepted connections, so a stale id
///   only matches again if its slot is reused exactly a multiple of 65,536 accepts later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    const NODE_BITS: u32 = 10;
    const SHARD_BITS: u32 = 6;
    const SLOT_BITS: u32 = 21;
    const GENERATION_BITS: u32 = 16;
    /// Instances one cluster can number.
    pub(crate) const MAX_NODES: usize = 1 << Self::NODE_BITS;
    /// Shards one instance can run.
    pub(crate) const MAX_SHARDS: usize = 1 << Self::SHARD_BITS;
    /// Connections one shard can hold at once (2.1 M).
    pub(crate) const MAX_SLOTS: usize = 1 << Self::SLOT_BITS;
    /// Generations wrap at this.
    pub(crate) const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    pub(crate) fn new(node: u16, shard: usize, slot: usize, generation: u32) -> Self {
        debug_assert!((node as usize) < Self::MAX_NODES && shard < Self::MAX_SHARDS && slot < Self::MAX_SLOTS);
        ConnId(
            (node as u64) << (Self::SHARD_BITS + Self::SLOT_BITS + Self::GENERATION_BITS)
                | (shard as u64) << (Self::SLOT_BITS + Self::GENERATION_BITS)
                | (slot as u64) << Self::GENERATION_BITS
                | (generation & Self::GENERATION_MASK) as u64,
        )
    }

    /// The number of the instance that holds the connection (0 without a cluster).
    pub fn node(self) -> u16 {
        ((self.0 >> (Self::SHARD_BITS + Self::SLOT_BITS + Self::GENERATION_BITS)) as usize & (Self::MAX_NODES - 1))
            as u16
    }

    pub fn shard(self) -> usize {
        ((self.0 >> (Self::SLOT_BITS + Self::GENERATION_BITS)) as usize) & (Self::MAX_SHARDS - 1)
    }

    pub(crate) fn slot(self) -> usize {
        ((self.0 >> Self::GENERATION_BITS) as usize) & (Self::MAX_SLOTS - 1)
    }

    /// Only tests take an id apart this far: a shard compares whole ids.
    #[cfg(test)]
    pub(crate) fn generation(self) -> u32 {
        (self.0 as u32) & Self::GENERATION_MASK
    }

    /// The id as one number (for logs and the wire protocol).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from its number; a number no connection can have (53 bits or more) is kept
    /// as it is and matches nothing.
    pub fn from_u64(raw: u64) -> Self {
        ConnId(raw)
    }

    /// The id a user name stands for, when it is one (a connection without a user goes
    /// by its id): a decimal number below 2^53.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        let raw: u64 = name.parse().ok()?;
        (raw < 1 << 53).then_some(ConnId(raw))
    }
}

// The config checks `--shards` against its own copy of the limit (it sits below the hub).
const _: () = assert!(ConnId::MAX_SHARDS == crate::config::MAX_SHARDS);
const _: () = assert!(ConnId::NODE_BITS + ConnId::SHARD_BITS + ConnId::SLOT_BITS + ConnId::GENERATION_BITS == 53);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_round_trip_their_parts() {
        let top = ConnId::MAX_NODES as u16 - 1;
        let id = ConnId::new(top, ConnId::MAX_SHARDS - 1, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK);
        let parts = (id.node(), id.shard(), id.slot(), id.generation());
        assert_eq!(parts, (top, ConnId::MAX_SHARDS - 1, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK));
        assert_eq!(id.as_u64(), (1 << 53) - 1, "every bit used, and exact as a JavaScript number");
        let id = ConnId::new(5, 3, 17, ConnId::GENERATION_MASK + 5);
        assert_eq!((id.node(), id.shard(), id.slot(), id.generation()), (5, 3, 17, 4), "generation wraps");
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
    }

    #[test]
    fn the_same_shard_slot_and_generation_on_two_nodes_are_two_ids() {
        let (a, b) = (ConnId::new(1, 2, 3, 4), ConnId::new(2, 2, 3, 4));
        assert_ne!(a, b);
        assert_eq!((a.shard(), a.slot(), a.generation()), (b.shard(), b.slot(), b.generation()));
        assert_eq!(ConnId::new(0, 2, 3, 4).as_u64(), (2 << 37) | (3 << 16) | 4, "node 0: no node bits set");
    }

    #[test]
    fn only_numbers_below_2_pow_53_parse_as_ids() {
        assert_eq!(ConnId::parse("35184372088832"), Some(ConnId::from_u64(35_184_372_088_832)));
        assert_eq!(ConnId::parse(&((1u64 << 53) - 1).to_string()).map(ConnId::node), Some(1023));
        assert_eq!(ConnId::parse(&(1u64 << 53).to_string()), None);
        assert_eq!(ConnId::parse("ann"), None);
        assert_eq!(ConnId::parse("-1"), None);
    }
}
