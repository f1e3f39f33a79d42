//! The built-in HTTP endpoints, answered on the WebSocket port by the shard that accepted
//! the connection: the web demo, the publish API for backends (and one-time tickets for
//! their browser clients), health, stats and Prometheus metrics. Sits after the request parser (`http`, which hands over a complete
//! [`PlainRequest`]) and before the handler's own `on_http` hook, which gets every path
//! not served here. Free of sockets: a request goes in, a response comes out.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::Message;

use crate::auth::ApiKey;
use crate::auth::Gate;
use crate::auth::IssueError;
use crate::auth::{Grants, Identity, NewTicket, TicketStore};
use crate::config::Config;
use crate::http::{bearer_token, is_valid_user, HttpResponse, PlainRequest};
use crate::hub::{Hub, InboxFull};
use crate::metrics::{self, Counters};
use crate::protocol;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");

/// The sender named in messages published through the API when the body names none.
pub const API_SENDER: &str = "api";

/// How a built-in endpoint answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// With this, now.
    Now(HttpResponse),
    /// Once the cluster has stored this ticket (`POST /api/ticket` with `--redis`): then
    /// with [`issued`], or [`unavailable`] if it could not be stored. The connection
    /// waits for it; the shard thread does not.
    StoreTicket(NewTicket),
}

/// Answers `request` if it is for a built-in endpoint; `None` passes it on to the handler.
pub(crate) fn serve(
    request: &PlainRequest,
    hub: &Hub,
    config: &Config,
    gate: &Gate,
    counters: &mut Counters,
) -> Option<Reply> {
    serve_now(request, hub, config, gate, counters).map(|answer| answer.unwrap_or_else(Reply::Now))
}

/// `Err` is an answer ready now, `Ok` one that waits for the cluster.
fn serve_now(
    request: &PlainRequest,
    hub: &Hub,
    config: &Config,
    gate: &Gate,
    counters: &mut Counters,
) -> Option<Result<Reply, HttpResponse>> {
    let path = request.path();
    let response = match path {
        "/" | "/index.html" if config.serve_demo => get(request, || asset("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" if config.serve_demo => get(request, || asset("text/javascript; charset=utf-8", APP_JS)),
        "/health" => get(request, || health(hub)),
        "/stats" => get(request, || {
            let stats = serde_json::to_string(&hub.stats()).expect("stats serialize");
            HttpResponse::json(200, stats).with_header("Cache-Control", "no-store")
        }),
        "/metrics" => get(request, || {
            let mut response = HttpResponse::text(200, "OK", "");
            response.body = metrics::prometheus(&hub.stats()).into_bytes();
            response.content_type = "text/plain; version=0.0.4; charset=utf-8";
            response
        }),
        "/api/publish" | "/api/broadcast" | "/api/send" | "/api/ticket" => {
            if request.method != "POST" {
                return Some(Err(not_allowed("POST")));
            }
            if let Err(refusal) = authorize(request, &config.api_keys) {
                if refusal.status == 401 {
                    counters.auth_failures += 1;
                }
                return Some(Err(refusal));
            }
            let answer = match path {
                "/api/publish" => publish(&request.body, hub),
                "/api/broadcast" => broadcast(&request.body, hub),
                "/api/ticket" => return Some(ticket(&request.body, gate)),
                _ => send(&request.body, hub),
            };
            answer.unwrap_or_else(|refusal| refusal)
        }
        _ if path.starts_with("/api/") => error(404, "not_found", &format!("no API endpoint {path}")),
        _ => return None,
    };
    Some(Err(response))
}

/// Alive: 200 `{"ok":true}`. In a cluster it adds `"status"`: `"ok"`, or `"degraded"`
/// with a `"reason"` while Redis is unreachable, still 200: the instance serves its own
/// connections, and taking every instance out of a load balancer over a Redis outage
/// would stop the service that local delivery keeps going.
fn health(hub: &Hub) -> HttpResponse {
    let cluster = hub.cluster_stats().map(|cluster| cluster.down_reason);
    let store = hub.history().map(|history| history.health.stats().reason.map(|why| format!("history store: {why}")));
    let body = match (cluster, store) {
        (None, None) => r#"{"ok":true}"#.to_string(),
        (cluster, store) => match cluster.flatten().into_iter().chain(store.flatten()).collect::<Vec<_>>() {
            reasons if reasons.is_empty() => r#"{"ok":true,"status":"ok"}"#.to_string(),
            reasons => {
                serde_json::json!({ "ok": true, "status": "degraded", "reason": reasons.join("; ") }).to_string()
            }
        },
    };
    HttpResponse::json(200, body).with_header("Cache-Control", "no-store")
}

/// Serves `make()` to GET and HEAD (the response drops the body for HEAD).
fn get(request: &PlainRequest, make: impl FnOnce() -> HttpResponse) -> HttpResponse {
    match request.method.as_str() {
        "GET" | "HEAD" => make(),
        _ => not_allowed("GET, HEAD"),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse { status: 200, reason: "OK", headers: Vec::new(), content_type, body: body.as_bytes().to_vec() }
        .with_header("Cache-Control", "no-cache")
}

fn not_allowed(allow: &'static str) -> HttpResponse {
    error(405, "method_not_allowed", &format!("use {allow}")).with_header("Allow", allow)
}

/// A JSON error body: `{"error":code,"message":...}`.
fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::json(status, serde_json::json!({ "error": code, "message": message }).to_string())
}

/// Checks `Authorization: Bearer <key>` against the configured API keys. Two
/// `Authorization` headers are ambiguous (which one is meant?) and refused with 400.
fn authorize(request: &PlainRequest, keys: &[ApiKey]) -> Result<(), HttpResponse> {
    if keys.is_empty() {
        return Err(error(403, "api_disabled", "the publish API is off: start the server with --api-key"));
    }
    let mut headers = request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("Authorization"));
    let first = headers.next();
    if headers.next().is_some() {
        return Err(error(400, "ambiguous_credentials", "more than one Authorization header: present one API key"));
    }
    match first.and_then(|(_, value)| bearer_token(value)) {
        Some(key) if keys.iter().any(|known| known.matches(key)) => Ok(()),
        Some(_) => Err(unauthorized("invalid API key")),
        None => Err(unauthorized("send the API key as 'Authorization: Bearer <key>'")),
    }
}

fn unauthorized(message: &str) -> HttpResponse {
    error(401, "unauthorized", message).with_header("WWW-Authenticate", "Bearer")
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    topic: String,
    #[serde(borrow)]
    data: &'a RawValue,
    from: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    from: Option<String>,
}

#[derive(Deserialize)]
struct SendBody<'a> {
    user: String,
    #[serde(borrow)]
    data: &'a RawValue,
    from: Option<String>,
}

/// Queued for delivery on every shard (the answer cannot wait for the deliveries), or
/// 503 where a shard's inbox was full: its receivers miss the message, the others get it.
fn accepted(routed: Result<(), InboxFull>) -> Result<HttpResponse, HttpResponse> {
    match routed {
        Ok(()) => Ok(HttpResponse::json(202, r#"{"ok":true}"#)),
        Err(full) => Err(error(503, "overloaded", &full.to_string())),
    }
}

fn publish(body: &[u8], hub: &Hub) -> Result<HttpResponse, HttpResponse> {
    let body: PublishBody<'_> = parse(body)?;
    protocol::check_topic(&body.topic).map_err(|why| error(400, "bad_topic", &why))?;
    let from = sender(body.from.as_deref())?;
    accepted(hub.publish(&body.topic, from, body.data))
}

fn broadcast(body: &[u8], hub: &Hub) -> Result<HttpResponse, HttpResponse> {
    let body: BroadcastBody<'_> = parse(body)?;
    let from = sender(body.from.as_deref())?;
    accepted(hub.broadcast(Message::text(protocol::message(None, from, body.data, protocol::now_millis(), None))))
}

fn send(body: &[u8], hub: &Hub) -> Result<HttpResponse, HttpResponse> {
    let body: SendBody<'_> = parse(body)?;
    if body.user.is_empty() {
        return Err(error(400, "bad_field", "user must not be empty"));
    }
    let from = sender(body.from.as_deref())?;
    let frame = protocol::message(None, from, body.data, protocol::now_millis(), None);
    accepted(hub.send_to_user(&body.user, Message::text(frame)))
}

#[derive(Deserialize)]
struct TicketBody {
    user: String,
    subs: Option<Vec<String>>,
    pubs: Option<Vec<String>>,
    #[serde(default)]
    admin: bool,
}

/// A one-time ticket for a browser to connect as `user` (with the grants given): issued
/// now from the local table, or once stored in the cluster's.
fn ticket(body: &[u8], gate: &Gate) -> Result<Reply, HttpResponse> {
    let Some(store) = &gate.tickets else {
        return Err(error(403, "tickets_disabled", "start the server with --auth ticket to issue tickets"));
    };
    let body: TicketBody = parse(body)?;
    if !is_valid_user(&body.user) {
        return Err(error(400, "bad_field", "user must be 1-64 characters of A-Z a-z 0-9 _ . @ -, not all digits"));
    }
    let grants = Grants { subscribe: body.subs, publish: body.pubs, admin: body.admin };
    let identity = Identity { user: body.user, grants, expires_at: None };
    let issued = match store {
        TicketStore::Local(tickets) => {
            tickets.issue(identity, Instant::now()).map(|t| Reply::Now(issued(&t, store.ttl())))
        }
        TicketStore::Cluster(tickets) => tickets.issue(identity).map(Reply::StoreTicket),
    };
    issued.map_err(|e| match e {
        IssueError::TooMany => error(503, "too_many_tickets", &e.to_string()),
        IssueError::NoRandomness => error(500, "no_randomness", &e.to_string()),
    })
}

/// The answer to `POST /api/ticket` once `ticket` can be redeemed, for `ttl`.
pub(crate) fn issued(ticket: &str, ttl: Duration) -> HttpResponse {
    let answer = serde_json::json!({ "ticket": ticket, "expires_in": ttl.as_secs() });
    HttpResponse::json(201, answer.to_string()).with_header("Cache-Control", "no-store")
}

/// The answer to a request that needed the cluster while it could not be reached (or
/// had too many questions waiting): nothing was done; try again shortly.
pub(crate) fn unavailable() -> HttpResponse {
    error(503, "cluster_unavailable", "the cluster's Redis is unreachable or busy; nothing was done, try again")
        .with_header("Retry-After", "1")
}

/// Parses a JSON body; a syntax error is `bad_json`, a missing or mistyped field `bad_field`.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpResponse> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => error(400, "bad_field", &e.to_string()),
        _ => error(400, "bad_json", &format!("the body must be a JSON object: {e}")),
    })
}

/// The `from` a backend chose (a valid user name), or [`API_SENDER`].
fn sender(from: Option<&str>) -> Result<&str, HttpResponse> {
    match from {
        None => Ok(API_SENDER),
        Some(from) if is_valid_user(from) => Ok(from),
        Some(_) => Err(error(400, "bad_field", "from must be 1-64 characters of A-Z a-z 0-9 _ . @ -, not all digits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, auth: Option<&str>, body: &str) -> PlainRequest {
        PlainRequest {
            method: method.into(),
            target: target.into(),
            headers: auth.map(|a| ("Authorization".to_string(), a.to_string())).into_iter().collect(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn answer(request: &PlainRequest, config: &Config) -> (u16, String, Counters) {
        let hub = Hub::detached(2);
        let mut counters = Counters::default();
        let gate = Gate::new(&config.auth);
        let response = now(serve(request, &hub, config, &gate, &mut counters));
        (response.status, String::from_utf8(response.body).unwrap(), counters)
    }

    fn now(reply: Option<Reply>) -> HttpResponse {
        match reply {
            Some(Reply::Now(response)) => response,
            other => panic!("not answered now: {other:?}"),
        }
    }

    fn with_key() -> Config {
        Config { api_keys: vec![ApiKey::new("s3cret")], ..Config::default() }
    }

    #[test]
    fn health_stats_and_metrics_answer_get_only() {
        let config = Config::default();
        assert_eq!(answer(&request("GET", "/health", None, ""), &config).1, "{\"ok\":true}\n");
        let (status, body, _) = answer(&request("GET", "/stats?pretty", None, ""), &config);
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, stats["connections_per_shard"].as_array().map(Vec::len)), (200, Some(2)));
        assert!(stats["messages_in"].is_u64() && stats["uptime_seconds"].is_u64(), "{body}");
        assert!(answer(&request("GET", "/metrics", None, ""), &config).1.contains("# TYPE wshub_connections gauge"));
        assert_eq!(answer(&request("DELETE", "/health", None, ""), &config).0, 405);
    }

    #[test]
    fn other_paths_go_to_the_handler_except_under_api() {
        let hub = Hub::detached(1);
        let config = Config::default();
        let gate = Gate::new(&config.auth);
        assert!(
            serve(&request("GET", "/elsewhere", None, ""), &hub, &config, &gate, &mut Counters::default()).is_none()
        );
        assert_eq!(answer(&request("POST", "/api/nothing", None, ""), &config).0, 404);
        let no_demo = Config { serve_demo: false, ..Config::default() };
        assert!(serve(&request("GET", "/", None, ""), &hub, &no_demo, &gate, &mut Counters::default()).is_none());
    }

    #[test]
    fn the_api_wants_the_key() {
        let publish = |auth| request("POST", "/api/publish", auth, r#"{"topic":"t","data":1}"#);
        assert_eq!(answer(&publish(Some("Bearer s3cret")), &with_key()).0, 202);
        let (status, body, counters) = answer(&publish(Some("Bearer nope")), &with_key());
        assert_eq!((status, counters.auth_failures), (401, 1), "{body}");
        assert_eq!(answer(&publish(None), &with_key()).0, 401);
        assert_eq!(answer(&publish(Some("Basic s3cret")), &with_key()).0, 401);
        assert_eq!(answer(&publish(Some("Bearer s3cret")), &Config::default()).0, 403, "no key configured");
        assert_eq!(answer(&request("GET", "/api/publish", None, ""), &with_key()).0, 405);
    }

    #[test]
    fn two_authorization_headers_are_refused_with_400() {
        for (first, second) in
            [("Bearer s3cret", "Bearer s3cret"), ("Bearer nope", "Bearer s3cret"), ("Basic x", "Bearer s3cret")]
        {
            let mut publish = request("POST", "/api/publish", Some(first), r#"{"topic":"t","data":1}"#);
            publish.headers.push(("authorization".into(), second.into()));
            let (status, body, counters) = answer(&publish, &with_key());
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!((status, value["error"].as_str()), (400, Some("ambiguous_credentials")), "{first} + {second}");
            assert!(!body.contains("s3cret") && !body.contains("nope"), "no key echoed: {body}");
            assert_eq!(counters.auth_failures, 0, "malformed, not a wrong key");
        }
    }

    #[test]
    fn bad_bodies_get_400_with_a_code() {
        let post = |path, body| answer(&request("POST", path, Some("Bearer s3cret"), body), &with_key());
        let code = |(status, body, _): (u16, String, Counters)| {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            (status, value["error"].as_str().unwrap().to_string())
        };
        assert_eq!(code(post("/api/publish", "{not json")), (400, "bad_json".into()));
        assert_eq!(code(post("/api/publish", r#"{"topic":"t"}"#)), (400, "bad_field".into()));
        assert_eq!(code(post("/api/publish", r#"{"topic":"","data":1}"#)), (400, "bad_topic".into()));
        assert_eq!(code(post("/api/send", r#"{"user":"","data":1}"#)), (400, "bad_field".into()));
        assert_eq!(code(post("/api/broadcast", r#"{"data":1,"from":"<b>"}"#)), (400, "bad_field".into()));
        assert_eq!(post("/api/broadcast", r#"{"data":{"x":[1,2]},"from":"ops"}"#).0, 202);
        assert_eq!(post("/api/send", r#"{"user":"ann","data":"hi"}"#).0, 202);
    }

    #[test]
    fn in_a_cluster_a_ticket_is_answered_once_stored() {
        let auth = crate::auth::AuthSettings { tickets: true, ..Default::default() };
        let config = Config { auth, ..with_key() };
        let gate = Gate::new(&config.auth).in_cluster();
        let post = request("POST", "/api/ticket", Some("Bearer s3cret"), r#"{"user":"cy","admin":true}"#);
        let reply = serve(&post, &Hub::detached(1), &config, &gate, &mut Counters::default());
        let Some(Reply::StoreTicket(new)) = reply else { panic!("answered before it is stored: {reply:?}") };
        assert!(new.record.contains(r#""user":"cy""#) && new.record.contains(r#""admin":true"#), "{}", new.record);
        let issued = issued(&new.ticket, new.ttl);
        let body: serde_json::Value = serde_json::from_slice(&issued.body).unwrap();
        assert_eq!(
            (issued.status, body["ticket"].as_str(), body["expires_in"].as_u64()),
            (201, Some(&*new.ticket), Some(30))
        );
        assert_eq!(unavailable().status, 503);
        let bad = request("POST", "/api/ticket", Some("Bearer s3cret"), r#"{"user":""}"#);
        let reply = serve(&bad, &Hub::detached(1), &config, &gate, &mut Counters::default());
        assert!(matches!(reply, Some(Reply::Now(HttpResponse { status: 400, .. }))), "checked before storing");
    }

    #[test]
    fn a_full_shard_inbox_is_answered_503() {
        let (hub, _receivers) = Hub::undrained(2, 1);
        let config = with_key();
        let gate = Gate::new(&config.auth);
        let broadcast = request("POST", "/api/broadcast", Some("Bearer s3cret"), r#"{"data":1}"#);
        let post = || now(serve(&broadcast, &hub, &config, &gate, &mut Counters::default()));
        assert_eq!(post().status, 202);
        let refused = post();
        let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
        assert_eq!((refused.status, body["error"].as_str()), (503, Some("overloaded")));
        assert_eq!(hub.stats().inbox_refused, [1, 1]);
    }
}
