//! What the server counts, and how `/stats` and `/metrics` show it. Sits beside the shard
//! loop: each shard counts into plain integers as it works ([`Counters`], no atomics on
//! the delivery path) and publishes them once per loop pass into its `ShardShared`, where
//! the HTTP endpoints and [`Hub::stats`](crate::Hub::stats) read them.

use std::fmt::Write as _;

use serde::Serialize;

/// A snapshot of the server's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Sockets held, in any phase: upgraded WebSockets, and also those still handshaking
    /// or being answered over plain HTTP.
    pub connections: usize,
    pub connections_per_shard: Vec<usize>,
    /// Distinct topics with at least one subscriber.
    pub topics: usize,
    /// Distinct named users with an open connection (anonymous connections not counted).
    pub users: usize,
    /// Connections holding session data.
    pub sessions: usize,
    /// Deliveries waiting in each shard's inbox.
    pub inbox_depths: Vec<usize>,
    /// Deliveries each shard's inbox refused since the start because it was full
    /// (`--inbox-capacity`): that shard's receivers missed them.
    pub inbox_refused: Vec<u64>,
    /// Credential warnings and closes scheduled (two per connection whose token expires,
    /// and a bounded number of stale ones for connections already gone).
    pub expiry_entries: usize,
    pub uptime_seconds: u64,
    /// Every shard's counters summed (flattened into the JSON: `messages_in`, ...).
    #[serde(flatten)]
    pub totals: Counters,
    /// Each shard's counters, for `/metrics`.
    #[serde(skip)]
    pub per_shard: Vec<Counters>,
    /// The cluster bus, when the server runs with `--redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
    /// The history store, with `--history`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryStats>,
}

/// The history store (`--history`) as its thread last found it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HistoryStats {
    /// The last write to the store succeeded (or none failed yet).
    pub store_up: bool,
    /// Why the last write failed, while the store is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failed writes since the start (their publications went out live, without offsets).
    pub failures: u64,
}

/// One live instance of the cluster, as its last heartbeat told it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct InstanceStats {
    /// Its node id (random per start).
    pub id: String,
    pub connections: usize,
    pub topics: usize,
    pub users: usize,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// The cluster bus's state and counts since the start; `instances` to `members` are the
/// whole cluster's, as of the last heartbeat, the others this instance's bus.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClusterStats {
    /// Both Redis connections (publishing and subscribed) are up.
    pub redis_up: bool,
    /// Live instances in the cluster, this one included, as of the last heartbeat (an
    /// instance that stops renewing its entry drops out within 3 s).
    pub instances: usize,
    /// This instance's id among them (as in `members`; random per start).
    pub id: String,
    /// Connections held by all of them, as of the last heartbeat (each instance's
    /// `connections` summed).
    pub connections: usize,
    /// Each instance's distinct topics with a subscriber, summed: a topic subscribed on
    /// two instances counts twice.
    pub topics: usize,
    /// Each instance's distinct named users with a connection, summed: a user connected
    /// to two instances counts twice.
    pub users: usize,
    /// Messages received from clients by all instances since each started.
    pub messages_in: u64,
    /// Messages written to clients by all instances since each started.
    pub messages_out: u64,
    /// Each live instance's own figures, sorted by id, as of the last heartbeat.
    pub members: Vec<InstanceStats>,
    /// Why it is not, while it is not: the last connection error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
    /// Connections to Redis made again after one was lost.
    pub reconnects: u64,
    /// Publications sent to Redis.
    pub published: u64,
    /// Publications from other instances handed to the local shards.
    pub received: u64,
    /// Publications the other instances missed and whose sender was told (the queue
    /// toward Redis was full, or Redis was down): counted as they are refused.
    pub refused: u64,
    /// Publications the other instances missed after they were accepted (lost with a
    /// Redis connection): their sender was not told.
    pub dropped: u64,
    /// Publications waiting to be sent to Redis.
    pub queue_depth: usize,
    /// Topics and users some local connection wants from the cluster.
    pub wanted: usize,
    /// Redis channels subscribed (the broadcast channel and this instance's own included).
    pub channels: usize,
    /// This instance's node number, which its connection ids carry (provisional until
    /// Redis is first reached).
    pub node: u16,
    /// Filtered sends from other instances that named a filter this one has not
    /// registered (every instance must register the same `App::filter`s).
    pub unknown_filters: u64,
}

/// Running totals of one shard (or, summed, of the server) since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// WebSocket messages received from clients (text and binary).
    pub messages_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// WebSocket messages queued to clients (one per receiving connection).
    pub messages_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Completed WebSocket upgrades.
    pub handshakes: u64,
    /// Upgrade requests refused (400, 405, 426, 503) or not completed in time.
    pub handshake_failures: u64,
    /// Requests refused for a missing or wrong credential (the HTTP API key).
    pub auth_failures: u64,
    /// Plain HTTP requests answered.
    pub http_requests: u64,
    /// Slow consumers closed with 1008 for falling too far behind.
    pub evictions: u64,
}

impl Counters {
    /// Adds `other` into `self`, field by field.
    pub fn add(&mut self, other: &Counters) {
        let Counters {
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            handshakes,
            handshake_failures,
            auth_failures,
            http_requests,
            evictions,
        } = other;
        self.messages_in += messages_in;
        self.bytes_in += bytes_in;
        self.messages_out += messages_out;
        self.bytes_out += bytes_out;
        self.handshakes += handshakes;
        self.handshake_failures += handshake_failures;
        self.auth_failures += auth_failures;
        self.http_requests += http_requests;
        self.evictions += evictions;
    }

    /// Each counter with its Prometheus name and help text, in exposition order.
    fn named(&self) -> [(&'static str, &'static str, u64); 9] {
        [
            ("wshub_messages_received_total", "WebSocket messages received from clients.", self.messages_in),
            ("wshub_received_bytes_total", "Payload bytes of the messages received.", self.bytes_in),
            ("wshub_messages_sent_total", "WebSocket messages queued to clients, one per receiver.", self.messages_out),
            ("wshub_sent_bytes_total", "Payload bytes of the messages sent.", self.bytes_out),
            ("wshub_handshakes_total", "Completed WebSocket upgrades.", self.handshakes),
            ("wshub_handshake_failures_total", "Upgrades refused or not completed in time.", self.handshake_failures),
            ("wshub_auth_failures_total", "Requests refused for a missing or wrong credential.", self.auth_failures),
            ("wshub_http_requests_total", "Plain HTTP requests answered.", self.http_requests),
            ("wshub_evictions_total", "Slow consumers closed with 1008.", self.evictions),
        ]
    }
}

/// The Prometheus text exposition (format 0.0.4) of `stats`.
pub fn prometheus(stats: &Stats) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    let connections = stats.connections_per_shard.iter().map(|&c| c as u64);
    out.per_shard("wshub_connections", "gauge", "Sockets held (upgraded, handshaking or on plain HTTP).", connections);
    let depths = stats.inbox_depths.iter().map(|&d| d as u64);
    out.per_shard("wshub_inbox_depth", "gauge", "Deliveries waiting in the shard's inbox.", depths);
    let refused = stats.inbox_refused.iter().copied();
    out.per_shard("wshub_inbox_refused_total", "counter", "Deliveries refused by the shard's full inbox.", refused);
    out.single("wshub_topics", "Distinct topics with a subscriber.", stats.topics as u64);
    out.single("wshub_users", "Distinct named users with an open connection.", stats.users as u64);
    let expiries = stats.expiry_entries as u64;
    out.single("wshub_expiry_entries", "Credential warnings and closes scheduled, live or stale.", expiries);
    out.single("wshub_uptime_seconds", "Seconds since the server started.", stats.uptime_seconds);
    let named: Vec<_> = stats.per_shard.iter().map(Counters::named).collect();
    for (i, (name, help, _)) in Counters::default().named().into_iter().enumerate() {
        out.per_shard(name, "counter", help, named.iter().map(|counters| counters[i].2));
    }
    if let Some(history) = &stats.history {
        out.single("wshub_history_store_up", "1 while the history store takes writes.", history.store_up as u64);
        let failures = "Writes to the history store that failed (publications sent live, without offsets).";
        out.counter("wshub_history_store_failures_total", failures, history.failures);
    }
    if let Some(cluster) = &stats.cluster {
        out.single("wshub_redis_up", "1 while both Redis connections are up.", cluster.redis_up as u64);
        out.counter("wshub_redis_reconnects_total", "Redis connections made again after a loss.", cluster.reconnects);
        out.counter("wshub_redis_published_total", "Publications sent to Redis.", cluster.published);
        out.counter("wshub_redis_received_total", "Publications received from other instances.", cluster.received);
        let refused = "Publications refused toward Redis (queue full or Redis down); the sender was told.";
        out.counter("wshub_redis_refused_total", refused, cluster.refused);
        let dropped = "Publications accepted, then lost with a Redis connection.";
        out.counter("wshub_redis_dropped_total", dropped, cluster.dropped);
        out.single("wshub_redis_queue_depth", "Publications waiting to be sent to Redis.", cluster.queue_depth as u64);
        out.single("wshub_redis_channels", "Redis channels subscribed.", cluster.channels as u64);
        let unknown = "Filtered sends from other instances through a filter not registered here.";
        out.counter("wshub_cluster_unknown_filters_total", unknown, cluster.unknown_filters);
        out.single(
            "wshub_cluster_instances",
            "Live instances in the cluster, this one included.",
            cluster.instances as u64,
        );
        let connections = "Connections held by all instances of the cluster.";
        out.single("wshub_cluster_connections", connections, cluster.connections as u64);
        let topics = "Topics with a subscriber, summed over the instances (one on two counts twice).";
        out.single("wshub_cluster_topics", topics, cluster.topics as u64);
        let users = "Named users with a connection, summed over the instances (one on two counts twice).";
        out.single("wshub_cluster_users", users, cluster.users as u64);
    }
    out.0
}

/// Writes metric families: `# HELP` and `# TYPE`, then the samples.
struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A gauge without labels.
    fn single(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A counter without labels.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// One sample per shard, labelled `shard="<index>"`.
    fn per_shard(&mut self, name: &str, kind: &str, help: &str, values: impl Iterator<Item = u64>) {
        self.header(name, kind, help);
        for (shard, value) in values.enumerate() {
            let _ = writeln!(self.0, "{name}{{shard=\"{shard}\"}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_field_by_field() {
        let mut total = Counters { messages_in: 1, evictions: 2, ..Counters::default() };
        total.add(&Counters { messages_in: 10, bytes_out: 5, ..Counters::default() });
        assert_eq!(total, Counters { messages_in: 11, bytes_out: 5, evictions: 2, ..Counters::default() });
    }

    #[test]
    fn the_exposition_has_help_type_and_a_sample_per_shard() {
        let stats = Stats {
            connections: 3,
            connections_per_shard: vec![1, 2],
            topics: 4,
            users: 2,
            sessions: 0,
            inbox_depths: vec![0, 7],
            inbox_refused: vec![3, 0],
            expiry_entries: 2,
            uptime_seconds: 9,
            totals: Counters { messages_in: 5, ..Counters::default() },
            per_shard: vec![
                Counters { messages_in: 2, ..Counters::default() },
                Counters { messages_in: 3, ..Counters::default() },
            ],
            cluster: None,
            history: None,
        };
        let text = prometheus(&stats);
        assert!(!text.contains("wshub_history"), "no history, no store metrics");
        let history = HistoryStats { store_up: false, reason: Some("disk full".into()), failures: 2 };
        let with_history = prometheus(&Stats { history: Some(history), ..stats.clone() });
        assert!(with_history.contains("# TYPE wshub_history_store_up gauge\nwshub_history_store_up 0\n"));
        assert!(with_history.contains("wshub_history_store_failures_total 2\n"));
        assert!(text.contains(
            "# TYPE wshub_connections gauge\nwshub_connections{shard=\"0\"} 1\nwshub_connections{shard=\"1\"} 2\n"
        ));
        assert!(text.contains("wshub_inbox_depth{shard=\"1\"} 7\n"));
        assert!(text.contains("# TYPE wshub_inbox_refused_total counter\nwshub_inbox_refused_total{shard=\"0\"} 3\n"));
        assert!(text.contains("# TYPE wshub_messages_received_total counter\n"));
        assert!(text.contains("wshub_messages_received_total{shard=\"1\"} 3\n"));
        assert!(text.contains("wshub_topics 4\n"));
        assert!(text.contains("wshub_expiry_entries 2\n"));
        assert!(!text.contains("wshub_redis"), "no cluster, no Redis metrics");
        let cluster = ClusterStats { redis_up: true, dropped: 4, topics: 9, users: 5, ..ClusterStats::default() };
        let text = prometheus(&Stats { cluster: Some(cluster), ..stats });
        assert!(text.contains("# TYPE wshub_redis_up gauge\nwshub_redis_up 1\n"));
        assert!(text.contains("# TYPE wshub_cluster_topics gauge\nwshub_cluster_topics 9\n"));
        assert!(text.contains("wshub_cluster_users 5\n"));
        assert!(text.contains("# TYPE wshub_redis_dropped_total counter\nwshub_redis_dropped_total 4\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
