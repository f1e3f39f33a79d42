//! What the first bytes of a connection ask for. Sits between accept and the WebSocket
//! phase; free of sockets, so every verdict is unit-tested in memory.
//!
//! [`examine`] looks at the request bytes received so far and says: wait for more, upgrade
//! to a WebSocket (with the 101 response to send), or answer plain HTTP. Plain requests
//! (with their `Content-Length` body) go to the built-in endpoints (`api`) and then to
//! the handler's [`on_http`](crate::Handler::on_http) hook; malformed or unacceptable
//! requests get their status here (400, 405, 411, 413, 426, 431).

use std::fmt::Write as _;

use super::credential::{presented_credential, Credential, BEARER_PROTOCOL_PREFIX};
use super::query::query_param;
use super::response::{reason_phrase, HttpResponse};

/// Largest request head accepted; the connection buffers no more than this.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// The subprotocol wshub confirms when a client offers it.
pub const SUBPROTOCOL: &str = "wshub";
/// Longest `?user=` name accepted in open (no auth) mode.
pub const MAX_USER_LEN: usize = 64;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request head is not complete yet; read more.
    Incomplete,
    /// The head is complete and announced a body that has not all arrived; read more.
    /// `expect_continue`: the client waits for `100 Continue` before sending it.
    BodyPending { expect_continue: bool },
    /// A valid WebSocket upgrade.
    Upgrade(Upgrade),
    /// A complete plain HTTP request of `len` bytes (head and body); bytes after it belong
    /// to the next request on the connection.
    Plain { request: PlainRequest, len: usize },
    /// Answer this and close. `upgrade`: it was a WebSocket upgrade that failed (counted
    /// as a handshake failure), not a bad plain request.
    Refuse { response: HttpResponse, upgrade: bool },
}

/// A well-formed upgrade request: what it told us, for the auth gate to decide on.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` for the 101.
    pub accept: String,
    /// `?user=` from the request target (the identity in open mode), if any.
    pub user: Option<String>,
    /// The credential presented, wherever it came from.
    pub credential: Option<Credential>,
    /// `Origin` (sent by browsers) and `Host`, for the cross-site check.
    pub origin: Option<String>,
    pub host: Option<String>,
    /// The subprotocol to confirm in the 101: `wshub` if offered, else a `bearer.` one
    /// (browsers fail a connection whose offered subprotocols are all ignored).
    pub subprotocol: Option<String>,
    /// How many bytes the request head used; anything after is WebSocket data.
    pub head_len: usize,
}

impl Upgrade {
    /// The complete `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept
        );
        if let Some(protocol) = &self.subprotocol {
            let _ = write!(head, "Sec-WebSocket-Protocol: {protocol}\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// A non-upgrade request, as the HTTP endpoints and the handler's hook see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRequest {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// Header names as sent; look them up with [`PlainRequest::header`].
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` bytes (empty without one).
    pub body: Vec<u8>,
    /// The client will send another request on this connection after our answer
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl PlainRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(path, _)| path)
    }
}

/// Decides what the request in `bytes` asks for. A plain request may carry a body of at
/// most `max_body` bytes.
pub fn examine(bytes: &[u8], max_body: usize) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match parse_head(&mut request, bytes) {
        Head::Complete(len) => len,
        Head::Partial => return Verdict::Incomplete,
        Head::Refused(response) => return Verdict::Refuse { response, upgrade: false },
    };
    if has_token(request.headers, "Upgrade", "websocket") {
        validate_upgrade(&request, head_len)
    } else {
        read_plain(&request, bytes, head_len, max_body)
    }
}

/// How far the request head has arrived.
enum Head {
    /// All of it, this many bytes.
    Complete(usize),
    Partial,
    /// Malformed or too large.
    Refused(HttpResponse),
}

fn parse_head<'h, 'b>(request: &mut httparse::Request<'h, 'b>, bytes: &'b [u8]) -> Head {
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_BYTES => Head::Refused(too_large()),
        Ok(httparse::Status::Complete(len)) => Head::Complete(len),
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_REQUEST_BYTES => Head::Refused(too_large()),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Refused(too_large()),
        Err(e) => Head::Refused(bad_request(format!("malformed request: {e}"))),
    }
}

/// A request that is not an upgrade: complete once its `Content-Length` body is in.
fn read_plain(request: &httparse::Request<'_, '_>, bytes: &[u8], head_len: usize, max_body: usize) -> Verdict {
    let refuse = |response| Verdict::Refuse { response, upgrade: false };
    let headers = &*request.headers;
    if header_value(headers, "Transfer-Encoding").is_some() {
        return refuse(HttpResponse::text(411, "Length Required", "send the body with a Content-Length"));
    }
    let body_len = match content_length(headers) {
        Ok(len) => len,
        Err(why) => return refuse(bad_request(why)),
    };
    if body_len > max_body {
        return refuse(HttpResponse::text(
            413,
            reason_phrase(413),
            format!("request body of {body_len} bytes is over the limit of {max_body}"),
        ));
    }
    if bytes.len() < head_len + body_len {
        return Verdict::BodyPending { expect_continue: has_token(headers, "Expect", "100-continue") };
    }
    let keep_alive = match request.version {
        Some(1) => !has_token(headers, "Connection", "close"),
        _ => has_token(headers, "Connection", "keep-alive"),
    };
    let request = PlainRequest {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        headers: headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect(),
        body: bytes[head_len..head_len + body_len].to_vec(),
        keep_alive,
    };
    Verdict::Plain { request, len: head_len + body_len }
}

/// An upgrade request: the WebSocket handshake rules (RFC 6455 section 4.2.1), then what
/// it says about the client (user, credential, origin, subprotocol).
fn validate_upgrade(request: &httparse::Request<'_, '_>, head_len: usize) -> Verdict {
    let refuse = |response| Verdict::Refuse { response, upgrade: true };
    let headers = &*request.headers;
    if request.method != Some("GET") {
        return refuse(
            HttpResponse::text(405, "Method Not Allowed", "a WebSocket upgrade must use GET")
                .with_header("Allow", "GET"),
        );
    }
    if request.version != Some(1) {
        return refuse(bad_request("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !has_token(headers, "Connection", "upgrade") {
        return refuse(bad_request("missing 'Connection: Upgrade'"));
    }
    if header_value(headers, "Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return refuse(
            HttpResponse::text(426, "Upgrade Required", "only WebSocket version 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = header_value(headers, "Sec-WebSocket-Key").filter(|k| is_valid_key(k.trim())) else {
        return refuse(bad_request("missing or invalid Sec-WebSocket-Key"));
    };
    let target = request.path.unwrap_or_default();
    let user = match query_param(target, "user") {
        Some(user) if !is_valid_user(&user) => {
            return refuse(bad_request(format!(
                "user must be 1-{MAX_USER_LEN} characters of A-Z a-z 0-9 _ . @ -, not all digits"
            )))
        }
        user => user,
    };
    let offered = offered_subprotocols(headers);
    let credential = match presented_credential(headers, target, &offered) {
        Ok(credential) => credential,
        Err(why) => return refuse(bad_request(why)),
    };
    Verdict::Upgrade(Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.trim().as_bytes()),
        user,
        credential,
        origin: header_value(headers, "Origin"),
        host: header_value(headers, "Host"),
        subprotocol: chosen_subprotocol(&offered),
        head_len,
    })
}

/// The first header called `name` (case-insensitive), as text.
fn header_value(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).into_owned())
}

/// Whether any `name` header lists `token` among its comma-separated values
/// (case-insensitive, as `Connection: keep-alive, Upgrade`).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Every subprotocol the client offered, across its `Sec-WebSocket-Protocol` headers.
fn offered_subprotocols(headers: &[httparse::Header<'_>]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|h| String::from_utf8_lossy(h.value).split(',').map(|p| p.trim().to_string()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `wshub` if offered, else a `bearer.` one: browsers fail a connection whose offered
/// subprotocols are all ignored.
fn chosen_subprotocol(offered: &[String]) -> Option<String> {
    match offered.iter().find(|p| *p == SUBPROTOCOL) {
        Some(ours) => Some(ours.clone()),
        None => offered.iter().find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX)).cloned(),
    }
}

/// The body length a request announces: 0 without `Content-Length`; several differing
/// values, or one that is not a number, are refused (request smuggling starts there).
fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, &'static str> {
    let mut length = None;
    for header in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("Content-Length")) {
        let value = std::str::from_utf8(header.value).map_err(|_| "invalid Content-Length")?.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid Content-Length");
        }
        let value: usize = value.parse().unwrap_or(usize::MAX);
        if length.is_some_and(|seen| seen != value) {
            return Err("conflicting Content-Length headers");
        }
        length = Some(value);
    }
    Ok(length.unwrap_or(0))
}

fn bad_request(why: impl Into<String>) -> HttpResponse {
    HttpResponse::text(400, "Bad Request", why)
}

fn too_large() -> HttpResponse {
    HttpResponse::text(431, "Request Header Fields Too Large", "request head too large")
}

/// A key is base64 of 16 bytes: 22 significant characters and `==`.
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// All digits is refused: that is how a connection without a user is named (its id).
pub(crate) fn is_valid_user(user: &str) -> bool {
    (1..=MAX_USER_LEN).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
        && !user.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// A valid upgrade for user `ann` at `/ws?user=ann`, with `extra` header lines.
    pub(in crate::http) fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /ws?user=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    pub(in crate::http) fn examine(bytes: &[u8]) -> Verdict {
        super::examine(bytes, 1024)
    }

    pub(in crate::http) fn status(verdict: Verdict) -> u16 {
        match verdict {
            Verdict::Refuse { response, .. } => response.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn accepts_an_upgrade_with_the_rfc_accept_key() {
        let request = upgrade_request("");
        let Verdict::Upgrade(upgrade) = examine(request.as_bytes()) else { panic!("not an upgrade") };
        let response = String::from_utf8(upgrade.response()).unwrap();
        // The worked example from RFC 6455 section 1.3.
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.starts_with("HTTP/1.1 101 "));
        assert_eq!(upgrade.user.as_deref(), Some("ann"));
        assert_eq!(upgrade.head_len, request.len());
    }

    #[test]
    fn waits_for_the_rest_of_the_head() {
        let request = upgrade_request("");
        assert_eq!(examine(&request.as_bytes()[..40]), Verdict::Incomplete);
    }

    fn plain(verdict: Verdict) -> (PlainRequest, usize) {
        match verdict {
            Verdict::Plain { request, len } => (request, len),
            other => panic!("expected a plain request, got {other:?}"),
        }
    }

    #[test]
    fn plain_requests_go_to_the_http_side() {
        let bytes = b"GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (request, len) = plain(examine(bytes));
        assert_eq!((request.method.as_str(), request.path(), request.header("host")), ("GET", "/health", Some("x")));
        assert!(request.keep_alive, "HTTP/1.1 keeps the connection by default");
        assert_eq!(len, bytes.len());
        let (close, _) = plain(examine(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!close.keep_alive);
        let (old, _) = plain(examine(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!old.keep_alive, "HTTP/1.0 closes unless asked to keep alive");
    }

    #[test]
    fn a_body_is_read_to_its_content_length_and_no_further() {
        let head = "POST /api HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(examine(head.as_bytes()), Verdict::BodyPending { expect_continue: true });
        let pipelined = format!("{head}helloGET / HTTP/1.1\r\n\r\n");
        let (request, len) = plain(examine(pipelined.as_bytes()));
        assert_eq!(request.body, b"hello");
        assert_eq!(&pipelined[len..], "GET / HTTP/1.1\r\n\r\n", "the next request is left for later");
    }

    #[test]
    fn refuses_bodies_it_will_not_read() {
        assert_eq!(status(examine(b"POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n")), 413);
        assert_eq!(status(examine(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")), 411);
        assert_eq!(status(examine(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")), 400);
        let conflict = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(status(examine(conflict)), 400);
    }

    #[test]
    fn refuses_bad_upgrades_with_the_right_status() {
        assert_eq!(status(examine(b"\x01\x02garbage\r\n\r\n")), 400);
        let post = upgrade_request("").replacen("GET", "POST", 1);
        assert_eq!(status(examine(post.as_bytes())), 405);
        let old = upgrade_request("").replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(status(examine(old.as_bytes())), 400);
        let version = upgrade_request("").replace("Version: 13", "Version: 8");
        assert_eq!(status(examine(version.as_bytes())), 426);
        let key = upgrade_request("").replace(KEY, "short");
        assert_eq!(status(examine(key.as_bytes())), 400);
        let user = upgrade_request("").replace("user=ann", "user=%3Cscript%3E");
        assert_eq!(status(examine(user.as_bytes())), 400);
        let digits = upgrade_request("").replace("user=ann", "user=72057594037927936");
        assert_eq!(status(examine(digits.as_bytes())), 400, "would pose as a connection id");
    }

    #[test]
    fn refuses_an_oversized_head() {
        let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(status(examine(huge.as_bytes())), 431);
    }
}
