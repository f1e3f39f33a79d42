//! Batching of high-rate topics: publications on topics matching a `--batch` rule are
//! held per shard and go out every interval as one `batch` frame per subscriber. Sits in
//! the shard between an arriving publication and delivery; free of sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::Message;

use crate::inbox::Publication;
use crate::protocol;
use crate::routing::glob_match;
use crate::timers::{ticks, Tick};

/// `PATTERN=INTERVAL`: topics matching the glob are delivered in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRule {
    pub pattern: String,
    pub interval: Duration,
}

impl std::str::FromStr for BatchRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (pattern, interval) =
            text.split_once('=').ok_or_else(|| format!("'{text}' is not PATTERN=INTERVAL, e.g. 'ticker.*=100ms'"))?;
        if pattern.is_empty() {
            return Err(format!("'{text}': the pattern is empty"));
        }
        let interval = crate::config::parse_duration(interval)?;
        if interval.is_zero() {
            return Err(format!("'{text}': the interval must be above zero"));
        }
        Ok(BatchRule { pattern: pattern.to_string(), interval })
    }
}

/// One topic's held items and when they go out.
struct Held {
    items: Vec<Arc<str>>,
    due: Tick,
}

pub(crate) struct Batcher {
    rules: Vec<(String, Tick)>,
    held: HashMap<Arc<str>, Held>,
}

impl Batcher {
    pub fn new(rules: &[BatchRule]) -> Self {
        Batcher {
            rules: rules.iter().map(|rule| (rule.pattern.clone(), ticks(rule.interval))).collect(),
            held: HashMap::new(),
        }
    }

    /// Holds the publication if its topic is batched (`true`); `false`: deliver it now.
    pub fn hold(&mut self, publication: &Publication, now: Tick) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        if let Some(held) = self.held.get_mut(&publication.topic) {
            held.items.push(publication.data.clone());
            return true;
        }
        let Some(&(_, interval)) = self.rules.iter().find(|(pattern, _)| glob_match(pattern, &publication.topic))
        else {
            return false;
        };
        let held = Held { items: vec![publication.data.clone()], due: now + interval };
        self.held.insert(publication.topic.clone(), held);
        true
    }

    /// The batch frames due by `now`, one per topic, each serialized once.
    pub fn take_due(&mut self, now: Tick, out: &mut Vec<(Arc<str>, Message)>) {
        if self.held.is_empty() {
            return;
        }
        self.held.retain(|topic, held| {
            if held.due > now {
                return true;
            }
            let frame = protocol::batch(topic, held.items.iter().map(|item| &**item));
            out.push((topic.clone(), Message::text(frame)));
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(topic: &str, data: &str) -> Publication {
        Publication { topic: topic.into(), frame: Message::text(""), data: data.into() }
    }

    #[test]
    fn rules_parse() {
        let rule: BatchRule = "ticker.*=250ms".parse().unwrap();
        assert_eq!(rule, BatchRule { pattern: "ticker.*".into(), interval: Duration::from_millis(250) });
        assert!("ticker.*".parse::<BatchRule>().is_err());
        assert!("=1s".parse::<BatchRule>().is_err());
        assert!("a=0ms".parse::<BatchRule>().is_err());
    }

    #[test]
    fn holds_matching_topics_until_their_interval_ends() {
        let rules = ["ticker.*=300ms".parse().unwrap()];
        let mut batcher = Batcher::new(&rules);
        assert!(!batcher.hold(&publication("chat", "1"), 0), "not batched");
        assert!(batcher.hold(&publication("ticker.btc", "1"), 0));
        assert!(batcher.hold(&publication("ticker.btc", "2"), 1));
        assert!(batcher.hold(&publication("ticker.eth", "{\"p\":3}"), 2));
        let mut out = Vec::new();
        batcher.take_due(2, &mut out);
        assert!(out.is_empty(), "interval not over");
        batcher.take_due(3, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.to_text().unwrap(), r#"{"type":"batch","topic":"ticker.btc","d":[1,2]}"#);
        batcher.take_due(5, &mut out);
        assert_eq!(out.len(), 2, "ticker.eth started later, ends later");
        assert!(batcher.held.is_empty());
    }
}
