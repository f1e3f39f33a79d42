//! What an identity may do with topics and broadcasts, decided per frame by the hub
//! protocol (`messaging`) from the grants the gate gave the connection. Sans-I/O.
//!
//! - A `user:<id>` topic belongs to user `<id>`: only that user (or an admin) may
//!   subscribe or publish to it, so a backend can address one user's devices through it.
//! - With a credential (token, JWT or ticket), `subs` / `pubs` glob lists limit the topics
//!   a connection may subscribe and publish to, and only an admin may broadcast.
//! - In open mode (no credential, no grants) everything else is allowed.

use super::Grants;
use crate::routing::glob_match;

/// Topics named `user:<id>` belong to that user.
pub const USER_TOPIC_PREFIX: &str = "user:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Subscribe,
    Publish,
}

/// `Ok`, or why `identity` may not do `action` on `topic` (for the `forbidden` error).
pub fn check_topic(grants: Option<&Grants>, identity: &str, topic: &str, action: TopicAction) -> Result<(), String> {
    let admin = grants.is_some_and(|g| g.admin);
    if let Some(owner) = topic.strip_prefix(USER_TOPIC_PREFIX) {
        if owner != identity && !admin {
            return Err(format!("topic {topic:?} belongs to user {owner:?}"));
        }
        return Ok(());
    }
    let Some(grants) = grants.filter(|g| !g.admin) else {
        return Ok(());
    };
    let (patterns, verb) = match action {
        TopicAction::Subscribe => (&grants.subscribe, "subscribe to"),
        TopicAction::Publish => (&grants.publish, "publish to"),
    };
    match patterns {
        Some(patterns) if !patterns.iter().any(|pattern| glob_match(pattern, topic)) => {
            Err(format!("your credential does not allow you to {verb} {topic:?}"))
        }
        _ => Ok(()),
    }
}

/// Open mode lets anyone broadcast; with credentials only an admin may.
pub fn may_broadcast(grants: Option<&Grants>) -> bool {
    grants.is_none_or(|g| g.admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TopicAction::*;

    fn limited() -> Grants {
        Grants { subscribe: Some(vec!["room.*".into()]), publish: Some(vec!["room.lobby".into()]), admin: false }
    }

    #[test]
    fn user_topics_belong_to_their_user() {
        assert!(check_topic(None, "ann", "user:ann", Subscribe).is_ok());
        assert!(check_topic(None, "bob", "user:ann", Subscribe).is_err());
        assert!(check_topic(Some(&limited()), "bob", "user:ann", Publish).is_err());
        assert!(check_topic(Some(&limited()), "ann", "user:ann", Subscribe).is_ok(), "a user's own topic, always");
        let admin = Grants { admin: true, ..Grants::default() };
        assert!(check_topic(Some(&admin), "ops", "user:ann", Publish).is_ok());
    }

    #[test]
    fn claims_limit_subscribing_and_publishing() {
        let grants = limited();
        assert!(check_topic(Some(&grants), "ann", "room.7", Subscribe).is_ok());
        assert!(check_topic(Some(&grants), "ann", "admin.log", Subscribe).is_err());
        assert!(check_topic(Some(&grants), "ann", "room.lobby", Publish).is_ok());
        assert!(check_topic(Some(&grants), "ann", "room.7", Publish).is_err());
        assert!(check_topic(Some(&Grants::default()), "ann", "anything", Publish).is_ok(), "no list: no limit");
        assert!(check_topic(None, "ann", "anything", Publish).is_ok(), "open mode");
    }

    #[test]
    fn only_admins_broadcast_when_credentials_are_on() {
        assert!(may_broadcast(None));
        assert!(!may_broadcast(Some(&Grants::default())));
        assert!(may_broadcast(Some(&Grants { admin: true, ..Grants::default() })));
    }
}
