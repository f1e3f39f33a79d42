//! Short lists of a shard's slab keys (as `u32`: a shard holds at most
//! `ConnId::MAX_SLOTS`), 8 bytes each while they have one entry. Most lists in the tables
//! have exactly one: a user's connections, a personal topic's subscribers. A `Vec` would
//! take 24 bytes and put even that one key in its own heap block (16 B, 32 B with
//! malloc's header); longer lists live in their table's [`KeyLists`].

use slab::Slab;

/// Slab keys: one inline, or the index of a list in the table's [`KeyLists`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    One(u32),
    /// Two or more.
    Many(u32),
}

/// The lists of two or more keys of one table.
#[derive(Default)]
pub(crate) struct KeyLists {
    lists: Slab<Vec<u32>>,
}

impl KeyLists {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lists.capacity()
    }
}

impl Keys {
    pub fn as_slice<'a>(&'a self, lists: &'a KeyLists) -> &'a [u32] {
        match self {
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(list) => &lists.lists[*list as usize],
        }
    }

    pub fn push(&mut self, key: u32, lists: &mut KeyLists) {
        match *self {
            Keys::One(first) => *self = Keys::Many(lists.lists.insert(vec![first, key]) as u32),
            Keys::Many(list) => lists.lists[list as usize].push(key),
        }
    }

    /// Removes `key`; `true` if the list is empty now (the caller drops it). The order of
    /// the others may change.
    pub fn remove(&mut self, key: u32, lists: &mut KeyLists) -> bool {
        let list = match *self {
            Keys::One(only) => return only == key,
            Keys::Many(list) => list as usize,
        };
        let keys = &mut lists.lists[list];
        if let Some(at) = keys.iter().position(|&k| k == key) {
            keys.swap_remove(at);
        }
        match keys.len() {
            1 => {
                *self = Keys::One(keys[0]);
                lists.lists.remove(list);
                if lists.lists.is_empty() {
                    // The slab keeps its peak size otherwise.
                    lists.lists.shrink_to_fit();
                }
            }
            // A list that shrank a lot gives its memory back (a topic everyone left);
            // halving at a quarter keeps this amortized O(1).
            len if len * 4 < keys.capacity() => keys.shrink_to(len * 2),
            _ => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_stays_inline_and_many_shrink_back() {
        assert_eq!(std::mem::size_of::<Keys>(), 8);
        let mut lists = KeyLists::default();
        let mut keys = Keys::One(1);
        keys.push(2, &mut lists);
        keys.push(3, &mut lists);
        assert_eq!(keys.as_slice(&lists), &[1, 2, 3]);
        assert!(!keys.remove(1, &mut lists));
        assert!(!keys.remove(9, &mut lists), "absent: nothing changes");
        assert!(!keys.remove(3, &mut lists));
        assert_eq!(keys, Keys::One(2));
        assert!(lists.is_empty(), "back inline, the list is gone");
        assert!(keys.remove(2, &mut lists));
    }
}
