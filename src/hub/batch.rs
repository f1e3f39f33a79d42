//! Batching of high-rate topics: publications on topics matching a `--batch` rule are
//! held per shard and go out every interval as one `batch` frame per subscriber. Sits in
//! the shard between an arriving publication and delivery; free of sockets.

use std::collections::HashMap;
use std::sync::Arc;

use crate::frame::SharedFrame;

use crate::clock::{ticks, Tick};
use crate::config::BatchRule;
use crate::protocol;
use crate::protocol::glob_match;

/// One topic's held items and when they go out.
struct Held {
    items: Vec<Arc<str>>,
    /// Bytes the items take in the batch frame (with their separators).
    bytes: usize,
    due: Tick,
}

/// What `hold` did with a publication.
#[derive(Debug)]
pub(crate) enum Hold {
    /// Not a batched topic: deliver it now.
    NotBatched,
    /// Held for the topic's next batch.
    Held,
    /// Held, after the batch it would have overfilled went out early: deliver this frame now.
    Full(SharedFrame),
}

pub(crate) struct Batcher {
    rules: Vec<(String, Tick)>,
    held: HashMap<Arc<str>, Held>,
    /// Largest batch frame; a fuller batch goes out before its interval ends, so a batch
    /// never outgrows what a subscriber's queue accepts.
    max_bytes: usize,
}

impl Batcher {
    pub fn new(rules: &[BatchRule], max_bytes: usize) -> Self {
        Batcher {
            rules: rules.iter().map(|rule| (rule.pattern.clone(), ticks(rule.interval))).collect(),
            held: HashMap::new(),
            max_bytes,
        }
    }

    pub fn hold(&mut self, topic: &Arc<str>, data: &Arc<str>, now: Tick) -> Hold {
        if self.rules.is_empty() {
            return Hold::NotBatched;
        }
        let item = data.clone();
        if let Some(held) = self.held.get_mut(topic) {
            let full = held.bytes + item.len() + 1 > self.max_bytes;
            let early = full.then(|| {
                let frame = protocol::batch(topic, held.items.iter().map(|item| &**item));
                held.items.clear();
                held.bytes = batch_overhead(topic);
                SharedFrame::text(frame)
            });
            held.bytes += item.len() + 1;
            held.items.push(item);
            return early.map_or(Hold::Held, Hold::Full);
        }
        let Some(&(_, interval)) = self.rules.iter().find(|(pattern, _)| glob_match(pattern, topic)) else {
            return Hold::NotBatched;
        };
        let bytes = batch_overhead(topic) + item.len() + 1;
        self.held.insert(topic.clone(), Held { items: vec![item], bytes, due: now + interval });
        Hold::Held
    }

    /// The batch frames due by `now`, one per topic, each serialized once.
    pub fn take_due(&mut self, now: Tick, out: &mut Vec<(Arc<str>, SharedFrame)>) {
        if self.held.is_empty() {
            return;
        }
        self.held.retain(|topic, held| {
            if held.due > now {
                return true;
            }
            let frame = protocol::batch(topic, held.items.iter().map(|item| &**item));
            out.push((topic.clone(), SharedFrame::text(frame)));
            false
        });
    }
}

/// Bytes of a batch frame besides its items: `{"type":"batch","topic":"..","d":[]}`.
fn batch_overhead(topic: &str) -> usize {
    32 + topic.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `data` on `topic`, as a shard does with a topic delivery.
    fn hold(batcher: &mut Batcher, topic: &str, data: &str, now: Tick) -> Hold {
        batcher.hold(&topic.into(), &data.into(), now)
    }

    #[test]
    fn holds_matching_topics_until_their_interval_ends() {
        let rules = ["ticker.*=300ms".parse().unwrap()];
        let mut batcher = Batcher::new(&rules, 64 * 1024);
        assert!(matches!(hold(&mut batcher, "chat", "1", 0), Hold::NotBatched));
        assert!(matches!(hold(&mut batcher, "ticker.btc", "1", 0), Hold::Held));
        assert!(matches!(hold(&mut batcher, "ticker.btc", "2", 1), Hold::Held));
        assert!(matches!(hold(&mut batcher, "ticker.eth", "{\"p\":3}", 2), Hold::Held));
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

    #[test]
    fn a_batch_that_would_outgrow_the_frame_limit_goes_out_early() {
        let rules = ["t=10s".parse().unwrap()];
        let mut batcher = Batcher::new(&rules, 100);
        let item = "x".repeat(20);
        let mut early = Vec::new();
        for _ in 0..10 {
            if let Hold::Full(frame) = hold(&mut batcher, "t", &item, 0) {
                assert!(frame.len() <= 100, "frame of {} bytes", frame.len());
                early.push(frame);
            }
        }
        assert!(!early.is_empty(), "some batches went out before the interval");
        let mut out = Vec::new();
        batcher.take_due(100, &mut out);
        let items: usize =
            early.iter().chain(out.iter().map(|(_, m)| m)).map(|m| m.to_text().unwrap().matches('x').count()).sum();
        assert_eq!(items, 10 * 20, "nothing lost or duplicated");
    }
}
