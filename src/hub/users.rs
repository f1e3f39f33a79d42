//! One shard's users: the local connections of each user with an open connection here.
//! The shard delivers a send to a user through it, and other threads read it (under the
//! shard's lock in `ShardShared`) to send to a user only through shards that hold one.
//! One index serves both, instead of a shard-local map and a copy of its names for others.

use std::collections::HashMap;
use std::sync::Arc;

use super::keys::{KeyLists, Keys};
use super::wanted::{Want, Wanted};

#[derive(Default)]
pub(crate) struct UserTable {
    users: HashMap<Arc<str>, Keys>,
    /// Connection lists of users with more than one here.
    lists: KeyLists,
    /// In a cluster: told of each user's first and last connection here.
    wanted: Option<Arc<Wanted>>,
}

impl UserTable {
    /// A table that tells `wanted` when a user gains its first or loses its last
    /// connection here.
    pub fn watched(wanted: Option<Arc<Wanted>>) -> Self {
        UserTable { wanted, ..UserTable::default() }
    }

    /// Connection `key` of `user` completed its upgrade.
    pub fn add(&mut self, user: &Arc<str>, key: u32) {
        match self.users.get_mut(user) {
            Some(keys) => keys.push(key, &mut self.lists),
            None => {
                self.users.insert(user.clone(), Keys::One(key));
                if let Some(wanted) = &self.wanted {
                    wanted.gain(Want::User(user.clone()));
                }
            }
        }
    }

    /// Connection `key` of `user` is gone.
    pub fn remove(&mut self, user: &str, key: u32) {
        if self.users.get_mut(user).is_some_and(|keys| keys.remove(key, &mut self.lists)) {
            if let (Some((name, _)), Some(wanted)) = (self.users.remove_entry(user), &self.wanted) {
                wanted.lose(Want::User(name));
            }
            // A burst of users that left gives its memory back (amortized O(1)).
            if self.users.capacity() > 64 && self.users.len() * 4 < self.users.capacity() {
                self.users.shrink_to(self.users.len() * 2);
            }
        }
    }

    /// The local connections of `user`.
    pub fn keys(&self, user: &str) -> &[u32] {
        self.users.get(user).map_or(&[], |keys| keys.as_slice(&self.lists))
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.users.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_and_go_with_their_connections() {
        let mut users = UserTable::default();
        let ann: Arc<str> = "ann".into();
        users.add(&ann, 1);
        users.add(&ann, 2);
        assert_eq!(users.keys("ann"), &[1, 2]);
        users.remove("ann", 1);
        assert!(users.contains("ann"), "one connection left");
        users.remove("ann", 2);
        assert!(!users.contains("ann") && users.keys("ann").is_empty());
        for key in 0..100_000 {
            users.add(&format!("u{key}").into(), key);
        }
        for key in 0..100_000 {
            users.remove(&format!("u{key}"), key);
        }
        assert_eq!(users.names().count(), 0);
        assert!(users.users.capacity() <= 64, "capacity {} kept", users.users.capacity());
        assert!(users.lists.is_empty());
    }
}
