//! The `wshub` command line: flags (each also a `WSHUB_*` environment variable) mapped
//! onto a [`Config`]. Lives in the library so `main.rs` stays a few lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::auth::JwtVerifier;
use crate::auth::{ApiKey, AuthSettings, Secret, StaticToken};
use crate::auth::{Policy, TopicRule};
use crate::config::{
    defaults, parse_duration, parse_size, BatchRule, ClusterSettings, Config, HistoryRule, RedisUrl, Store,
};

/// A WebSocket hub that holds very many connections on a few threads.
#[derive(Debug, Parser)]
#[command(name = "wshub", version, about)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "WSHUB_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Poller threads, at most 64 [default: number of CPUs, at most 64].
    #[arg(long, env = "WSHUB_SHARDS")]
    pub shards: Option<usize>,
    /// Instead of the hub protocol: echo every message back to its sender (conformance
    /// tests, benchmarks).
    #[arg(long, env = "WSHUB_ECHO", conflicts_with = "relay")]
    pub echo: bool,
    /// Instead of the hub protocol: relay every message, as it is, to every connection.
    #[arg(long, env = "WSHUB_RELAY")]
    pub relay: bool,
    /// Drop connections that have not completed the upgrade in this time.
    #[arg(long, env = "WSHUB_HANDSHAKE_TIMEOUT", default_value = defaults::HANDSHAKE_TIMEOUT, value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Ping a connection that has been silent this long (and again every interval).
    #[arg(long, env = "WSHUB_PING_INTERVAL", default_value = defaults::PING_INTERVAL, value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Close a connection silent this long (close code 1001).
    #[arg(long, env = "WSHUB_IDLE_TIMEOUT", default_value = defaults::IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long a peer has to answer our close frame.
    #[arg(long, env = "WSHUB_CLOSE_TIMEOUT", default_value = defaults::CLOSE_TIMEOUT, value_parser = parse_duration)]
    pub close_timeout: Duration,
    /// Largest frame or message accepted (larger: close 1009). E.g. 65536, 64KiB, 1MiB.
    #[arg(long, env = "WSHUB_MAX_MESSAGE_SIZE", default_value_t = defaults::MAX_MESSAGE_SIZE, value_parser = parse_size)]
    pub max_message_size: usize,
    /// Outbound bytes a connection may have queued before it is evicted (close 1008).
    #[arg(long, env = "WSHUB_MAX_PENDING_BYTES", default_value_t = defaults::MAX_PENDING_BYTES, value_parser = parse_size)]
    pub max_pending_bytes: usize,
    /// Connections held at once across all shards (more are answered 503).
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long connections get to finish closing.
    #[arg(long, env = "WSHUB_SHUTDOWN_TIMEOUT", default_value = defaults::SHUTDOWN_TIMEOUT, value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Topics one connection may subscribe to at once.
    #[arg(long, env = "WSHUB_MAX_SUBSCRIPTIONS", default_value_t = defaults::MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,
    /// Deliveries a shard's inbox holds for it; past that, deliveries to that shard's
    /// connections are refused and counted (`inbox_refused` in /stats) instead of queued.
    #[arg(long, env = "WSHUB_INBOX_CAPACITY", default_value_t = defaults::INBOX_CAPACITY)]
    pub inbox_capacity: usize,
    /// Messages a connection may send per second on average (0: no limit). Over it a
    /// client gets `rate_limited` errors, then a 1008 close if it keeps on.
    #[arg(long, env = "WSHUB_MAX_MESSAGES_PER_SECOND", default_value_t = 0)]
    pub max_messages_per_second: u32,
    /// Messages a connection may send in a burst [default: twice the rate].
    #[arg(long, env = "WSHUB_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Connections one source address may hold at once (0: no limit); more get 429.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Join a cluster: `redis://[user:password@]host:port[/db]`. Publications, broadcasts
    /// and sends to users then reach the connections of every instance on that Redis.
    #[arg(long, env = "WSHUB_REDIS", hide_env_values = true)]
    pub redis: Option<RedisUrl>,
    /// Starts every Redis channel of this cluster, so several clusters can share one Redis.
    #[arg(long, env = "WSHUB_CLUSTER_PREFIX", default_value = defaults::CLUSTER_PREFIX)]
    pub cluster_prefix: String,
    /// Deliver topics matching PATTERN in batches every INTERVAL, e.g. 'ticker.*=100ms'
    /// (repeatable; comma-separated in the environment variable).
    #[arg(long, env = "WSHUB_BATCH", value_delimiter = ',')]
    pub batch: Vec<BatchRule>,
    /// Keep the publications of topics matching PATTERN, with offsets clients recover
    /// from: 'PATTERN=N/AGE' (the last N, none older than AGE), 'PATTERN=N' or
    /// 'PATTERN=AGE', e.g. 'chat.*=1000/24h' (repeatable; comma-separated in the
    /// environment variable; the first matching rule decides).
    #[arg(long, env = "WSHUB_HISTORY", value_delimiter = ',')]
    pub history: Vec<HistoryRule>,
    /// Where history is kept: an SQLite file (created if missing), or 'memory'.
    #[arg(long, env = "WSHUB_STORE", default_value = defaults::STORE)]
    pub store: Store,
    /// Messages a `subscribe` with `since` replays at most (further behind: `recovered:
    /// false`), and the largest `history` page.
    #[arg(long, env = "WSHUB_MAX_REPLAY", default_value_t = defaults::MAX_REPLAY)]
    pub max_replay: usize,
    /// Key a backend must present (`Authorization: Bearer KEY`) to use the HTTP publish
    /// API (repeatable; comma-separated in the environment variable, which keeps it out
    /// of `ps`). Without one the API answers 403.
    #[arg(long, env = "WSHUB_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "WSHUB_API_KEY_FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// How clients prove who they are: `none` (open: `?user=` taken as given), or one or
    /// more of `token`, `jwt`, `ticket` (comma-separated).
    #[arg(long, env = "WSHUB_AUTH", value_delimiter = ',', default_value = "none")]
    pub auth: Vec<AuthMode>,
    /// A static token for `--auth token`, as `TOKEN=USER` or `TOKEN=USER:admin`
    /// (repeatable; comma-separated in the environment variable).
    #[arg(long, env = "WSHUB_AUTH_TOKEN", value_delimiter = ',', hide_env_values = true)]
    pub auth_token: Vec<String>,
    /// A file of static tokens, one `TOKEN USER [admin]` per line.
    #[arg(long, env = "WSHUB_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// The HS256 secret for `--auth jwt` (prefer the environment variable or the file).
    #[arg(long, env = "WSHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "WSHUB_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Require this `iss` claim.
    #[arg(long, env = "WSHUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Require this `aud` claim.
    #[arg(long, env = "WSHUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "WSHUB_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// How long a ticket from `POST /api/ticket` stays redeemable.
    #[arg(long, env = "WSHUB_TICKET_TTL", default_value = "30s", value_parser = parse_duration)]
    pub ticket_ttl: Duration,
    /// Origins browsers may connect from (`https://app.example`, or `*` for any);
    /// default: only pages served from the host they connect to.
    #[arg(long, env = "WSHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Serve wss:// (and https://) with this PEM certificate chain (leaf first); needs
    /// --tls-key. `scripts/gencert.sh` makes a self-signed one for development.
    #[arg(long, env = "WSHUB_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "WSHUB_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Only these users (and admins) may ACTION on topics matching PATTERN:
    /// `ACTION:PATTERN=USER,USER`, ACTION `subscribe` or `publish`, e.g.
    /// 'publish:news.*=ops,editor' (repeatable; the first matching rule decides).
    #[arg(long, env = "WSHUB_TOPIC_RULE", value_delimiter = ';')]
    pub topic_rule: Vec<TopicRule>,
    /// Users who may broadcast, besides admins [default: anyone in open mode, only admins
    /// with credentials].
    #[arg(long, env = "WSHUB_BROADCASTERS", value_delimiter = ',')]
    pub broadcasters: Option<Vec<String>>,
    /// Do not serve the web demo page at `/`.
    #[arg(long, env = "WSHUB_NO_DEMO")]
    pub no_demo: bool,
    /// Threads for application handlers that may block (the hub protocol's requests).
    #[arg(long, env = "WSHUB_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "WSHUB_LOG_LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// A way clients may authenticate (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    None,
    Token,
    Jwt,
    Ticket,
}

/// Which built-in handler the binary runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The JSON hub protocol (`docs/PROTOCOL.md`).
    Hub,
    Echo,
    Relay,
}

impl Cli {
    pub fn mode(&self) -> Mode {
        match (self.echo, self.relay) {
            (true, _) => Mode::Echo,
            (_, true) => Mode::Relay,
            _ => Mode::Hub,
        }
    }

    /// The settings the flags describe; fails only when a named file cannot be read.
    pub fn config(&self) -> Result<Config, String> {
        let mut api_keys: Vec<ApiKey> = self.api_key.iter().map(ApiKey::new).collect();
        if let Some(path) = &self.api_key_file {
            let text = read(path)?;
            let lines = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
            api_keys.extend(lines.map(ApiKey::new));
        }
        let auth = self.auth_settings()?;
        Ok(Config {
            listen: self.listen,
            shards: self.shards.unwrap_or_else(|| Config::default().shards),
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            max_message_size: self.max_message_size,
            max_pending_bytes: self.max_pending_bytes,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
            max_subscriptions: self.max_subscriptions,
            inbox_capacity: self.inbox_capacity,
            batch: self.batch.clone(),
            max_messages_per_second: self.max_messages_per_second,
            message_burst: self.message_burst.unwrap_or(self.max_messages_per_second.saturating_mul(2)),
            max_connections_per_ip: self.max_connections_per_ip,
            api_keys,
            serve_demo: !self.no_demo,
            auth,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::config::TlsSettings::load(cert, key)?),
                (None, None) => None,
                _ => return Err("--tls-cert and --tls-key go together: give both, or neither".into()),
            },
            cluster: self.redis.clone().map(|redis| ClusterSettings { redis, prefix: self.cluster_prefix.clone() }),
            history: self.history.clone(),
            store: self.store.clone(),
            max_replay: self.max_replay,
        })
    }

    fn auth_settings(&self) -> Result<AuthSettings, String> {
        let on = |mode| self.auth.contains(&mode);
        if on(AuthMode::None) && self.auth.len() > 1 {
            return Err("--auth none cannot be combined with other modes".into());
        }
        let mut settings = AuthSettings {
            allowed_origins: self.allowed_origins.clone(),
            ticket_ttl: self.ticket_ttl,
            policy: Policy { rules: self.topic_rule.clone(), broadcasters: self.broadcasters.clone() },
            tickets: on(AuthMode::Ticket),
            ..AuthSettings::default()
        };
        if on(AuthMode::Token) {
            for spec in &self.auth_token {
                let (token, who) = spec.split_once('=').ok_or("--auth-token takes TOKEN=USER[:admin]")?;
                let (user, admin) = match who.strip_suffix(":admin") {
                    Some(user) => (user, true),
                    None => (who, false),
                };
                settings.tokens.push(StaticToken { token: Secret::new(token), user: user.into(), admin });
            }
            if let Some(path) = &self.auth_token_file {
                let text = read(path)?;
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (token, user, admin) = match fields[..] {
                        [token, user] => (token, user, false),
                        [token, user, "admin"] => (token, user, true),
                        _ => return Err(format!("{}: expected 'TOKEN USER [admin]' lines", path.display())),
                    };
                    settings.tokens.push(StaticToken { token: Secret::new(token), user: user.into(), admin });
                }
            }
            if settings.tokens.is_empty() {
                return Err("--auth token needs --auth-token or --auth-token-file".into());
            }
        }
        if on(AuthMode::Jwt) {
            let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
                (Some(secret), _) => secret.clone(),
                (None, Some(path)) => read(path)?.trim_end_matches(['\r', '\n']).to_string(),
                (None, None) => return Err("--auth jwt needs --jwt-secret or --jwt-secret-file".into()),
            };
            if secret.len() < 16 {
                return Err("the JWT secret must be at least 16 bytes".into());
            }
            let mut verifier = JwtVerifier::new(secret.into_bytes()).leeway(self.jwt_leeway);
            if let Some(issuer) = &self.jwt_issuer {
                verifier = verifier.issuer(issuer);
            }
            if let Some(audience) = &self.jwt_audience {
                verifier = verifier.audience(audience);
            }
            settings.jwt = Some(Arc::new(verifier));
        }
        Ok(settings)
    }

    /// Logs to stderr at the chosen level; tungstenite's own chatter only from warn up.
    pub fn init_logging(&self) {
        let _ = simple_logger::SimpleLogger::new()
            .with_level(self.log_level)
            .with_module_level("tungstenite", log::LevelFilter::Warn.min(self.log_level))
            .init();
    }
}

fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults_match_config_defaults() {
        let cli = Cli::try_parse_from(["wshub", "--shards", "2"]).unwrap();
        let config = cli.config().unwrap();
        let default = Config::default();
        assert_eq!(config.listen, default.listen);
        assert_eq!(config.idle_timeout, default.idle_timeout);
        assert_eq!(config.max_pending_bytes, default.max_pending_bytes);
        assert_eq!(config.shards, 2);
        assert_eq!(cli.mode(), Mode::Hub);
    }

    #[test]
    fn cli_parses_units() {
        let cli =
            Cli::try_parse_from(["wshub", "--echo", "--ping-interval", "500ms", "--max-message-size", "1MiB"]).unwrap();
        assert_eq!(cli.mode(), Mode::Echo);
        assert_eq!(cli.ping_interval, Duration::from_millis(500));
        assert_eq!(cli.max_message_size, 1 << 20);
        assert!(Cli::try_parse_from(["wshub", "--ping-interval", "soon"]).is_err());
        let cli = Cli::try_parse_from(["wshub", "--batch", "ticker.*=100ms", "--batch", "news=1s"]).unwrap();
        assert_eq!(cli.config().unwrap().batch.len(), 2);
        assert!(Cli::try_parse_from(["wshub", "--batch", "nonsense"]).is_err());
        let cli = Cli::try_parse_from(["wshub", "--history", "chat.*=10/1h", "--store", "memory"]).unwrap();
        let config = cli.config().unwrap();
        assert_eq!((config.history.len(), config.store, config.max_replay), (1, Store::Memory, 1_000));
        assert!(Cli::try_parse_from(["wshub", "--history", "chat"]).is_err());
        let cli =
            Cli::try_parse_from(["wshub", "--topic-rule", "publish:news.*=ops,ed", "--broadcasters", "a,b"]).unwrap();
        let policy = cli.config().unwrap().auth.policy;
        assert_eq!((policy.rules[0].users.len(), policy.broadcasters.map(|b| b.len())), (2, Some(2)));
        assert!(Cli::try_parse_from(["wshub", "--topic-rule", "publish:news"]).is_err());
    }

    #[test]
    fn redis_joins_a_cluster_and_nothing_else_does() {
        assert_eq!(Cli::try_parse_from(["wshub"]).unwrap().config().unwrap().cluster, None);
        let cli =
            Cli::try_parse_from(["wshub", "--redis", "redis://10.0.0.5:6380/1", "--cluster-prefix", "eu"]).unwrap();
        let cluster = cli.config().unwrap().cluster.unwrap();
        assert_eq!((cluster.redis.to_string().as_str(), cluster.prefix.as_str()), ("redis://10.0.0.5:6380/1", "eu"));
        let cli = Cli::try_parse_from(["wshub", "--redis", "redis://h:1"]).unwrap();
        assert_eq!(cli.config().unwrap().cluster.unwrap().prefix, "wshub");
        assert!(Cli::try_parse_from(["wshub", "--redis", "http://h:1"]).is_err());
    }
}
