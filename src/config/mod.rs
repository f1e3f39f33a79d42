//! Server settings: what an operator (through the CLI or `WSHUB_*` variables) or an
//! embedding application chooses. Built once, validated by [`Config::validate`], then
//! shared read-only by every shard.

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) mod cli;
mod cluster;
mod history;
mod tls;
mod units;

pub use cli::{Cli, Mode};
pub use cluster::{ClusterSettings, RedisUrl};
pub use history::{HistoryRule, Store};
pub use tls::TlsSettings;
pub(crate) use units::{parse_duration, parse_size};

use crate::auth::{ApiKey, AuthSettings};

/// Everything a server needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every shard's `SO_REUSEPORT` listener binds; port 0 picks a free port once
    /// and the other shards join it.
    pub listen: SocketAddr,
    /// Number of poller threads (1 to 64). Each owns its listener, connections and timers.
    pub shards: usize,
    /// A connection that has not completed its HTTP upgrade by then is dropped.
    pub handshake_timeout: Duration,
    /// An open connection that has been silent this long gets a WebSocket ping
    /// (and another every interval while it stays silent).
    pub ping_interval: Duration,
    /// An open connection silent for this long is closed (1001, "idle timeout").
    pub idle_timeout: Duration,
    /// After we send a close frame, how long the peer has to answer before the socket
    /// is dropped anyway.
    pub close_timeout: Duration,
    /// Largest frame and largest (reassembled) message accepted from a client;
    /// above it the connection is closed with 1009.
    pub max_message_size: usize,
    /// Outbound bytes a connection may have queued; a consumer that falls further
    /// behind is evicted with 1008.
    pub max_pending_bytes: usize,
    /// Open connections across all shards; more are answered `503` and closed.
    pub max_connections: usize,
    /// On shutdown, how long connections get to finish their close handshake.
    pub shutdown_timeout: Duration,
    /// Topics one connection may subscribe to at once.
    pub max_subscriptions: usize,
    /// Deliveries one shard's inbox holds; past that they are refused and counted, never
    /// waited on (see the hub's inbox).
    pub inbox_capacity: usize,
    /// Messages a connection may send per second on average (0: no limit); past the
    /// burst it gets `rate_limited` errors, and if it persists a 1008 close.
    pub max_messages_per_second: u32,
    /// Messages a connection may send at once before the rate applies.
    pub message_burst: u32,
    /// Connections one source address may hold at once (0: no limit); more get 429.
    pub max_connections_per_ip: usize,
    /// Topics whose publications are delivered in batches, and how often.
    pub batch: Vec<BatchRule>,
    /// Keys a backend presents (`Authorization: Bearer`) to use the HTTP publish API;
    /// with none, the API answers 403.
    pub api_keys: Vec<ApiKey>,
    /// Serve the web demo page at `/` (and its script at `/app.js`).
    pub serve_demo: bool,
    pub auth: AuthSettings,
    /// Serve `wss://` (and `https://`) with this certificate and key; `None`: plain.
    pub tls: Option<TlsSettings>,
    /// Join a cluster over Redis (`--redis`); `None`: a single instance, nothing
    /// Redis-related runs.
    pub cluster: Option<ClusterSettings>,
    /// Topics that keep their publications, with offsets (`--history`); empty: no
    /// history, no store is opened and no history thread runs.
    pub history: Vec<HistoryRule>,
    /// Where history is kept (`--store`); unused without `history`.
    pub store: Store,
    /// Messages one `subscribe` with `since` replays at most (`--max-replay`); a client
    /// further behind is told `recovered: false` and pages with `history` requests. Also
    /// the largest page a `history` request gets.
    pub max_replay: usize,
}

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
        let interval = parse_duration(interval)?;
        if interval.is_zero() {
            return Err(format!("'{text}': the interval must be above zero"));
        }
        Ok(BatchRule { pattern: pattern.to_string(), interval })
    }
}

/// Defaults shared by [`Config::default`] and the CLI, so the two never drift apart.
/// Shards one instance can run: a connection id names its shard in 6 bits (`ConnId`
/// checks that the two agree). The default, one per core, is capped at it.
pub(crate) const MAX_SHARDS: usize = 64;

pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const HANDSHAKE_TIMEOUT: &str = "10s";
    pub const PING_INTERVAL: &str = "30s";
    pub const IDLE_TIMEOUT: &str = "75s";
    pub const CLOSE_TIMEOUT: &str = "5s";
    pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
    pub const MAX_PENDING_BYTES: usize = 1024 * 1024;
    pub const MAX_CONNECTIONS: usize = 1_000_000;
    pub const SHUTDOWN_TIMEOUT: &str = "5s";
    pub const MAX_SUBSCRIPTIONS: usize = 100;
    pub const INBOX_CAPACITY: usize = 65_536;
    pub const CLUSTER_PREFIX: &str = "wshub";
    pub const STORE: &str = "wshub.db";
    pub const MAX_REPLAY: usize = 1_000;
}

impl Default for Config {
    fn default() -> Self {
        let duration = |text| parse_duration(text).expect("default durations parse");
        Config {
            listen: defaults::LISTEN.parse().expect("default address parses"),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SHARDS),
            handshake_timeout: duration(defaults::HANDSHAKE_TIMEOUT),
            ping_interval: duration(defaults::PING_INTERVAL),
            idle_timeout: duration(defaults::IDLE_TIMEOUT),
            close_timeout: duration(defaults::CLOSE_TIMEOUT),
            max_message_size: defaults::MAX_MESSAGE_SIZE,
            max_pending_bytes: defaults::MAX_PENDING_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            shutdown_timeout: duration(defaults::SHUTDOWN_TIMEOUT),
            max_subscriptions: defaults::MAX_SUBSCRIPTIONS,
            inbox_capacity: defaults::INBOX_CAPACITY,
            batch: Vec::new(),
            max_messages_per_second: 0,
            message_burst: 0,
            max_connections_per_ip: 0,
            api_keys: Vec::new(),
            serve_demo: true,
            auth: AuthSettings::default(),
            tls: None,
            cluster: None,
            history: Vec::new(),
            store: Store::File(defaults::STORE.into()),
            max_replay: defaults::MAX_REPLAY,
        }
    }
}

impl Config {
    /// Rejects combinations the engine cannot honour, with a message an operator can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(format!(
                "--shards must be 1..={MAX_SHARDS} (a connection id has 6 bits for its shard), got {}; \
                 run more instances for more cores",
                self.shards
            ));
        }
        if self.inbox_capacity == 0 {
            return Err("--inbox-capacity must be at least 1".into());
        }
        if self.api_keys.iter().any(|key| key.0.trim().is_empty() || key.0.contains(char::is_whitespace)) {
            return Err("an API key must not be empty or contain whitespace".into());
        }
        for token in &self.auth.tokens {
            if token.token.0.is_empty() || token.token.0.contains(char::is_whitespace) {
                return Err("a static token must not be empty or contain whitespace".into());
            }
            if !crate::http::is_valid_user(&token.user) {
                return Err(format!("static token user {:?} is not a valid user name", token.user));
            }
        }
        if self.auth.tickets && self.api_keys.is_empty() {
            return Err("--auth ticket needs --api-key: backends ask for tickets with it".into());
        }
        if self.max_message_size < 125 {
            return Err("--max-message-size must be at least 125 bytes".into());
        }
        // An echo or relay of the largest accepted message must fit the outbound queue,
        // or every such delivery would evict its receiver.
        if self.max_pending_bytes < self.max_message_size + 16 {
            return Err(format!(
                "--max-pending-bytes ({}) must exceed --max-message-size ({}) plus a frame header",
                self.max_pending_bytes, self.max_message_size
            ));
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return Err("--idle-timeout must be longer than a non-zero --ping-interval".into());
        }
        if self.handshake_timeout.is_zero() || self.close_timeout.is_zero() {
            return Err("--handshake-timeout and --close-timeout must be non-zero".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if !self.history.is_empty() {
                return Err("--history is for a single instance so far; drop --redis or --history \
                     (history shared across a cluster is not implemented yet)"
                    .into());
            }
        }
        if self.max_replay == 0 {
            return Err("--max-replay must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let rule: BatchRule = "ticker.*=250ms".parse().unwrap();
        assert_eq!(rule, BatchRule { pattern: "ticker.*".into(), interval: Duration::from_millis(250) });
        assert!("ticker.*".parse::<BatchRule>().is_err());
        assert!("=1s".parse::<BatchRule>().is_err());
        assert!("a=0ms".parse::<BatchRule>().is_err());
    }

    #[test]
    fn api_keys_match_exactly_and_never_print() {
        let key = ApiKey::new("s3cret");
        assert!(key.matches("s3cret"));
        assert!(!key.matches("s3cre") && !key.matches("s3cret!") && !key.matches("S3cret"));
        let config = Config { api_keys: vec![key], ..Config::default() };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn shards_must_fit_a_connection_id() {
        assert_eq!(Config { shards: MAX_SHARDS, ..Config::default() }.validate(), Ok(()));
        let error = Config { shards: MAX_SHARDS + 1, ..Config::default() }.validate().unwrap_err();
        assert!(error.starts_with("--shards must be 1..=64"), "{error}");
        assert!(Config { shards: 0, ..Config::default() }.validate().is_err());
    }

    #[test]
    fn history_is_for_one_instance_and_replays_at_least_one_message() {
        let history = vec!["chat.*=10".parse().unwrap()];
        assert_eq!(Config { history: history.clone(), ..Config::default() }.validate(), Ok(()));
        let redis = "redis://127.0.0.1:6379".parse().unwrap();
        let cluster = Some(ClusterSettings { redis, prefix: "wshub".into() });
        let error = Config { history, cluster, ..Config::default() }.validate().unwrap_err();
        assert!(error.contains("--history"), "{error}");
        assert!(Config { max_replay: 0, ..Config::default() }.validate().is_err());
    }

    #[test]
    fn pending_limit_must_hold_a_full_message() {
        let config = Config { max_message_size: 1 << 20, max_pending_bytes: 1 << 20, ..Config::default() };
        assert!(config.validate().unwrap_err().contains("--max-pending-bytes"));
    }
}
