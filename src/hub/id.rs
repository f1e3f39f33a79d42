//! Connection ids: which shard, which slot, which tenant of that slot.

use std::fmt;

/// A connection's identity, unique across shards and stable for its lifetime; a stale id
/// (its connection closed, its slot reused) matches nothing. It fits in 53 bits, so a
/// JavaScript client can hold it as a number without losing precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    const SLOT_BITS: u32 = 24;
    const GENERATION_BITS: u32 = 21;
    /// Connections one shard can hold at once (16.7 M).
    pub(crate) const MAX_SLOTS: usize = 1 << Self::SLOT_BITS;
    /// Generations wrap at this; a stale id only matches after 2M reuses of one slot.
    pub(crate) const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    pub(crate) fn new(shard: usize, slot: usize, generation: u32) -> Self {
        debug_assert!(shard < 256 && slot < Self::MAX_SLOTS);
        ConnId(
            (shard as u64) << (Self::SLOT_BITS + Self::GENERATION_BITS)
                | (slot as u64) << Self::GENERATION_BITS
                | (generation & Self::GENERATION_MASK) as u64,
        )
    }

    pub fn shard(self) -> usize {
        (self.0 >> (Self::SLOT_BITS + Self::GENERATION_BITS)) as usize
    }

    pub(crate) fn slot(self) -> usize {
        ((self.0 >> Self::GENERATION_BITS) as usize) & (Self::MAX_SLOTS - 1)
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 as u32) & Self::GENERATION_MASK
    }

    /// The id as one number (for logs and the wire protocol).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_u64(raw: u64) -> Self {
        ConnId(raw)
    }
}

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
        let id = ConnId::new(255, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK);
        assert_eq!((id.shard(), id.slot(), id.generation()), (255, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK));
        assert!(id.as_u64() < 1 << 53, "exact as a JavaScript number");
        let id = ConnId::new(3, 17, ConnId::GENERATION_MASK + 5);
        assert_eq!((id.shard(), id.slot(), id.generation()), (3, 17, 4), "generation wraps");
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
    }
}
