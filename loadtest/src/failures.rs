//! Why connections fail ([`Cause`]) and how many did, by cause ([`Failures`]): the same
//! numbers in every subcommand's report.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

/// Why a connection never got to the open state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cause {
    Refused,
    Timeout,
    BadHandshake,
    FdLimit,
    Other,
    /// wss://: the TLS handshake failed (an untrusted certificate, one not valid for the
    /// server name, an alert from the server).
    Tls,
}

impl Cause {
    pub const ALL: [Cause; 6] =
        [Cause::Refused, Cause::Timeout, Cause::BadHandshake, Cause::FdLimit, Cause::Other, Cause::Tls];

    /// The key in JSON summaries and the word in text ones.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Timeout => "timeout",
            Cause::BadHandshake => "bad_handshake",
            Cause::FdLimit => "fd_limit",
            Cause::Other => "other",
            Cause::Tls => "tls",
        }
    }

    pub fn of(err: &io::Error) -> Cause {
        if crate::tls::is_tls_error(err) {
            return Cause::Tls;
        }
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => Cause::Refused,
            Some(libc::ETIMEDOUT) => Cause::Timeout,
            Some(libc::EMFILE) | Some(libc::ENFILE) => Cause::FdLimit,
            _ => Cause::Other,
        }
    }
}

/// Connections that never got going, by cause, with the first message of each cause:
/// counts say how often, the message says why. Workers send it to the parent as is.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    /// Indexed like [`Cause::ALL`].
    pub counts: [u64; 6],
    pub first: [Option<String>; 6],
}

impl Failures {
    pub fn fail(&mut self, cause: Cause, message: impl FnOnce() -> String) {
        let i = cause as usize;
        self.counts[i] += 1;
        if self.first[i].is_none() {
            self.first[i] = Some(message());
        }
    }

    /// `count` failures, all for one cause and one reason.
    pub fn all(cause: Cause, count: u64, why: String) -> Failures {
        let mut failures = Failures::default();
        failures.counts[cause as usize] = count;
        failures.first[cause as usize] = Some(why);
        failures
    }

    pub fn count(&self, cause: Cause) -> u64 {
        self.counts[cause as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: Failures) {
        for (i, first) in other.first.into_iter().enumerate() {
            self.counts[i] += other.counts[i];
            if self.first[i].is_none() {
                self.first[i] = first;
            }
        }
    }

    /// `{"refused": n, ...}` with every cause present: the summaries' count object.
    pub fn by_cause(&self) -> BTreeMap<&'static str, u64> {
        Cause::ALL.iter().map(|&c| (c.name(), self.count(c))).collect()
    }

    /// `{"refused": "first message", ...}` with only the causes that happened.
    pub fn first_by_cause(&self) -> BTreeMap<&'static str, &str> {
        Cause::ALL.iter().filter_map(|&c| Some((c.name(), self.first[c as usize].as_deref()?))).collect()
    }

    /// The failure keys of the fanout and echo summaries.
    pub fn connect_failed(&self) -> ConnectFailed<'_> {
        ConnectFailed {
            connect_failed: self.by_cause(),
            connect_failed_total: self.total(),
            first_errors: self.first_by_cause(),
        }
    }

    /// "3 (refused 3, timeout 0, ...)" plus one indented line per first message.
    pub fn to_text(&self) -> String {
        let causes: Vec<String> = Cause::ALL.iter().map(|&c| format!("{} {}", c.name(), self.count(c))).collect();
        let mut out = format!("{} ({})\n", self.total(), causes.join(", "));
        for c in Cause::ALL {
            if let Some(msg) = &self.first[c as usize] {
                out += &format!("    first {}: {msg}\n", c.name());
            }
        }
        out
    }

    /// The hint for a run in which nothing connected: refusals mean nobody listens.
    pub fn nothing_connected_hint(&self) -> &'static str {
        if self.count(Cause::Refused) > 0 {
            " (connection refused: is the server listening there?)"
        } else {
            ""
        }
    }
}

/// Connections that never got going, in the fanout and echo `--json` lines (flattened
/// into them: `hold` names its counts `failed` instead).
#[derive(Serialize)]
pub struct ConnectFailed<'a> {
    connect_failed: BTreeMap<&'static str, u64>,
    connect_failed_total: u64,
    first_errors: BTreeMap<&'static str, &'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_merge_and_round_trip() {
        let mut a = Failures::default();
        a.fail(Cause::Timeout, || "slow".into());
        let mut b = Failures::default();
        b.fail(Cause::Timeout, || "later".into());
        b.fail(Cause::Other, || "odd".into());
        a.merge(b);
        assert_eq!(a.counts, [0, 2, 0, 0, 1, 0]);
        assert_eq!(a.first[1].as_deref(), Some("slow"));
        let back: Failures = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert!(a.to_text().starts_with("3 (refused 0, timeout 2,"));
        assert_eq!(serde_json::to_value(a.by_cause()).unwrap()["timeout"], 2);
        let first = serde_json::to_value(a.first_by_cause()).unwrap();
        assert_eq!((first["other"].as_str(), first.get("refused")), (Some("odd"), None));
    }
}
