//! Whether a subscriber can recover from the position it last saw: pure rules, applied
//! by the history thread once everything before the recovery is stored and routed.

use crate::protocol::Since;

/// What a recovery from `since` needs, knowing the topic's epoch and last offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Nothing was missed: recovered, with nothing to replay.
    UpToDate,
    /// Read the `count` publications after `after`: recovered if all are still stored.
    Read { after: u64, count: usize },
    /// The history cannot give it back: another epoch (the history it saw is gone), or
    /// more missed than a replay may carry.
    Lost,
    /// An offset beyond the topic's last, in its epoch: the client kept a wrong value.
    BadSince,
}

/// Plans the recovery of a subscriber at `since` on a topic at `last` in `epoch`,
/// replaying at most `max_replay` messages.
pub(super) fn plan(since: &Since, epoch: &str, last: u64, max_replay: usize) -> Plan {
    if since.epoch != epoch {
        return Plan::Lost;
    }
    match last.checked_sub(since.offset) {
        None => Plan::BadSince,
        Some(0) => Plan::UpToDate,
        Some(missed) if missed > max_replay as u64 => Plan::Lost,
        Some(missed) => Plan::Read { after: since.offset, count: missed as usize },
    }
}

/// Whether the publications read for [`Plan::Read`] are every one missed: offsets are
/// consecutive and stored in order, so it is enough that as many came back as were
/// asked for, starting right after `after`.
pub(super) fn complete(offsets: &[u64], after: u64, count: usize) -> bool {
    offsets.len() == count && offsets.first().is_none_or(|&first| first == after + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(offset: u64, epoch: &str) -> Since {
        Since { offset, epoch: epoch.into() }
    }

    #[test]
    fn plans_by_epoch_and_distance() {
        assert_eq!(plan(&since(5, "a"), "a", 5, 10), Plan::UpToDate);
        assert_eq!(plan(&since(2, "a"), "a", 5, 10), Plan::Read { after: 2, count: 3 });
        assert_eq!(plan(&since(0, "a"), "a", 10, 10), Plan::Read { after: 0, count: 10 });
        assert_eq!(plan(&since(0, "a"), "a", 11, 10), Plan::Lost, "more than a replay carries");
        assert_eq!(plan(&since(2, "b"), "a", 5, 10), Plan::Lost, "another epoch");
        assert_eq!(plan(&since(6, "a"), "a", 5, 10), Plan::BadSince);
        assert_eq!(plan(&since(6, "b"), "a", 5, 10), Plan::Lost, "another epoch's offsets mean nothing here");
    }

    #[test]
    fn complete_only_when_every_missed_one_is_still_stored() {
        assert!(complete(&[3, 4, 5], 2, 3));
        assert!(!complete(&[4, 5], 2, 3), "the oldest were trimmed");
        assert!(!complete(&[], 2, 3));
    }
}
