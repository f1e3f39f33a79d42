//! `wss://` for every mode: a connection's bytes go through a [`Wire`], which is either the
//! plain socket or rustls over it, driven from the same non-blocking mio loop as plain
//! connections (`read_tls` / `process_new_packets` / `write_tls`, no thread or task per
//! connection).
//!
//! Trust comes only from `--ca FILE`: the tool is aimed at servers we run ourselves with a
//! development certificate (`scripts/gencert.sh`), so there is no system root store. The
//! name verified is the URL's IP unless `--tls-server-name` says otherwise: gencert's
//! certificate is valid for 127.0.0.1 and localhost, and the target is always the URL's
//! address (`--source-ips` only changes our end), so the default fits it; a server on
//! another address (say 127.0.0.5) with that certificate needs `--tls-server-name localhost`.

use mio::net::TcpStream;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// What every TLS connection of a process shares: the client configuration (roots,
/// provider) and the name the server's certificate is verified against.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the certificates of the PEM file `ca`, and verifies servers as `server_name`
    /// (a DNS name or an IP address).
    pub fn load(ca: &Path, server_name: &str) -> Result<TlsClient, String> {
        let shown = ca.display();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--ca {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("--ca {shown}: no certificate in it (expected PEM `BEGIN CERTIFICATE` sections)"));
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| format!("--ca {shown}: certificate {}: {e}", i + 1))?;
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| format!("{server_name:?} is not a TLS server name (a DNS name or an IP address)"))?;
        // ring, like the server: it builds with only a C compiler.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection does a full handshake, as independent clients would: resumed
        // sessions would make the server's handshake cost depend on the ramp order, and the
        // client would keep a session cache it has no use for.
        config.resumption = Resumption::disabled();
        Ok(TlsClient { config: Arc::new(config), name })
    }
}

/// A connection's transport: the socket, with a TLS session on it for `wss://`. Both
/// behave like a non-blocking socket: `WouldBlock` means "wait for the next event", and
/// is only returned when the socket itself would block (the poll is edge-triggered).
pub struct Wire {
    tcp: TcpStream,
    /// Boxed: a session is about 1 KiB inline (rustls 0.23), which plain connections
    /// should not pay for in every slot; this way a Wire is 24 bytes either way.
    tls: Option<Box<ClientConnection>>,
}

impl Wire {
    /// `tls` set: a TLS client session starts on the socket (its ClientHello goes out
    /// with the first write or read).
    pub fn new(tcp: TcpStream, tls: Option<&TlsClient>) -> io::Result<Wire> {
        let tls = match tls {
            None => None,
            Some(client) => {
                let session = ClientConnection::new(client.config.clone(), client.name.clone()).map_err(tls_error)?;
                Some(Box::new(session))
            }
        };
        Ok(Wire { tcp, tls })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Plaintext from the server; `Ok(0)` at the end of the stream. Over TLS this also
    /// sends what the session owes (handshake messages, encrypted data that did not fit).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return self.tcp.read(buf) };
        loop {
            send_pending(tls, &mut self.tcp)?;
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the server's close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0), // TCP closed, no close_notify
                Err(e) => return Err(e),
            }
            // No plaintext buffered: take records from the socket.
            match tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(err) = tls.process_new_packets() {
                // Best effort: the alert rustls queued tells the server why we hang up.
                let _ = tls.write_tls(&mut self.tcp);
                return Err(tls_error(err));
            }
        }
    }

    /// Takes plaintext for the server. Over TLS it is encrypted (or, before the handshake
    /// completes, buffered) by the session, up to its buffer limit, and sent as far as
    /// the socket allows; the rest of the records go out with later reads and writes.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return self.tcp.write(buf) };
        loop {
            let taken = tls.writer().write(buf)?;
            let blocked = !send_pending(tls, &mut self.tcp)?;
            if taken > 0 || buf.is_empty() {
                return Ok(taken);
            }
            // The session's buffer was full. If the socket took everything, try again;
            // otherwise wait for it. (Before the handshake completes there is nothing to
            // send for a full plaintext buffer; the upgrade request is far below the
            // limit, so that only happens to callers writing >64 KiB before the 101.)
            if blocked || !tls.wants_write() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Best effort on the way out: `last` (a close frame), then the TLS close_notify.
    pub fn goodbye(&mut self, last: &[u8]) {
        let _ = self.write(last);
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = send_pending(tls, &mut self.tcp);
        }
    }
}

/// Writes the session's pending records: `Ok(true)` if all went, `Ok(false)` if the socket
/// is full (the rest goes on its next writable event).
fn send_pending(tls: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A TLS failure as an I/O error that keeps the rustls error inside, so that
/// [`is_tls_error`] can count it under its own cause.
fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsError(err))
}

#[derive(Debug)]
struct TlsError(rustls::Error);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

pub fn is_tls_error(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<TlsError>())
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
