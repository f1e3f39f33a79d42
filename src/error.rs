//! Errors that stop a server from starting or running. Each variant says what the caller
//! must do about it. Per-connection failures never surface here: they close that
//! connection with the fitting status or close code and the server goes on.

use std::fmt;
use std::io;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum Error {
    /// The configuration is inconsistent: fix the setting the message names.
    Config(String),
    /// The listen address could not be bound (in use, not local, no permission): choose
    /// another address or stop what holds it.
    Bind { addr: SocketAddr, source: io::Error },
    /// The OS refused something the server needs to start (a poller, a waker, a thread,
    /// signal handlers): the host is out of resources or forbids it.
    Startup(io::Error),
    /// A shard thread panicked: a bug in wshub or in a handler; report it with the log.
    ShardPanicked(usize),
    /// A cluster bus thread (`--redis`) panicked: a bug in wshub; report it with the log.
    BusPanicked,
    /// The history store (`--store`) could not be opened or migrated: the message names
    /// the file and the reason (permissions, a full disk, a newer schema); fix it or
    /// point `--store` elsewhere.
    Store(String),
    /// The history thread (`--history`) panicked: a bug in wshub; report it with the log.
    HistoryPanicked,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(why) => write!(f, "invalid configuration: {why}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Startup(source) => write!(f, "cannot start: {source}"),
            Error::ShardPanicked(shard) => write!(f, "shard {shard} panicked"),
            Error::BusPanicked => f.write_str("a cluster bus thread panicked"),
            Error::Store(why) => write!(f, "cannot open the {why}"),
            Error::HistoryPanicked => f.write_str("the history thread panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Startup(source) => Some(source),
            _ => None,
        }
    }
}
