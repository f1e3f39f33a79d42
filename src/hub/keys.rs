//! A short list of a shard's slab keys (as `u32`: a shard holds at most
//! `ConnId::MAX_SLOTS`), kept inline while it has one entry. Most lists in the tables
//! have exactly one: a user's connections, a personal topic's subscribers. A `Vec` would
//! put even that one key in its own heap block (16 B, 32 B with malloc's header).

/// Slab keys; one inline, more in a heap vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keys {
    One(u32),
    /// Two or more (at most briefly fewer: `remove` goes back to `One` at one). Boxed
    /// so that the common `One` makes the whole list 16 bytes, not a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Keys {
    pub fn as_slice(&self) -> &[u32] {
        match self {
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(keys) => keys,
        }
    }

    pub fn push(&mut self, key: u32) {
        match self {
            Keys::One(first) => *self = Keys::Many(Box::new(vec![*first, key])),
            Keys::Many(keys) => keys.push(key),
        }
    }

    /// Removes `key`; `true` if the list is empty now (the caller drops it). The order of
    /// the others may change.
    pub fn remove(&mut self, key: u32) -> bool {
        match self {
            Keys::One(only) => *only == key,
            Keys::Many(keys) => {
                if let Some(at) = keys.iter().position(|&k| k == key) {
                    keys.swap_remove(at);
                }
                match keys.len() {
                    0 => true,
                    1 => {
                        *self = Keys::One(keys[0]);
                        false
                    }
                    // A list that shrank a lot gives its memory back (a topic everyone
                    // left); halving at a quarter keeps this amortized O(1).
                    len => {
                        if len * 4 < keys.capacity() {
                            keys.shrink_to(len * 2);
                        }
                        false
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_stays_inline_and_many_shrink_back() {
        assert_eq!(std::mem::size_of::<Keys>(), 16);
        let mut keys = Keys::One(1);
        keys.push(2);
        keys.push(3);
        assert_eq!(keys.as_slice(), &[1, 2, 3]);
        assert!(!keys.remove(1));
        assert!(!keys.remove(9), "absent: nothing changes");
        assert!(!keys.remove(3));
        assert_eq!(keys, Keys::One(2));
        assert!(keys.remove(2));
    }
}
