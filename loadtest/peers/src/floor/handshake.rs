//! The WebSocket upgrade, answered by hand: parse the request head with `httparse`, take
//! `Sec-WebSocket-Key`, answer `101` with `Sec-WebSocket-Accept` = base64(SHA-1(key +
//! GUID)) (RFC 6455 §4.2.2). No subprotocols, no extensions, no origin checks: the floor
//! peer accepts what the load tool sends and nothing else matters.

use data_encoding::BASE64;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest request head accepted; the load tool's is about 150 bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// What the bytes read so far amount to.
#[derive(Debug, PartialEq)]
pub enum Upgrade {
    /// The head has not fully arrived.
    Partial,
    /// A valid upgrade: the answer to send, and how many bytes the head took (anything
    /// after it is already WebSocket frames).
    Accept { answer: Vec<u8>, head_len: usize },
    /// Not an upgrade this peer takes: send this answer and close.
    Refuse(&'static [u8]),
}

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Reads the request head at the start of `buf`.
pub fn upgrade(buf: &[u8]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Upgrade::Partial,
        _ => return Upgrade::Refuse(BAD_REQUEST),
    };
    let header = |name: &str| request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let is_upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let Some(key) = header("sec-websocket-key").filter(|_| is_upgrade && request.method == Some("GET")) else {
        return Upgrade::Refuse(BAD_REQUEST);
    };
    let mut answer = Vec::with_capacity(160);
    answer.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    answer.extend_from_slice(accept_key(key).as_bytes());
    answer.extend_from_slice(b"\r\n\r\n");
    Upgrade::Accept { answer, head_len }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(GUID);
    BASE64.encode(&sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn answers_an_upgrade_and_leaves_what_follows() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81";
        assert_eq!(upgrade(&request[..40]), Upgrade::Partial);
        match upgrade(request) {
            Upgrade::Accept { answer, head_len } => {
                assert_eq!(head_len, request.len() - 1);
                let answer = String::from_utf8(answer).unwrap();
                assert!(answer.starts_with("HTTP/1.1 101 "));
                assert!(answer.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Upgrade::Refuse(BAD_REQUEST));
    }
}
