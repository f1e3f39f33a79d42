//! Responses the server writes over plain HTTP: refusals of an upgrade, the API's answers,
//! and the handler's own.

use std::fmt::Write as _;

/// A complete HTTP response.
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

    /// A JSON response; the reason phrase follows from the status.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into().into_bytes();
        body.push(b'\n');
        HttpResponse {
            status,
            reason: reason_phrase(status),
            headers: Vec::new(),
            content_type: "application/json",
            body,
        }
    }

    pub fn not_found() -> Self {
        HttpResponse::text(404, "Not Found", "not found")
    }

    /// Adds a header; chainable.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire. `keep_alive`: the connection stays open for another request;
    /// `head_only`: the answer to a `HEAD` request (headers, no body).
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            self.content_type,
            self.body.len()
        );
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The standard reason phrase of the statuses this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
