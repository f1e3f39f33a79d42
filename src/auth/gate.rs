//! The gate every WebSocket upgrade passes: after the request parser (`http`) has read a well-formed
//! upgrade, and before the 101 is written. It checks the browser's `Origin` (403), then
//! the credential the auth modes ask for (401), and says who the connection is and what it
//! may do. Sans-I/O: one shared `Gate` per server, called from every shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::jwt::JwtVerifier;
use super::policy::Policy;
use super::ticket_store::{ClusterTickets, TicketStore};
use super::tickets::is_well_formed;
use super::{AuthError, Grants, Identity};
use super::{AuthSettings, Secret};
use crate::http::{reason_phrase, Credential, HttpResponse, Upgrade};

/// Who an upgraded connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// `None`: an anonymous connection (open mode without `?user=`).
    pub user: Option<String>,
    /// `None` in open mode: everything is allowed. `Some`: what the credential grants.
    pub grants: Option<Arc<Grants>>,
    /// Unix seconds when the credential expires (a JWT's `exp`).
    pub expires_at: Option<u64>,
}

/// What the gate decides on an upgrade.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Upgrade, as this identity.
    Admit(Admitted),
    /// Answer this instead of the 101 (403, 401), then close.
    Refuse(HttpResponse),
    /// The credential is a ticket kept in the cluster: take it there (a round trip the
    /// shard thread does not wait for), then decide with [`Gate::admit_taken`].
    TakeTicket(String),
}

/// The auth policy of a running server.
pub struct Gate {
    /// Static token → (user, admin).
    tokens: HashMap<Secret, (String, bool)>,
    jwt: Option<Arc<JwtVerifier>>,
    /// Issued by `POST /api/ticket`; redeemed once with `?ticket=`. Here, or in the
    /// cluster's Redis once [`Gate::in_cluster`] says so.
    pub tickets: Option<TicketStore>,
    /// Exact origins allowed; empty: same origin only; `*`: any.
    allowed_origins: Vec<String>,
    /// The server's topic rules and broadcasters.
    pub policy: Policy,
    /// The grants of a credential without claims, shared by every such connection so an
    /// idle authenticated connection holds a pointer, not an allocation of its own.
    plain_grants: Arc<Grants>,
}

impl Gate {
    pub fn new(settings: &AuthSettings) -> Self {
        Gate {
            tokens: settings.tokens.iter().map(|t| (t.token.clone(), (t.user.clone(), t.admin))).collect(),
            jwt: settings.jwt.clone(),
            tickets: settings.tickets.then(|| TicketStore::new(settings.ticket_ttl, false)),
            allowed_origins: settings.allowed_origins.clone(),
            plain_grants: Arc::new(Grants::default()),
            policy: settings.policy.clone(),
        }
    }

    /// The same gate for an instance of a cluster (`--redis`): tickets live in Redis, so
    /// any instance's ticket opens a connection on any instance, once.
    pub fn in_cluster(mut self) -> Self {
        if let Some(store) = &self.tickets {
            self.tickets = Some(TicketStore::new(store.ttl(), true));
        }
        self
    }

    /// No credential is asked for: `?user=` is taken as given.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && self.jwt.is_none() && self.tickets.is_none()
    }

    /// Decides on an upgrade: who it is, the refusal to send instead of a 101, or the
    /// ticket to take from the cluster first. The origin is checked before any ticket is
    /// spent.
    pub fn admit(&self, upgrade: &Upgrade, now: Instant) -> Decision {
        if let Some(origin) = &upgrade.origin {
            if !self.origin_allowed(origin, upgrade.host.as_deref()) {
                return Decision::Refuse(HttpResponse::text(403, reason_phrase(403), "origin not allowed"));
            }
        }
        if self.is_open() {
            return Decision::Admit(Admitted { user: upgrade.user.clone(), grants: None, expires_at: None });
        }
        if let (Some(Credential::Ticket(ticket)), Some(TicketStore::Cluster(_))) = (&upgrade.credential, &self.tickets)
        {
            // A string no ticket can be was never issued: no round trip for it.
            return match is_well_formed(ticket) {
                true => Decision::TakeTicket(ticket.clone()),
                false => Decision::Refuse(unauthorized(AuthError::UnknownToken)),
            };
        }
        match self.identify(upgrade.credential.as_ref(), now) {
            Ok(identity) => Decision::Admit(self.admitted(identity)),
            Err(e) => Decision::Refuse(unauthorized(e)),
        }
    }

    /// Decides on an upgrade whose ticket was taken from the cluster: `record` is what
    /// was stored under it (`None`: nothing, so never issued, expired, or already used).
    pub fn admit_taken(&self, record: Option<&str>) -> Result<Admitted, HttpResponse> {
        ClusterTickets::redeem(record).map(|identity| self.admitted(identity)).map_err(unauthorized)
    }

    /// The refusal of an upgrade whose ticket cannot be checked now (Redis unreachable,
    /// or too many questions waiting for it): the client may try again shortly.
    pub fn unavailable() -> HttpResponse {
        HttpResponse::text(503, reason_phrase(503), "tickets cannot be checked now: the cluster is unreachable or busy")
            .with_header("Retry-After", "1")
    }

    fn admitted(&self, identity: Identity) -> Admitted {
        let grants = match identity.grants == *self.plain_grants {
            true => self.plain_grants.clone(),
            false => Arc::new(identity.grants),
        };
        Admitted { user: Some(identity.user), grants: Some(grants), expires_at: identity.expires_at }
    }

    fn identify(&self, credential: Option<&Credential>, now: Instant) -> Result<Identity, AuthError> {
        match credential {
            None => Err(AuthError::Missing),
            Some(Credential::Ticket(ticket)) => match &self.tickets {
                Some(TicketStore::Local(tickets)) => tickets.redeem(ticket, now),
                // Taken from Redis instead (`Decision::TakeTicket`), never here.
                Some(TicketStore::Cluster(_)) | None => Err(AuthError::UnknownToken),
            },
            Some(Credential::Token(token)) => self.verify_token(token),
        }
    }

    /// A static token or a JWT; also what a `refresh` frame presents.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some((user, admin)) = self.tokens.get(token) {
            let grants = Grants { admin: *admin, ..Grants::default() };
            return Ok(Identity { user: user.clone(), grants, expires_at: None });
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => jwt.verify(token, unix_now()),
            _ => Err(AuthError::UnknownToken),
        }
    }

    /// A browser's `Origin` must be listed, or (with no list) name the host it connects
    /// to: that blocks cross-site WebSocket hijacking, where another site's page opens a
    /// socket with the user's cookies. Non-browser clients send no `Origin`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.allowed_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin)) {
            return true;
        }
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        self.allowed_origins.is_empty() && host.is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
    }
}

/// A credential refused: 401 with the reason, never the credential itself.
fn unauthorized(e: AuthError) -> HttpResponse {
    HttpResponse::text(401, reason_phrase(401), e.to_string()).with_header("WWW-Authenticate", "Bearer")
}

/// Seconds since the Unix epoch (what JWT times are in).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::jwt;
    use crate::auth::StaticToken;
    use crate::http::{examine, Verdict};

    const SECRET: &[u8] = b"jwt-test-secret";

    fn upgrade(extra: &str, target: &str) -> Upgrade {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: hub.example:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        match examine(request.as_bytes(), 0) {
            Verdict::Upgrade(upgrade) => upgrade,
            other => panic!("{other:?}"),
        }
    }

    fn settings() -> AuthSettings {
        AuthSettings {
            tokens: vec![StaticToken { token: Secret::new("tok-ann"), user: "ann".into(), admin: true }],
            jwt: Some(Arc::new(JwtVerifier::new(SECRET.to_vec()))),
            tickets: true,
            ..AuthSettings::default()
        }
    }

    fn status(decision: Decision) -> u16 {
        match decision {
            Decision::Admit(_) => 101,
            Decision::Refuse(response) => response.status,
            Decision::TakeTicket(_) => 0,
        }
    }

    fn admitted(decision: Decision) -> Admitted {
        match decision {
            Decision::Admit(admitted) => admitted,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn local(gate: &Gate) -> &crate::auth::tickets::Tickets {
        match &gate.tickets {
            Some(TicketStore::Local(tickets)) => tickets,
            _ => panic!("local tickets"),
        }
    }

    #[test]
    fn open_mode_takes_the_user_as_given() {
        let gate = Gate::new(&AuthSettings::default());
        assert!(gate.is_open());
        let admitted = admitted(gate.admit(&upgrade("", "/?user=bob"), Instant::now()));
        assert_eq!((admitted.user.as_deref(), admitted.grants), (Some("bob"), None));
    }

    #[test]
    fn browsers_from_other_sites_are_refused() {
        let gate = Gate::new(&AuthSettings::default());
        let from = |origin: &str| status(gate.admit(&upgrade(&format!("Origin: {origin}\r\n"), "/"), Instant::now()));
        assert_eq!(from("http://hub.example:8080"), 101, "same origin");
        assert_eq!(from("https://evil.example"), 403);
        assert_eq!(status(gate.admit(&upgrade("", "/"), Instant::now())), 101, "no Origin: not a browser");
        let listed = AuthSettings { allowed_origins: vec!["https://app.example".into()], ..AuthSettings::default() };
        let gate = Gate::new(&listed);
        assert_eq!(status(gate.admit(&upgrade("Origin: https://app.example\r\n", "/"), Instant::now())), 101);
        assert_eq!(status(gate.admit(&upgrade("Origin: http://hub.example:8080\r\n", "/"), Instant::now())), 403);
    }

    #[test]
    fn tokens_jwts_and_tickets_identify_the_connection() {
        let gate = Gate::new(&settings());
        let now = Instant::now();
        let ann = admitted(gate.admit(&upgrade("Authorization: Bearer tok-ann\r\n", "/?user=mallory"), now));
        assert_eq!(ann.user.as_deref(), Some("ann"), "the credential names the user, not ?user=");
        assert!(ann.grants.unwrap().admin);

        let token = jwt::sign(SECRET, &serde_json::json!({"sub": "bob", "exp": unix_now() + 60}));
        let bob = admitted(gate.admit(&upgrade("", &format!("/?token={token}")), now));
        assert_eq!((bob.user.as_deref(), bob.expires_at.is_some()), (Some("bob"), true));

        let identity = Identity { user: "cy".into(), grants: Grants::default(), expires_at: None };
        let ticket = local(&gate).issue(identity, now).unwrap();
        let request = upgrade("", &format!("/?ticket={ticket}"));
        assert_eq!(admitted(gate.admit(&request, now)).user.as_deref(), Some("cy"));
        assert_eq!(status(gate.admit(&request, now)), 401, "a ticket works once");
    }

    #[test]
    fn a_bad_or_missing_credential_is_401() {
        let gate = Gate::new(&settings());
        let now = Instant::now();
        assert_eq!(status(gate.admit(&upgrade("", "/?user=ann"), now)), 401);
        assert_eq!(status(gate.admit(&upgrade("Authorization: Bearer nope\r\n", "/"), now)), 401);
        let expired = jwt::sign(SECRET, &serde_json::json!({"sub": "bob", "exp": unix_now() - 3600}));
        let Decision::Refuse(refusal) = gate.admit(&upgrade("", &format!("/?token={expired}")), now) else {
            panic!("admitted an expired token")
        };
        assert_eq!(refusal.status, 401);
        assert!(!String::from_utf8_lossy(&refusal.body).contains(&expired), "the token is not echoed");
        let forged = jwt::sign(b"another secret", &serde_json::json!({"sub": "bob"}));
        assert_eq!(status(gate.admit(&upgrade("", &format!("/?token={forged}")), now)), 401);
        let later = now + Duration::from_secs(3600);
        let identity = Identity { user: "cy".into(), grants: Grants::default(), expires_at: None };
        let ticket = local(&gate).issue(identity, now).unwrap();
        assert_eq!(status(gate.admit(&upgrade("", &format!("/?ticket={ticket}")), later)), 401, "expired ticket");
    }

    #[test]
    fn in_a_cluster_a_ticket_is_taken_from_redis_after_the_origin_check() {
        let gate = Gate::new(&settings()).in_cluster();
        let now = Instant::now();
        let ticket = crate::auth::tickets::fresh_ticket().unwrap();
        match gate.admit(&upgrade("", &format!("/?ticket={ticket}")), now) {
            Decision::TakeTicket(taken) => assert_eq!(taken, ticket),
            other => panic!("{other:?}"),
        }
        let foreign = upgrade("Origin: https://evil.example\r\n", &format!("/?ticket={ticket}"));
        assert_eq!(status(gate.admit(&foreign, now)), 403, "none spent");
        assert_eq!(status(gate.admit(&upgrade("", "/?ticket=made-up"), now)), 401, "no round trip for junk");
        assert_eq!(status(gate.admit(&upgrade("Authorization: Bearer tok-ann\r\n", "/"), now)), 101);

        let record = r#"{"user":"cy","subs":null,"pubs":null,"admin":false}"#;
        let cy = gate.admit_taken(Some(record)).unwrap();
        assert_eq!(cy.user.as_deref(), Some("cy"));
        assert!(Arc::ptr_eq(&cy.grants.unwrap(), &gate.plain_grants), "plain grants are shared");
        assert_eq!(gate.admit_taken(None).unwrap_err().status, 401, "used, expired or never issued");
        assert_eq!(gate.admit_taken(Some("garbage")).unwrap_err().status, 401);
        assert_eq!(Gate::unavailable().status, 503);
    }
}
