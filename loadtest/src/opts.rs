//! Parsing of the command-line values the subcommands share (URL, durations, source
//! addresses, protocol), and the few process-wide settings (fd limit, signals, stdout
//! lines, a progress line) every mode needs.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A `ws://` or `wss://` URL reduced to what the tool needs. Only literal IP hosts are
/// accepted: resolving names would add a blocking DNS step and a way to aim load
/// somewhere unintended, and every target we run against is on loopback anyway.
#[derive(Debug, Clone)]
pub struct WsUrl {
    /// The text as given, so it can be passed unchanged to worker processes.
    pub original: String,
    /// `wss://`: TLS (see `tls.rs`; trusted through `--ca`).
    pub tls: bool,
    pub addr: SocketAddr,
    /// Value of the `Host:` header (`ip:port`, IPv6 in brackets).
    pub host_header: String,
    /// Path plus query, always starting with `/`.
    pub path: String,
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

const URL_HELP: &str = "only ws:// and wss:// URLs with a literal IP host are supported \
     (e.g. ws://127.0.0.1:8080/ or wss://127.0.0.1:8443/); host names are not";

pub fn parse_ws_url(text: &str) -> Result<WsUrl, String> {
    let (tls, rest) = match (text.strip_prefix("ws://"), text.strip_prefix("wss://")) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => return Err(format!("{text:?} does not start with ws:// or wss://; {URL_HELP}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr =
        authority.parse().map_err(|_| format!("{authority:?} is not IP:PORT (with an explicit port); {URL_HELP}"))?;
    if addr.port() == 0 {
        return Err(format!("port 0 is not a valid target; {URL_HELP}"));
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("path {path:?} contains whitespace or control characters"));
    }
    Ok(WsUrl { original: text.to_string(), tls, addr, host_header: authority.to_string(), path: path.to_string() })
}

/// Accepts "30s", "500ms", "2m", "1h", "1.5s" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is out of range"))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly (used for workers).
pub fn format_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Source addresses to bind before connecting, given as "a-b", "a,b,c" or a mix.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceIps(pub Vec<Ipv4Addr>);

impl SourceIps {
    /// Comma-separated list, the form handed to worker processes.
    pub fn to_arg(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|ip| ip.to_string()).collect();
        parts.join(",")
    }

    /// `count` consecutive addresses starting at 127.0.0.2 + `first`: 127.0.0.1 is
    /// skipped so load never shares its ports with everything else on the machine.
    pub fn loopback_block(first: usize, count: usize) -> Result<SourceIps, String> {
        let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
        let last = u32::from(Ipv4Addr::new(127, 255, 255, 254));
        let ips: Vec<Ipv4Addr> = (0..count)
            .map(|i| base as u64 + (first + i) as u64)
            .take_while(|&ip| ip <= last as u64)
            .map(|ip| Ipv4Addr::from(ip as u32))
            .collect();
        if ips.len() < count {
            return Err("ran out of 127.0.0.0/8 source addresses".into());
        }
        Ok(SourceIps(ips))
    }
}

pub fn parse_source_ips(text: &str) -> Result<SourceIps, String> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<Ipv4Addr>().map_err(|_| format!("{s:?} is not an IPv4 address"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if a > b {
                    return Err(format!("range {part:?} is backwards"));
                }
                if b - a >= 65536 {
                    return Err(format!("range {part:?} is larger than 65536 addresses"));
                }
                ips.extend((a..=b).map(Ipv4Addr::from));
            }
            None => ips.push(parse(part)?),
        }
    }
    if ips.is_empty() {
        return Err("no source addresses given".into());
    }
    Ok(SourceIps(ips))
}

/// Raises the soft open-file limit to the hard one (allowed without privileges) and
/// returns it. Shares are sized from this rather than a constant so the tool adapts
/// to whatever machine it runs on.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// How many sockets one process may hold: the fd limit minus room for stdio, the
/// epoll fd, pipes to workers and whatever the runtime opens.
pub fn sockets_per_process(fd_limit: u64) -> u64 {
    let margin = (fd_limit / 40).max(64);
    fd_limit.saturating_sub(margin).max(1)
}

/// Writes one line to stdout and flushes it at once (scripts and the parent process
/// wait for these lines). A reader that went away is not worth dying over: the run
/// still closes its connections cleanly, so write errors are ignored.
pub fn emit_line(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// What the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Protocol {
    /// wshub's JSON hub protocol (`docs/PROTOCOL.md`): subscribe, publish, ping.
    Hub,
    /// Plain text frames, relayed to everyone (`wshub --relay`) or echoed (`wshub --echo`).
    Raw,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Hub => "hub",
            Protocol::Raw => "raw",
        }
    }
}

/// A live status line on stderr, only when stderr is a terminal (never in logs or
/// when a script captures it), redrawn at most 5 times a second.
pub struct Progress {
    enabled: bool,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    pub fn new() -> Progress {
        use std::io::IsTerminal;
        Progress { enabled: std::io::stderr().is_terminal(), last: None, shown: false }
    }

    pub fn show(&mut self, line: impl FnOnce() -> String) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last = Some(Instant::now());
        self.shown = true;
        eprint!("\r\x1b[2K{}", line());
    }

    /// Erases the line so the summary starts on a clean one.
    pub fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Set by SIGINT/SIGTERM; the poll loops check it at least every 100 ms.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: the one thing that is safe inside a signal handler.
    STOP.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    // SAFETY: the handler is async-signal-safe (a single atomic store).
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        // A reader of our stdout may go away; see `emit_line`.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_ws_url("ws://127.0.0.1:8080/chat?x=1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.path, "/chat?x=1");
        assert_eq!(u.host_header, "127.0.0.1:8080");
        assert!(!u.tls);
        assert_eq!(parse_ws_url("ws://[::1]:9000").unwrap().path, "/");
        let s = parse_ws_url("wss://127.0.0.1:8443/x").unwrap();
        assert_eq!((s.tls, s.addr.port(), s.path.as_str()), (true, 8443, "/x"));
        assert!(parse_ws_url("wss://localhost:8443/").is_err());
        assert!(parse_ws_url("ws://localhost:8080/").is_err());
        assert!(parse_ws_url("ws://127.0.0.1/").is_err());
        assert!(parse_ws_url("http://127.0.0.1:80/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        let d = Duration::from_millis(61_234);
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }

    #[test]
    fn source_ips() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4,127.0.1.1").unwrap();
        assert_eq!(ips.0.len(), 4);
        assert_eq!(ips.0[3], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(parse_source_ips(&ips.to_arg()).unwrap(), ips);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        let block = SourceIps::loopback_block(254, 2).unwrap();
        assert_eq!(block.0, vec![Ipv4Addr::new(127, 0, 1, 0), Ipv4Addr::new(127, 0, 1, 1)]);
    }

    #[test]
    fn shares_leave_a_margin() {
        assert_eq!(sockets_per_process(20000), 19500);
        assert!(sockets_per_process(1024) < 1000);
    }
}
