//! Topic history settings: which topics keep their publications (`--history`), how many
//! and for how long, and where they are stored (`--store`).

use std::path::PathBuf;
use std::time::Duration;

use super::parse_duration;

/// `PATTERN=N/AGE`, `PATTERN=N` or `PATTERN=AGE`: topics matching the glob keep their
/// last `N` publications and/or those younger than `AGE`, e.g. `chat.*=1000/24h`. The
/// first matching rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    pub pattern: String,
    /// Publications kept per topic at most; `None`: as many as `max_age` allows.
    pub keep: Option<u64>,
    /// Publications older than this are dropped; `None`: kept until `keep` pushes them out.
    pub max_age: Option<Duration>,
}

impl std::str::FromStr for HistoryRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let example = "e.g. 'chat.*=1000/24h', 'news=500' or 'log.*=7d'";
        let (pattern, limits) =
            text.split_once('=').ok_or_else(|| format!("'{text}' is not PATTERN=N/AGE, {example}"))?;
        if pattern.is_empty() {
            return Err(format!("'{text}': the pattern is empty"));
        }
        let (keep, max_age) = match limits.split_once('/') {
            Some((count, age)) => (Some(count), Some(age)),
            // A bare number is a count; a number with a unit is an age.
            None if limits.trim().chars().all(|c| c.is_ascii_digit()) => (Some(limits), None),
            None => (None, Some(limits)),
        };
        let keep = keep
            .map(|count| {
                count.trim().parse::<u64>().map_err(|_| format!("'{text}': '{count}' is not a count, {example}"))
            })
            .transpose()?;
        let max_age = max_age.map(parse_duration).transpose().map_err(|why| format!("'{text}': {why}"))?;
        if keep == Some(0) || max_age.is_some_and(|age| age.is_zero()) {
            return Err(format!("'{text}': a topic with history keeps at least one message for some time"));
        }
        Ok(HistoryRule { pattern: pattern.to_string(), keep, max_age })
    }
}

/// Where history is kept (`--store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An SQLite database file, created if missing; a restart keeps its history.
    File(PathBuf),
    /// In memory only (`--store memory`): lost when the server stops (a new epoch then).
    Memory,
}

impl std::str::FromStr for Store {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "" => Err("--store takes a file path, or 'memory'".into()),
            // A file really named `memory` is still reachable as `./memory`.
            "memory" => Ok(Store::Memory),
            path => Ok(Store::File(path.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<HistoryRule, String> {
        text.parse()
    }

    #[test]
    fn rules_take_a_count_an_age_or_both() {
        let day = Duration::from_secs(86_400);
        let both = rule("chat.*=1000/24h").unwrap();
        assert_eq!((both.pattern.as_str(), both.keep, both.max_age), ("chat.*", Some(1000), Some(day)));
        assert_eq!((rule("news=500").unwrap().keep, rule("news=500").unwrap().max_age), (Some(500), None));
        assert_eq!((rule("log=1d").unwrap().keep, rule("log=1d").unwrap().max_age), (None, Some(day)));
        for bad in ["chat", "=10", "a=0", "a=0s", "a=x/1h", "a=10/soon", "a=-1"] {
            assert!(rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_store_is_a_path_or_memory() {
        assert_eq!("memory".parse(), Ok(Store::Memory));
        assert_eq!("./memory".parse(), Ok(Store::File("./memory".into())));
        assert!("".parse::<Store>().is_err());
    }
}
