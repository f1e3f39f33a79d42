//! The session against a rustls client over an in-memory socket that reads and writes
//! in small pieces and fills up, for both TLS versions.

use std::collections::VecDeque;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

use super::*;

/// A non-blocking socket in memory: the client's bytes to read, ours to write, a limit
/// per call and a capacity before `WouldBlock`.
struct Pipe {
    to_server: VecDeque<u8>,
    to_client: Vec<u8>,
    per_call: usize,
    capacity: usize,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_server.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.per_call).min(self.to_server.len());
        for (slot, byte) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.per_call).min(self.capacity - self.to_client.len());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.to_client.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Peers {
    server: TlsSession,
    client: ClientConnection,
    pipe: Pipe,
}

impl Peers {
    fn new(version: &'static SupportedProtocolVersion) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        client.set_buffer_limit(None);
        Peers {
            server: TlsSession::new(&Arc::new(server)).unwrap(),
            client,
            pipe: Pipe { to_server: VecDeque::new(), to_client: Vec::new(), per_call: 1000, capacity: 7000 },
        }
    }

    /// Moves the client's records to the pipe and ours to the client.
    fn client_turn(&mut self) -> Vec<u8> {
        let mut records = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut records).unwrap();
        }
        self.pipe.to_server.extend(records);
        let ours = mem::take(&mut self.pipe.to_client);
        let mut rest = &ours[..];
        let mut plain = Vec::new();
        while !rest.is_empty() {
            self.client.read_tls(&mut rest).unwrap();
            self.client.process_new_packets().unwrap();
            // Drained as it comes: the client holds at most 64 KiB of plaintext.
            let _ = self.client.reader().read_to_end(&mut plain);
        }
        plain
    }

    /// Everything the server can read now, through a `chunk`-sized buffer.
    fn server_reads(&mut self, chunk: usize) -> io::Result<Vec<u8>> {
        let mut plain = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match self.server.recv(&mut self.pipe, &mut buf) {
                Ok(0) => return Ok(plain),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(plain),
                Err(e) => return Err(e),
            }
        }
    }

    fn handshake(&mut self) {
        for _ in 0..10 {
            self.client_turn();
            self.server_reads(4096).unwrap();
            let _ = self.server.flush(&mut self.pipe);
        }
        self.client_turn();
        assert!(!self.client.is_handshaking() && !self.server.handshaking());
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn both_versions(test: impl Fn(Peers)) {
    test(Peers::new(&rustls::version::TLS13));
    test(Peers::new(&rustls::version::TLS12));
}

#[test]
fn carries_bursts_both_ways_through_a_small_socket() {
    both_versions(|mut peers| {
        peers.handshake();
        // Many records in, read through buffers smaller and larger than a record.
        for chunk in [700, 64 * 1024] {
            let sent = pattern(100_000);
            peers.client.writer().write_all(&sent).unwrap();
            peers.client_turn();
            let mut got = Vec::new();
            while got.len() < sent.len() {
                got.extend(peers.server_reads(chunk).unwrap());
                peers.client_turn();
            }
            assert_eq!(got, sent);
        }
        // Many slices out; the socket takes 7,000 bytes at a time.
        let frames: Vec<Vec<u8>> = (0..50).map(|i| pattern(1000 + i * 97)).collect();
        let expected = frames.concat();
        let mut offset = 0;
        let mut got = Vec::new();
        while offset < expected.len() || peers.server.output_pending() {
            if offset < expected.len() {
                let slices = [IoSlice::new(&expected[offset..offset + (expected.len() - offset).min(3000)])];
                match peers.server.send(&mut peers.pipe, &slices) {
                    Ok(n) => offset += n,
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            }
            let _ = peers.server.flush(&mut peers.pipe);
            got.extend(peers.client_turn());
        }
        assert_eq!(got, expected);
        let vectored: Vec<IoSlice<'_>> = frames.iter().take(3).map(|f| IoSlice::new(f)).collect();
        let n = peers.server.send(&mut peers.pipe, &vectored).unwrap();
        assert_eq!(n, frames[..3].iter().map(Vec::len).sum::<usize>());
        let mut got = Vec::new();
        while peers.server.flush(&mut peers.pipe).is_err() {
            got.extend(peers.client_turn());
        }
        got.extend(peers.client_turn());
        assert_eq!(got, frames[..3].concat());

        // Idle now: the session owns no buffer of its own.
        peers.server.release_idle();
        assert!(peers.server.q.held.is_none());
    });
}

#[test]
fn an_early_reply_waits_for_the_handshake() {
    both_versions(|mut peers| {
        peers.client_turn();
        peers.server_reads(4096).unwrap();
        assert!(peers.server.handshaking());
        assert_eq!(peers.server.send(&mut peers.pipe, &[IoSlice::new(b"HTTP/1.1 503")]).unwrap(), 12);
        assert!(peers.server.flush(&mut peers.pipe).is_ok(), "nothing to write until the handshake is done");
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(peers.client_turn());
            peers.server_reads(4096).unwrap();
            if peers.server.output_pending() {
                while peers.server.flush(&mut peers.pipe).is_err() {
                    got.extend(peers.client_turn());
                }
            }
        }
        got.extend(peers.client_turn());
        assert_eq!(got, b"HTTP/1.1 503");
    });
}

#[test]
fn close_notify_both_ways_and_key_updates() {
    both_versions(|mut peers| {
        peers.handshake();
        if peers.client.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            peers.client.refresh_traffic_keys().unwrap();
        }
        peers.client.writer().write_all(b"after a key update").unwrap();
        peers.client_turn();
        assert_eq!(peers.server_reads(4096).unwrap(), b"after a key update");
        peers.server.send(&mut peers.pipe, &[IoSlice::new(b"answer")]).unwrap();
        assert_eq!(peers.client_turn(), b"answer");

        peers.server.close(&mut peers.pipe);
        peers.client_turn();
        let mut rest = Vec::new();
        assert_eq!(peers.client.reader().read_to_end(&mut rest).unwrap(), 0, "clean close_notify");
        assert!(peers.server.send(&mut peers.pipe, &[IoSlice::new(b"late")]).is_err());

        peers.client.send_close_notify();
        peers.client_turn();
        let mut buf = [0; 64];
        assert_eq!(peers.server.recv(&mut peers.pipe, &mut buf).unwrap(), 0);
    });
}

#[test]
fn garbage_fails_with_an_alert() {
    let mut peers = Peers::new(&rustls::version::TLS13);
    peers.pipe.to_server.extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let err = peers.server.recv(&mut peers.pipe, &mut [0; 4096]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(peers.pipe.to_client.first(), Some(&21), "an alert record went out");
}

#[test]
fn bytes_trickling_in_one_at_a_time_are_kept_between_reads() {
    both_versions(|mut peers| {
        let mut got = Vec::new();
        let sent = pattern(40_000);
        let mut data_sent = false;
        for _ in 0..20 {
            if !peers.client.is_handshaking() && !data_sent {
                peers.client.writer().write_all(&sent).unwrap();
                data_sent = true;
            }
            // Every record, handshake ones included, arrives split across many reads,
            // each of which ends in `WouldBlock` with a partial record kept.
            let mut records = Vec::new();
            while peers.client.wants_write() {
                peers.client.write_tls(&mut records).unwrap();
            }
            for byte in records {
                peers.pipe.to_server.push_back(byte);
                got.extend(peers.server_reads(4096).unwrap());
            }
            let _ = peers.server.flush(&mut peers.pipe);
            peers.client_turn();
        }
        assert!(data_sent && !peers.server.handshaking());
        assert_eq!(got, sent);
    });
}

#[test]
fn mixed_slices_keep_their_order() {
    both_versions(|mut peers| {
        peers.handshake();
        peers.pipe.capacity = usize::MAX;
        // Large slices are sealed in place, runs of small ones together, a lone small one
        // on its own; 90,000 bytes is more than one send takes (64 KiB).
        let slices: Vec<Vec<u8>> = [100, 5000, 50, 60, 20_000, 10, 4096, 3, 60_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(len + i))
            .collect();
        let expected = slices.concat();
        let mut offset = 0;
        while offset < expected.len() {
            // The caller's slices from where the last send stopped.
            let mut skip = offset;
            let mut rest = Vec::new();
            for slice in &slices {
                if skip >= slice.len() {
                    skip -= slice.len();
                    continue;
                }
                rest.push(IoSlice::new(&slice[skip..]));
                skip = 0;
            }
            let n = peers.server.send(&mut peers.pipe, &rest).unwrap();
            assert!(n > 0 && n <= SEND_CHUNK);
            offset += n;
        }
        assert_eq!(peers.client_turn(), expected);
    });
}
