//! The server's own cost over a `fanout` run, read from `/proc/PID` when `--server-pid`
//! names it (a server on this machine, as in the benchmark scripts): its peak resident
//! memory and the CPU time it spent while the messages were delivered.
//!
//! The window is publishing: from just before the first publish to the end of the run,
//! so connecting and subscribing are not counted. CPU is `utime` and `stime` from
//! `/proc/PID/stat` (clock ticks, 10 ms each; runs should last long enough for that not
//! to matter: user CPU per delivery over a million deliveries is exact to ~10 ns).
//!
//! Peak RSS is `VmHWM` from `/proc/PID/status`, which is the peak over the process's
//! whole life, so a server that ramped up 19,000 connections first would report the
//! ramp's peak. At the start of the window the probe therefore writes `5` to
//! `/proc/PID/clear_refs`, which resets `VmHWM` to the current RSS (Linux 4.0+; needs
//! the same user as the server): the figure is then the peak *during delivery*, which
//! includes the connections already held. Restarting the server per run (the scripts do
//! that too) does not suffice on its own, because of the ramp. If the reset is refused
//! the report says `peak_rss_reset: false` and the figure is the lifetime peak.

use serde::{Deserialize, Serialize};
use std::fs;

/// What the probe saw; `None` fields could not be read (the process went away).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub pid: u32,
    /// RSS when publishing began, and the peak from then to the end (KiB).
    pub rss_start_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// Whether `VmHWM` was reset at the start, i.e. the peak is the window's own.
    pub peak_rss_reset: bool,
    /// CPU time the server spent in the window, user and kernel (milliseconds).
    pub user_cpu_ms: Option<f64>,
    pub system_cpu_ms: Option<f64>,
}

pub struct ServerProbe {
    pid: u32,
    start: Option<(u64, u64)>,
    rss_start_kib: Option<u64>,
    reset: bool,
}

impl ServerProbe {
    /// Call just before publishing: resets the peak RSS and notes the CPU time so far.
    pub fn start(pid: u32) -> ServerProbe {
        let reset = fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        if !reset {
            eprintln!("wshub-load: could not reset the server's peak RSS (/proc/{pid}/clear_refs); reporting its lifetime peak");
        }
        ServerProbe { pid, start: cpu_ticks(pid), rss_start_kib: status_kib(pid, "VmRSS"), reset }
    }

    /// Call when the run ends.
    pub fn finish(self) -> ServerStats {
        let pid = self.pid;
        let ms = |ticks: u64| ticks as f64 * 1000.0 / clock_ticks_per_sec();
        let cpu =
            self.start.zip(cpu_ticks(pid)).map(|((u0, s0), (u1, s1))| (u1.saturating_sub(u0), s1.saturating_sub(s0)));
        ServerStats {
            pid,
            rss_start_kib: self.rss_start_kib,
            peak_rss_kib: status_kib(pid, "VmHWM"),
            peak_rss_reset: self.reset,
            user_cpu_ms: cpu.map(|(u, _)| ms(u)),
            system_cpu_ms: cpu.map(|(_, s)| ms(s)),
        }
    }
}

impl ServerStats {
    /// User-space CPU nanoseconds per delivery, over `deliveries`.
    pub fn user_ns_per_delivery(&self, deliveries: u64) -> Option<f64> {
        self.user_cpu_ms.filter(|_| deliveries > 0).map(|ms| (ms * 1e6 / deliveries as f64).round())
    }

    pub fn to_text(&self, deliveries: u64) -> String {
        let kib = |v: Option<u64>| v.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("?".to_string(), |m| format!("{m:.0} ms"));
        let per = self.user_ns_per_delivery(deliveries).map_or("?".to_string(), |ns| format!("{ns:.0}"));
        format!(
            "peak RSS {} ({}; {} at the first publish), CPU user {} ({per} ns per delivery), system {}",
            kib(self.peak_rss_kib),
            if self.peak_rss_reset { "while publishing" } else { "lifetime peak: VmHWM not reset" },
            kib(self.rss_start_kib),
            ms(self.user_cpu_ms),
            ms(self.system_cpu_ms),
        )
    }
}

/// `utime` and `stime` (fields 14 and 15 of `/proc/PID/stat`), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // state is field 3; utime is 14
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A `kB` figure from `/proc/PID/status`, e.g. `VmHWM`.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    parse_status_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(parse_cpu_ticks(stat), Some((111, 222)));
        let status = "Name:\tx\nVmHWMx:\t1 kB\nVmHWM:\t  5120 kB\nVmRSS:\t 4096 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(4096));
    }

    #[test]
    fn probes_this_process() {
        let probe = ServerProbe::start(std::process::id());
        let waste: Vec<u8> = (0..4 << 20).map(|i| i as u8).collect();
        // Without it an optimized build may fill (or elide) the pages after the probe reads.
        std::hint::black_box(&waste);
        let stats = probe.finish();
        assert!(stats.peak_rss_kib.unwrap() >= stats.rss_start_kib.unwrap() + 3000, "{stats:?} {}", waste.len());
        assert!(stats.user_cpu_ms.is_some());
        assert_eq!(stats.user_ns_per_delivery(0), None);
    }
}
