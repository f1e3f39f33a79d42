//! What the first bytes of a connection ask for. Sits between accept and the WebSocket
//! phase; free of sockets, so every verdict is unit-tested in memory.
//!
//! [`examine`] looks at the request bytes received so far and says: wait for more, upgrade
//! to a WebSocket (with the 101 response to send), or answer plain HTTP. Plain requests
//! (with their `Content-Length` body) go to the built-in endpoints (`api`) and then to
//! the handler's [`on_http`](crate::Handler::on_http) hook; malformed or unacceptable
//! requests get their status here (400, 405, 411, 413, 426, 431).

use std::fmt::Write as _;

use super::response::{reason_phrase, HttpResponse};

/// Largest request head accepted; the connection buffers no more than this.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// The subprotocol wshub confirms when a client offers it.
pub const SUBPROTOCOL: &str = "wshub";
/// A subprotocol starting with this carries a token: `bearer.<token>`.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
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

/// A credential on an upgrade request. Browsers cannot set headers on a WebSocket, so a
/// token may also come as `?token=` or as a `bearer.<token>` subprotocol.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A static token or a JWT (`Authorization: Bearer`, `?token=`, subprotocol).
    Token(String),
    /// A one-time ticket (`?ticket=`).
    Ticket(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token(_) => "Token(<redacted>)",
            Credential::Ticket(_) => "Ticket(<redacted>)",
        })
    }
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
    let refuse = |response| Verdict::Refuse { response, upgrade: false };
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_REQUEST_BYTES => return refuse(too_large()),
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return refuse(too_large()),
        Err(e) => return refuse(bad_request(format!("malformed request: {e}"))),
    };
    if head_len > MAX_REQUEST_BYTES {
        return refuse(too_large());
    }
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
        if header("Transfer-Encoding").is_some() {
            return refuse(HttpResponse::text(411, "Length Required", "send the body with a Content-Length"));
        }
        let body_len = match content_length(request.headers) {
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
            return Verdict::BodyPending { expect_continue: has_token("Expect", "100-continue") };
        }
        let keep_alive = match request.version {
            Some(1) => !has_token("Connection", "close"),
            _ => has_token("Connection", "keep-alive"),
        };
        let headers = request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let request = PlainRequest {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body: bytes[head_len..head_len + body_len].to_vec(),
            keep_alive,
        };
        return Verdict::Plain { request, len: head_len + body_len };
    }
    let refuse = |response| Verdict::Refuse { response, upgrade: true };
    if method != "GET" {
        return refuse(
            HttpResponse::text(405, "Method Not Allowed", "a WebSocket upgrade must use GET")
                .with_header("Allow", "GET"),
        );
    }
    if request.version != Some(1) {
        return refuse(bad_request("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !has_token("Connection", "upgrade") {
        return refuse(bad_request("missing 'Connection: Upgrade'"));
    }
    if header("Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return refuse(
            HttpResponse::text(426, "Upgrade Required", "only WebSocket version 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| is_valid_key(k.trim())) else {
        return refuse(bad_request("missing or invalid Sec-WebSocket-Key"));
    };
    let user = match query_param(target, "user") {
        None => None,
        Some(user) if is_valid_user(&user) => Some(user),
        Some(_) => {
            return refuse(bad_request(format!(
                "user must be 1-{MAX_USER_LEN} characters of A-Z a-z 0-9 _ . @ -, not all digits"
            )))
        }
    };
    let offered: Vec<String> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|h| String::from_utf8_lossy(h.value).split(',').map(|p| p.trim().to_string()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect();
    let subprotocol = match offered.iter().find(|p| *p == SUBPROTOCOL) {
        Some(ours) => Some(ours.clone()),
        None => offered.iter().find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX)).cloned(),
    };
    let authorization: Vec<String> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect();
    let credential = match credential(&authorization, target, &offered) {
        Ok(credential) => credential,
        Err(why) => return refuse(bad_request(why)),
    };
    Verdict::Upgrade(Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.trim().as_bytes()),
        user,
        credential,
        origin: header("Origin"),
        host: header("Host"),
        subprotocol,
        head_len,
    })
}

/// The one credential an upgrade presents, from its `Authorization` headers, its target's
/// query and its offered subprotocols; `None` without any. More than one (two places, or
/// one place twice) is ambiguous, whether or not they agree, and refused with the reason
/// (naming where they came from, never their values): a client uses one method
/// (RFC 6750 section 2). An `Authorization` header of another scheme is not a credential
/// here, but two `Authorization` headers are refused whatever their schemes.
fn credential(authorization: &[String], target: &str, offered: &[String]) -> Result<Option<Credential>, String> {
    if authorization.len() > 1 {
        return Err("more than one Authorization header: present one credential".into());
    }
    let mut found: Vec<(&str, Credential)> = Vec::new();
    if let Some(token) = authorization.first().and_then(|value| bearer_token(value)) {
        found.push(("an Authorization header", Credential::Token(token.to_string())));
    }
    found.extend(query_params(target, "token").map(|token| ("?token=", Credential::Token(token))));
    found.extend(query_params(target, "ticket").map(|ticket| ("?ticket=", Credential::Ticket(ticket))));
    found.extend(
        offered
            .iter()
            .filter_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
            .map(|token| ("a bearer. subprotocol", Credential::Token(token.to_string()))),
    );
    match found.len() {
        0 | 1 => Ok(found.pop().map(|(_, credential)| credential)),
        _ => {
            let places: Vec<&str> = found.iter().map(|(place, _)| *place).collect();
            Err(format!("more than one credential ({}): present one", places.join(", ")))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; `None` for another scheme.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
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

/// The percent-decoded value of `name` in the target's query string (the first, if it
/// is there more than once).
pub fn query_param(target: &str, name: &str) -> Option<String> {
    query_params(target, name).next()
}

/// Every percent-decoded value of `name` in the target's query string, in order.
fn query_params<'a>(target: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let query = target.split_once('?').map_or("", |(_, query)| query);
    query.split('&').filter_map(move |pair| {
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

    fn examine(bytes: &[u8]) -> Verdict {
        super::examine(bytes, 1024)
    }

    fn status(verdict: Verdict) -> u16 {
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
    fn finds_the_credential_wherever_a_client_can_put_it() {
        let credential = |extra: &str, target: &str| {
            let request = upgrade_request(extra).replace("/ws?user=ann", target);
            let Verdict::Upgrade(upgrade) = examine(request.as_bytes()) else { panic!("not an upgrade") };
            (upgrade.credential, upgrade.subprotocol)
        };
        let token = |t: &str| Some(Credential::Token(t.into()));
        assert_eq!(credential("Authorization: Bearer abc\r\n", "/"), (token("abc"), None));
        assert_eq!(credential("", "/ws?token=a%2Eb"), (token("a.b"), None));
        assert_eq!(credential("", "/ws?ticket=t1").0, Some(Credential::Ticket("t1".into())));
        let protocols = "Sec-WebSocket-Protocol: wshub, bearer.xyz\r\n";
        assert_eq!(credential(protocols, "/"), (token("xyz"), Some("wshub".into())));
        let only_bearer = "Sec-WebSocket-Protocol: bearer.xyz\r\n";
        assert_eq!(credential(only_bearer, "/"), (token("xyz"), Some("bearer.xyz".into())));
        assert_eq!(credential("", "/"), (None, None));
        assert!(!format!("{:?}", token("secret")).contains("secret"));
    }

    /// Each place a credential can be put: (name, extra header lines, query parameter).
    const PLACES: [(&str, &str, &str); 4] = [
        ("header", "Authorization: Bearer h1\r\n", ""),
        ("token", "", "token=q1"),
        ("ticket", "", "ticket=t1"),
        ("subprotocol", "Sec-WebSocket-Protocol: wshub, bearer.p1\r\n", ""),
    ];

    #[test]
    fn two_credentials_are_refused_in_every_combination() {
        for (first, second) in PLACES.iter().flat_map(|a| PLACES.iter().map(move |b| (a, b))) {
            // The same place twice gets another value, so no two are identical.
            let (header, query) = (second.1.replace('1', "2"), second.2.replace('1', "2"));
            let extra = format!("{}{header}", first.1);
            let query: Vec<&str> = [first.2, &query].into_iter().filter(|q| !q.is_empty()).collect();
            let request = upgrade_request(&extra).replace("/ws?user=ann", &format!("/ws?{}", query.join("&")));
            let case = format!("{} then {}", first.0, second.0);
            match examine(request.as_bytes()) {
                Verdict::Refuse { response, upgrade } => {
                    let body = String::from_utf8(response.body).unwrap();
                    assert_eq!((response.status, upgrade), (400, true), "{case}: {body}");
                    assert!(body.starts_with("more than one "), "{case}: {body}");
                    assert_eq!(body.lines().count(), 1, "{case}: one line: {body}");
                    for value in ["h1", "h2", "q1", "q2", "t1", "t2", "p1", "p2"] {
                        assert!(!body.contains(value), "{case}: the credential is not echoed: {body}");
                    }
                }
                other => panic!("{case}: expected a 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn one_credential_beside_other_things_is_not_ambiguous() {
        let credential = |extra: &str, target: &str| {
            let request = upgrade_request(extra).replace("/ws?user=ann", target);
            match examine(request.as_bytes()) {
                Verdict::Upgrade(upgrade) => upgrade.credential,
                other => panic!("{extra:?} {target}: {other:?}"),
            }
        };
        let token = |t: &str| Some(Credential::Token(t.into()));
        // Another scheme (a proxy's Basic auth) is not a credential of ours.
        assert_eq!(credential("Authorization: Basic YTpi\r\n", "/?token=q"), token("q"));
        assert_eq!(credential("Sec-WebSocket-Protocol: wshub\r\n", "/?user=ann&token=q"), token("q"));
        // Two Authorization headers are ambiguous whatever their schemes.
        let twice = upgrade_request("Authorization: Basic YTpi\r\nAuthorization: Basic Yzpk\r\n");
        assert_eq!(status(examine(twice.as_bytes())), 400);
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

    #[test]
    fn decodes_query_parameters() {
        assert_eq!(query_param("/ws?a=1&user=b%40c.d", "user").as_deref(), Some("b@c.d"));
        assert_eq!(query_param("/ws?user=", "user").as_deref(), Some(""));
        assert_eq!(query_param("/ws", "user"), None);
        assert_eq!(query_param("/ws?user=100%", "user").as_deref(), Some("100%"));
    }
}
