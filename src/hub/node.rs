//! This instance's node number: the high bits of every connection id it mints, so ids
//! are unique across a cluster. 0 without one. In a cluster the bus claims a number in
//! Redis and may have to move to another (see `cluster`); shards read the current one
//! when they accept a connection and never wait for the claim.

use std::sync::atomic::{AtomicU32, Ordering};

/// Set once an id has been minted under the current number: moving to another number
/// then strands those ids (they name a number this instance no longer answers for).
const USED: u32 = 1 << 31;
const NUMBER: u32 = 0xffff;

/// The current node number, shared by the shards (which mint ids with it) and the
/// cluster bus (which claims it and may replace it). Lives as long as the hub.
#[derive(Debug, Default)]
pub(crate) struct NodeNumber(AtomicU32);

impl NodeNumber {
    pub fn new(number: u16) -> Self {
        NodeNumber(AtomicU32::new(number as u32))
    }

    /// The current number.
    pub fn get(&self) -> u16 {
        (self.0.load(Ordering::Acquire) & NUMBER) as u16
    }

    /// The number a new connection's id takes; from now on the number counts as used.
    /// One atomic load per accept, and one read-modify-write per number.
    pub fn mint(&self) -> u16 {
        let value = self.0.load(Ordering::Acquire);
        // The number marked is the one returned, even if the bus replaced it in between.
        let value = if value & USED == 0 { self.0.fetch_or(USED, Ordering::AcqRel) } else { value };
        (value & NUMBER) as u16
    }

    /// Moves to `number`; `true` if ids were minted under the one it replaces.
    pub fn replace(&self, number: u16) -> bool {
        self.0.swap(number as u32, Ordering::AcqRel) & USED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_counts_as_used_once_an_id_is_minted_under_it() {
        let node = NodeNumber::new(7);
        assert!(!node.replace(9), "nothing minted under 7");
        assert_eq!((node.get(), node.mint(), node.mint()), (9, 9, 9));
        assert!(node.replace(11), "ids were minted under 9");
        assert_eq!(node.get(), 11);
        assert!(!node.replace(12));
    }
}
