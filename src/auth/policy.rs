//! What an identity may do with topics and broadcasts, decided per frame by the hub
//! protocol (`messaging`) from the grants the gate gave the connection and the server's
//! own rules. Sans-I/O.
//!
//! - A `user:<id>` topic belongs to user `<id>`: only that user (or an admin) may
//!   subscribe or publish to it, so a backend can address one user's devices through it.
//! - Config rules (`--topic-rule 'publish:news.*=ops,editor'`): the first rule whose
//!   action and pattern match a topic decides who may use it (admins always may).
//! - With a credential (token, JWT or ticket), `subs` / `pubs` glob lists limit the topics
//!   a connection may subscribe and publish to.
//! - Broadcast: with `--broadcasters`, those users (and admins) only; otherwise anyone in
//!   open mode, and only admins when credentials are on.

use std::fmt;
use std::str::FromStr;

use super::Grants;
use crate::protocol::glob_match;

/// Topics named `user:<id>` belong to that user.
pub const USER_TOPIC_PREFIX: &str = "user:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Subscribe,
    Publish,
}

impl TopicAction {
    /// The verb in a refusal: "you may not {verb} the topic".
    fn verb(self) -> &'static str {
        match self {
            TopicAction::Subscribe => "subscribe to",
            TopicAction::Publish => "publish to",
        }
    }
}

/// Why a connection may not use a topic. Whichever it is, the client is answered
/// `forbidden` with this text; the variant says which setting would have to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicDenied {
    /// A `user:<owner>` topic of another user: only that user (or an admin) may use it.
    OtherUsersTopic { topic: String, owner: String },
    /// A `--topic-rule` for this action and topic names other users.
    ServerRule { action: TopicAction, topic: String },
    /// The credential's `subs` / `pubs` list does not match the topic.
    Credential { action: TopicAction, topic: String },
}

impl fmt::Display for TopicDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicDenied::OtherUsersTopic { topic, owner } => write!(f, "topic {topic:?} belongs to user {owner:?}"),
            TopicDenied::ServerRule { action, topic } => {
                write!(f, "the server's rules do not allow you to {} {topic:?}", action.verb())
            }
            TopicDenied::Credential { action, topic } => {
                write!(f, "your credential does not allow you to {} {topic:?}", action.verb())
            }
        }
    }
}

impl std::error::Error for TopicDenied {}

/// `ACTION:PATTERN=USER,USER`: only these users may `ACTION` (subscribe or publish) on
/// topics matching the glob `PATTERN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub action: TopicAction,
    pub pattern: String,
    pub users: Vec<String>,
}

impl FromStr for TopicRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("{text:?}: expected ACTION:PATTERN=USER[,USER...], ACTION subscribe or publish");
        let (action, rest) = text.split_once(':').ok_or_else(usage)?;
        let (pattern, users) = rest.split_once('=').ok_or_else(usage)?;
        let action = match action.trim() {
            "subscribe" => TopicAction::Subscribe,
            "publish" => TopicAction::Publish,
            _ => return Err(usage()),
        };
        let users: Vec<String> = users.split(',').map(str::trim).filter(|u| !u.is_empty()).map(Into::into).collect();
        if pattern.trim().is_empty() || users.is_empty() {
            return Err(usage());
        }
        Ok(TopicRule { action, pattern: pattern.trim().into(), users })
    }
}

/// The server's own permission settings; the same for every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<TopicRule>,
    /// Users who may broadcast (besides admins); `None`: the default for the mode.
    pub broadcasters: Option<Vec<String>>,
}

impl Policy {
    /// `Ok`, or why `identity` may not do `action` on `topic` (for the `forbidden` error).
    pub fn check_topic(
        &self,
        grants: Option<&Grants>,
        identity: &str,
        topic: &str,
        action: TopicAction,
    ) -> Result<(), TopicDenied> {
        let admin = grants.is_some_and(|g| g.admin);
        if admin {
            return Ok(());
        }
        if let Some(owner) = topic.strip_prefix(USER_TOPIC_PREFIX) {
            return match owner == identity {
                true => Ok(()),
                false => Err(TopicDenied::OtherUsersTopic { topic: topic.into(), owner: owner.into() }),
            };
        }
        let rule = self.rules.iter().find(|rule| rule.action == action && glob_match(&rule.pattern, topic));
        if rule.is_some_and(|rule| !rule.users.iter().any(|user| user == identity)) {
            return Err(TopicDenied::ServerRule { action, topic: topic.into() });
        }
        let patterns = grants.and_then(|grants| match action {
            TopicAction::Subscribe => grants.subscribe.as_ref(),
            TopicAction::Publish => grants.publish.as_ref(),
        });
        match patterns {
            Some(patterns) if !patterns.iter().any(|pattern| glob_match(pattern, topic)) => {
                Err(TopicDenied::Credential { action, topic: topic.into() })
            }
            _ => Ok(()),
        }
    }

    pub fn may_broadcast(&self, grants: Option<&Grants>, identity: &str) -> bool {
        if grants.is_some_and(|g| g.admin) {
            return true;
        }
        match &self.broadcasters {
            Some(users) => users.iter().any(|user| user == identity),
            // Open mode: anyone; with credentials: admins only.
            None => grants.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TopicAction::*;

    fn limited() -> Grants {
        Grants { subscribe: Some(vec!["room.*".into()]), publish: Some(vec!["room.lobby".into()]), admin: false }
    }

    fn admin() -> Grants {
        Grants { admin: true, ..Grants::default() }
    }

    #[test]
    fn user_topics_belong_to_their_user() {
        let policy = Policy::default();
        assert!(policy.check_topic(None, "ann", "user:ann", Subscribe).is_ok());
        assert!(policy.check_topic(None, "bob", "user:ann", Subscribe).is_err());
        assert!(policy.check_topic(Some(&limited()), "bob", "user:ann", Publish).is_err());
        assert!(policy.check_topic(Some(&limited()), "ann", "user:ann", Subscribe).is_ok(), "one's own, always");
        assert!(policy.check_topic(Some(&admin()), "ops", "user:ann", Publish).is_ok());
    }

    #[test]
    fn claims_limit_subscribing_and_publishing() {
        let policy = Policy::default();
        let grants = limited();
        assert!(policy.check_topic(Some(&grants), "ann", "room.7", Subscribe).is_ok());
        assert!(policy.check_topic(Some(&grants), "ann", "admin.log", Subscribe).is_err());
        assert!(policy.check_topic(Some(&grants), "ann", "room.lobby", Publish).is_ok());
        assert!(policy.check_topic(Some(&grants), "ann", "room.7", Publish).is_err());
        assert!(policy.check_topic(Some(&Grants::default()), "ann", "anything", Publish).is_ok(), "no list");
        assert!(policy.check_topic(None, "ann", "anything", Publish).is_ok(), "open mode");
    }

    #[test]
    fn config_rules_decide_who_may_use_matching_topics() {
        let rule: TopicRule = "publish:news.*=ops, editor".parse().unwrap();
        assert_eq!(rule.users, ["ops", "editor"]);
        let policy = Policy { rules: vec![rule], broadcasters: None };
        assert!(policy.check_topic(None, "editor", "news.world", Publish).is_ok());
        assert!(policy.check_topic(None, "ann", "news.world", Publish).is_err());
        assert!(policy.check_topic(None, "ann", "news.world", Subscribe).is_ok(), "the rule is for publish");
        assert!(policy.check_topic(Some(&admin()), "root", "news.world", Publish).is_ok());
        for bad in ["news.*=ops", "read:news=ops", "publish:news=", "publish:=ops"] {
            assert!(bad.parse::<TopicRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_say_why_in_the_words_clients_see() {
        let rule: TopicRule = "publish:news.*=ops".parse().unwrap();
        let policy = Policy { rules: vec![rule], broadcasters: None };
        let refusal = |grants, topic, action| policy.check_topic(grants, "ann", topic, action).unwrap_err();
        assert_eq!(refusal(None, "user:bob", Subscribe).to_string(), r#"topic "user:bob" belongs to user "bob""#);
        assert_eq!(
            refusal(None, "news.x", Publish).to_string(),
            r#"the server's rules do not allow you to publish to "news.x""#
        );
        assert_eq!(
            refusal(Some(&limited()), "admin.log", Subscribe).to_string(),
            r#"your credential does not allow you to subscribe to "admin.log""#
        );
    }

    #[test]
    fn who_may_broadcast() {
        let open = Policy::default();
        assert!(open.may_broadcast(None, "anyone"));
        assert!(!open.may_broadcast(Some(&Grants::default()), "ann"), "credentials on: admins only");
        assert!(open.may_broadcast(Some(&admin()), "ops"));
        let listed = Policy { rules: Vec::new(), broadcasters: Some(vec!["alerts".into()]) };
        assert!(listed.may_broadcast(None, "alerts"));
        assert!(!listed.may_broadcast(None, "ann"));
        assert!(listed.may_broadcast(Some(&Grants::default()), "alerts"));
    }
}
