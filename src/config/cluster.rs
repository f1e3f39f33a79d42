//! `--redis` and `--cluster-prefix`: the settings that join an instance to a cluster.

use std::fmt;
use std::str::FromStr;

/// `redis://[user:password@]host:port[/db]`: the Redis every instance of the cluster
/// shares. Checked when parsed; printed (Debug, Display) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given, password included: only for connecting.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = redis::parse_redis_url(text).ok_or_else(|| format!("'{}' is not a redis:// URL", Redacted(text)))?;
        if url.scheme() != "redis" {
            return Err(format!("'{}': only redis:// is supported (not TLS or a Unix socket)", Redacted(text)));
        }
        redis::IntoConnectionInfo::into_connection_info(text).map_err(|e| format!("'{}': {e}", Redacted(text)))?;
        Ok(RedisUrl(text.to_string()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", Redacted(&self.0))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted(&self.0).fmt(f)
    }
}

/// A Redis URL with the password (what follows `:` before `@`) replaced by `***`.
struct Redacted<'a>(&'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else { return f.write_str(self.0) };
        match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _)) => write!(f, "{scheme}://{user}:***@{host}"),
                None => write!(f, "{scheme}://***@{host}"),
            },
            None => f.write_str(self.0),
        }
    }
}

/// How an instance joins its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub redis: RedisUrl,
    /// Starts every Redis channel the cluster uses, so several clusters can share one
    /// Redis (`wshub` by default).
    pub prefix: String,
}

impl ClusterSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.prefix.is_empty() || self.prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("--cluster-prefix {:?} must be non-empty, without spaces", self.prefix));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_print_their_password() {
        let url: RedisUrl = "redis://ann:s3cret@127.0.0.1:6379/2".parse().unwrap();
        assert_eq!(url.expose(), "redis://ann:s3cret@127.0.0.1:6379/2");
        assert_eq!(
            format!("{url} {url:?}"),
            "redis://ann:***@127.0.0.1:6379/2 RedisUrl(redis://ann:***@127.0.0.1:6379/2)"
        );
        let only_password: RedisUrl = "redis://:pw@h:1".parse().unwrap();
        assert_eq!(only_password.to_string(), "redis://:***@h:1");
        assert!("redis://h:1".parse::<RedisUrl>().is_ok());
        let wrong = "http://u:s3cret@h:1".parse::<RedisUrl>().unwrap_err();
        assert!(!wrong.contains("s3cret"), "{wrong}");
        assert!("rediss://h:1".parse::<RedisUrl>().is_err());
        assert!("not a url".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn the_prefix_must_be_a_word() {
        let settings = |prefix: &str| ClusterSettings { redis: "redis://h:1".parse().unwrap(), prefix: prefix.into() };
        assert!(settings("wshub").validate().is_ok());
        assert!(settings("").validate().is_err());
        assert!(settings("a b").validate().is_err());
    }
}
