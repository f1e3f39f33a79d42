//! The options every subcommand takes, flattened into each one so that `hold`, `fanout`
//! and `echo` name and read them alike: where to connect, how many connections, from
//! which addresses and processes, how fast, and how to print the result.

use crate::failures::Failures;
use crate::opts::{self, format_duration, parse_duration, parse_source_ips, parse_ws_url, SourceIps, WsUrl};
use crate::plan::{self, Share};
use crate::tls::TlsClient;
use std::path::PathBuf;
use std::time::Duration;

/// Connections one source address is given by default. An address has ~28k
/// ephemeral ports (32768-60999) towards one server port, but the kernel's port
/// search in connect() gets slow well before they run out: 19000 connections from
/// one address ramped at ~2800/s with 5 s of system time, from two or more at the
/// full 5000/s with 1 s. Loopback addresses are plentiful, so use them generously.
pub const CONNECTIONS_PER_SOURCE_IP: u64 = 5_000;

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Target as ws://IP:PORT/path or wss://IP:PORT/path (a literal IP; host names are
    /// not supported). Repeat it to load a cluster as a whole: the connections go to the
    /// URLs round-robin, over all processes (connection i to URL i mod count); fanout's
    /// publishers all go to the first
    #[arg(long = "url", value_parser = parse_ws_url, required = true)]
    pub urls: Vec<WsUrl>,
    /// wss://: trust the certificates in this PEM file (e.g. scripts/gencert.sh's
    /// cert.pem); required for wss://, as no system roots are used
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// wss://: the name the server's certificate must be valid for [default: the URL's
    /// IP address]; e.g. `localhost` for a gencert.sh certificate on another 127.x address
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Connections to open, over all processes (fanout: the subscribers; its
    /// publishers come on top, in the parent process)
    #[arg(long, short = 'n')]
    pub connections: u64,
    /// Processes to spread the connections over [default: as few as the fd limit allows]
    #[arg(long)]
    pub processes: Option<u64>,
    /// Source addresses to bind, e.g. 127.0.0.2-127.0.0.40 or 127.0.0.2,127.0.0.3
    /// [default for loopback targets: 127.0.0.2 upwards, 5000 connections each]
    #[arg(long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,
    /// New connections per second, over all processes
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Give up on a connection not upgraded (fanout, hub protocol: not subscribed) by then
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once, over all processes
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
    /// Print the final summary as one JSON object line
    #[arg(long)]
    pub json: bool,
    /// Internal: run as worker number N of a multi-process run
    #[arg(long, hide = true)]
    pub worker: Option<u64>,
}

impl CommonArgs {
    /// The first `--url`: fanout's publishers' target, and the one named in messages.
    pub fn url(&self) -> &WsUrl {
        &self.urls[0]
    }

    /// Every `--url` as given, space-separated, for reports.
    pub fn urls_text(&self) -> String {
        self.urls.iter().map(|u| u.original.as_str()).collect::<Vec<_>>().join(" ")
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.processes == Some(0) {
            return Err("--processes must be at least 1".into());
        }
        if !(self.connect_rate.is_finite() && self.connect_rate > 0.0) {
            return Err("--connect-rate must be a positive number of connections per second".into());
        }
        if self.handshake_timeout.is_zero() || self.max_inflight == 0 {
            return Err("--handshake-timeout and --max-inflight must be positive".into());
        }
        if let Some(ips) = &self.source_ips {
            if self.urls.iter().any(|u| u.addr.is_ipv6()) {
                return Err("--source-ips are IPv4 addresses but a target is IPv6".into());
            }
            if self.urls.iter().any(|u| u.addr.ip().is_loopback()) && ips.0.iter().any(|ip| !ip.is_loopback()) {
                return Err("to reach a loopback target, --source-ips must be in 127.0.0.0/8".into());
            }
        }
        let url = self.url();
        if self.urls.iter().any(|u| u.tls != url.tls) {
            return Err("the --url's must be all ws:// or all wss://".into());
        }
        if self.urls.iter().any(|u| u.addr.is_ipv6() != url.addr.is_ipv6()) {
            return Err("the --url's must be all IPv4 or all IPv6".into());
        }
        if url.tls && self.tls_server_name.is_none() && self.urls.iter().any(|u| u.addr.ip() != url.addr.ip()) {
            return Err("wss:// URLs on different IP addresses need --tls-server-name: one name for all".into());
        }
        match (url.tls, &self.ca) {
            (true, None) => return Err("wss:// needs --ca FILE: the PEM certificate(s) to trust".into()),
            (false, Some(_)) => return Err("--ca is for wss:// URLs".into()),
            (false, None) if self.tls_server_name.is_some() => {
                return Err("--tls-server-name is for wss:// URLs".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// For wss://, the TLS client every connection of this process uses (its `--ca` read
    /// now, so a bad file is an error before any connection or worker starts).
    pub fn tls(&self) -> Result<Option<TlsClient>, String> {
        let Some(ca) = self.ca.as_deref().filter(|_| self.url().tls) else { return Ok(None) };
        let ip = self.url().addr.ip().to_string();
        TlsClient::load(ca, self.tls_server_name.as_deref().unwrap_or(&ip)).map(Some)
    }

    /// How many processes to run: as asked, or as few as the fd limit allows. The parent
    /// (or only) process also holds `parent_sockets` (fanout's publishers); once there
    /// are workers the parent holds only those, so a split run has at least two.
    pub fn processes(&self, parent_sockets: u64) -> Result<u64, String> {
        let (n, p) = (self.connections, parent_sockets);
        let fd_limit = opts::raise_fd_limit();
        let per_process = opts::sockets_per_process(fd_limit);
        let fewest = if n + p <= per_process { 1 } else { n.div_ceil(per_process).max(2) };
        let processes = self.processes.unwrap_or(fewest).min(n);
        let most = if processes == 1 { n + p } else { n.div_ceil(processes).max(p) };
        if most > per_process {
            return Err(format!(
                "{n} connections (and {p} more in the parent process) over {processes} process(es) need {most} \
                 sockets in one process, but the fd limit ({fd_limit}) allows about {per_process}; \
                 use --processes {fewest}"
            ));
        }
        Ok(processes)
    }

    /// Each process's connections and source addresses.
    pub fn shares(&self, processes: u64) -> Result<Vec<Share>, String> {
        let loopback = self.url().addr.ip().is_loopback();
        plan::plan(self.connections, processes, self.source_ips.as_ref(), loopback, CONNECTIONS_PER_SOURCE_IP)
    }

    /// In a worker: its share is what its (parent-made) options say.
    pub fn worker_share(&self) -> Share {
        let source_ips = self.source_ips.clone().map(|s| s.0).unwrap_or_default();
        Share { connections: self.connections, source_ips, first: 0 }
    }

    /// These options for worker `index` of `count`: its share of the connections, of the
    /// rates and of the source addresses. Its URLs are ours rotated by the global index of
    /// its first connection, so that its connection k, which takes URL k mod count, goes
    /// where connection `share.first + k` of a one-process run would.
    pub fn worker_args(&self, share: &Share, count: usize, index: usize) -> Vec<String> {
        let rotate = (share.first % self.urls.len() as u64) as usize;
        let urls = self.urls[rotate..].iter().chain(&self.urls[..rotate]);
        let mut args: Vec<String> = urls.flat_map(|u| ["--url".to_string(), u.original.clone()]).collect();
        args.extend([
            "--connections".to_string(),
            share.connections.to_string(),
            "--connect-rate".to_string(),
            (self.connect_rate / count as f64).to_string(),
            "--handshake-timeout".to_string(),
            format_duration(self.handshake_timeout),
            "--max-inflight".to_string(),
            (self.max_inflight / count).max(1).to_string(),
            "--worker".to_string(),
            index.to_string(),
        ]);
        if !share.source_ips.is_empty() {
            args.extend(["--source-ips".to_string(), SourceIps(share.source_ips.clone()).to_arg()]);
        }
        // Workers inherit our working directory, so a relative path still names the file.
        if let Some(ca) = &self.ca {
            args.extend(["--ca".to_string(), ca.to_string_lossy().into_owned()]);
        }
        if let Some(name) = &self.tls_server_name {
            args.extend(["--tls-server-name".to_string(), name.clone()]);
        }
        args
    }

    /// The error for a run in which not one connection got going: "no {what} to
    /// {target} {failed_to}", with a hint if nobody seems to listen there.
    pub fn nothing_connected(&self, what: &str, failed_to: &str, failures: &Failures) {
        let hint = failures.nothing_connected_hint();
        let targets: Vec<String> = self.urls.iter().map(|u| u.addr.to_string()).collect();
        eprintln!("wshub-load: error: no {what} to {} {failed_to}{hint}", targets.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn worker_args_parse_back_into_the_share() {
        let cli = Cli::parse_from(["t", "--url", "ws://127.0.0.1:9/x", "-n", "10", "--connect-rate", "100"]);
        let share = Share { connections: 4, source_ips: vec!["127.0.0.7".parse().unwrap()], first: 0 };
        let args = cli.common.worker_args(&share, 2, 1);
        let worker = Cli::parse_from(std::iter::once("t".to_string()).chain(args)).common;
        assert_eq!(worker.worker_share(), share);
        assert_eq!((worker.worker, worker.connect_rate, worker.max_inflight), (Some(1), 50.0, 500));
        assert_eq!(worker.url().path, "/x");
        assert_eq!((worker.ca, worker.tls_server_name), (None, None));

        let wss = ["t", "--url", "wss://127.0.0.1:9/", "-n", "4", "--ca", "c.pem", "--tls-server-name", "localhost"];
        let cli = Cli::parse_from(wss);
        let worker = Cli::parse_from(std::iter::once("t".to_string()).chain(cli.common.worker_args(&share, 2, 0)));
        assert!(worker.common.url().tls);
        assert_eq!(worker.common.ca, Some(PathBuf::from("c.pem")));
        assert_eq!(worker.common.tls_server_name.as_deref(), Some("localhost"));
    }

    #[test]
    fn several_urls_are_spread_round_robin_over_all_processes() {
        let (a, b, c) = ("ws://127.0.0.1:7001/", "ws://127.0.0.1:7002/", "ws://127.0.0.1:7003/");
        let cli = Cli::parse_from(["t", "--url", a, "--url", b, "--url", c, "-n", "10"]);
        assert_eq!(cli.common.urls_text(), format!("{a} {b} {c}"));
        assert_eq!(cli.common.url().original, a, "the first is the publishers'");
        let shares = cli.common.shares(3).unwrap();
        assert_eq!(shares.iter().map(|s| s.first).collect::<Vec<_>>(), [0, 4, 7]);
        let mut per_url = [0; 3];
        let mut global = 0;
        for (i, share) in shares.iter().enumerate() {
            let args = cli.common.worker_args(share, shares.len(), i);
            let worker = Cli::parse_from(std::iter::once("t".to_string()).chain(args)).common;
            assert_eq!(worker.urls.len(), 3);
            for k in 0..share.connections {
                let (src, target) = crate::ramp::spread(k, &share.source_ips, worker.urls.len());
                assert_eq!(src, Some(share.source_ips[k as usize % share.source_ips.len()]));
                // Worker connection k is run-wide connection `global`: URL global mod 3.
                assert_eq!(worker.urls[target].original, cli.common.urls[global % 3].original);
                per_url[global % 3] += 1;
                global += 1;
            }
        }
        assert_eq!((global, per_url), (10, [4, 3, 3]));
        // One process: the same order, from the ramp alone.
        let targets: Vec<usize> = (0..5).map(|n| crate::ramp::spread(n, &[], 3).1).collect();
        assert_eq!(targets, [0, 1, 2, 0, 1]);
    }

    #[test]
    fn several_urls_must_agree() {
        let check = |urls: &[&str], extra: &[&str]| {
            let mut args = vec!["t", "-n", "1"];
            urls.iter().for_each(|u| args.extend(["--url", u]));
            args.extend(extra);
            Cli::parse_from(args).common.validate()
        };
        assert!(check(&["ws://127.0.0.1:1/", "ws://127.0.0.2:2/"], &[]).is_ok());
        assert!(check(&["ws://127.0.0.1:1/", "wss://127.0.0.1:2/"], &["--ca", "c.pem"]).is_err());
        assert!(check(&["ws://127.0.0.1:1/", "ws://[::1]:2/"], &[]).is_err());
        assert!(check(&["wss://127.0.0.1:1/", "wss://127.0.0.2:2/"], &["--ca", "c.pem"]).is_err());
        let named = ["--ca", "c.pem", "--tls-server-name", "localhost"];
        assert!(check(&["wss://127.0.0.1:1/", "wss://127.0.0.2:2/"], &named).is_ok());
    }

    #[test]
    fn tls_flags_go_with_wss() {
        let check = |args: &[&str]| {
            let base = ["t", "-n", "1", "--url"];
            Cli::parse_from(base.iter().chain(args)).common.validate()
        };
        assert!(check(&["wss://127.0.0.1:9/"]).unwrap_err().contains("--ca"));
        assert!(check(&["ws://127.0.0.1:9/", "--ca", "c.pem"]).is_err());
        assert!(check(&["ws://127.0.0.1:9/", "--tls-server-name", "localhost"]).is_err());
        assert!(check(&["wss://127.0.0.1:9/", "--ca", "c.pem"]).is_ok());
        let missing = Cli::parse_from(["t", "-n", "1", "--url", "wss://127.0.0.1:9/", "--ca", "/nonexistent.pem"]);
        assert!(missing.common.tls().unwrap_err().contains("/nonexistent.pem"));
    }

    #[test]
    fn processes_follow_the_fd_limit() {
        let cli = Cli::parse_from(["t", "--url", "ws://127.0.0.1:9/", "-n", "10"]);
        assert_eq!(cli.common.processes(1), Ok(1));
        let huge = Cli::parse_from(["t", "--url", "ws://127.0.0.1:9/", "-n", "100000000", "--processes", "1"]);
        assert!(huge.common.processes(0).unwrap_err().contains("--processes"));
    }
}
