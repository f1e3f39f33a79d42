//! The front door: what the first bytes of a connection ask for. Sits between accept and
//! the WebSocket phase; free of sockets, so every verdict is unit-tested in memory.
//!
//! [`examine`] looks at the request bytes received so far and says: wait for more, upgrade
//! to a WebSocket (with the 101 response to send), or answer plain HTTP. Plain requests go
//! to the handler's [`on_http`](crate::Handler::on_http) hook; malformed or unacceptable
//! upgrades get their status here (400, 405, 426, 431).

use std::fmt::Write as _;

/// Largest request head accepted; the connection buffers no more than this.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// Longest `?user=` name accepted in open (no auth) mode.
pub const MAX_USER_LEN: usize = 64;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request head is not complete yet; read more.
    Incomplete,
    /// A valid WebSocket upgrade.
    Upgrade(Upgrade),
    /// A plain HTTP request for the handler's HTTP hook.
    Plain(PlainRequest),
    /// Answer this and close.
    Refuse(HttpResponse),
}

/// An accepted upgrade: what to send, and what the request told us.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
    /// `?user=` from the request target (open mode identity), if any.
    pub user: Option<String>,
    /// How many bytes the request head used; anything after is WebSocket data.
    pub head_len: usize,
}

/// A non-upgrade request, as the HTTP hook sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainRequest {
    pub method: String,
    /// The request target, query included.
    pub target: String,
}

/// A complete HTTP response; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: &'static str,
    /// Extra headers (Content-Length, Content-Type and Connection are added).
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A short plain-text response.
    pub fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        let mut body = body.into().into_bytes();
        body.push(b'\n');
        HttpResponse { status, reason, headers: Vec::new(), content_type: "text/plain; charset=utf-8", body }
    }

    pub fn not_found() -> Self {
        HttpResponse::text(404, "Not Found", "not found")
    }

    /// Adds a header; chainable.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.content_type,
            self.body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Decides what the request head in `bytes` asks for.
pub fn examine(bytes: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_REQUEST_BYTES => {
            return Verdict::Refuse(too_large());
        }
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Refuse(too_large()),
        Err(e) => return Verdict::Refuse(HttpResponse::text(400, "Bad Request", format!("malformed request: {e}"))),
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let has_token = |name: &str, token: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };

    if !has_token("Upgrade", "websocket") {
        return Verdict::Plain(PlainRequest { method: method.to_string(), target: target.to_string() });
    }
    if method != "GET" {
        return Verdict::Refuse(
            HttpResponse::text(405, "Method Not Allowed", "a WebSocket upgrade must use GET")
                .with_header("Allow", "GET"),
        );
    }
    if request.version != Some(1) {
        return Verdict::Refuse(bad_request("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !has_token("Connection", "upgrade") {
        return Verdict::Refuse(bad_request("missing 'Connection: Upgrade'"));
    }
    if header("Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return Verdict::Refuse(
            HttpResponse::text(426, "Upgrade Required", "only WebSocket version 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| is_valid_key(k.trim())) else {
        return Verdict::Refuse(bad_request("missing or invalid Sec-WebSocket-Key"));
    };
    let user = match query_param(target, "user") {
        None => None,
        Some(user) if is_valid_user(&user) => Some(user),
        Some(_) => {
            return Verdict::Refuse(bad_request(format!(
                "user must be 1-{MAX_USER_LEN} characters of A-Z a-z 0-9 _ . @ -, not all digits"
            )))
        }
    };
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    Verdict::Upgrade(Upgrade { response, user, head_len })
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
fn is_valid_user(user: &str) -> bool {
    (1..=MAX_USER_LEN).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
        && !user.bytes().all(|b| b.is_ascii_digit())
}

/// The percent-decoded value of `name` in the target's query string.
pub fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /ws?user=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status(verdict: Verdict) -> u16 {
        match verdict {
            Verdict::Refuse(response) => response.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn accepts_an_upgrade_with_the_rfc_accept_key() {
        let request = upgrade_request("");
        let Verdict::Upgrade(upgrade) = examine(request.as_bytes()) else { panic!("not an upgrade") };
        let response = String::from_utf8(upgrade.response).unwrap();
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

    #[test]
    fn plain_requests_go_to_the_http_hook() {
        let verdict = examine(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(verdict, Verdict::Plain(PlainRequest { method: "GET".into(), target: "/health".into() }));
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

    #[test]
    fn decodes_query_parameters() {
        assert_eq!(query_param("/ws?a=1&user=b%40c.d", "user").as_deref(), Some("b@c.d"));
        assert_eq!(query_param("/ws?user=", "user").as_deref(), Some(""));
        assert_eq!(query_param("/ws", "user"), None);
        assert_eq!(query_param("/ws?user=100%", "user").as_deref(), Some("100%"));
    }
}
