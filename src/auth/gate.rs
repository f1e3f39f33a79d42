//! The gate every WebSocket upgrade passes: after the request parser (`http`) has read a well-formed
//! upgrade, and before the 101 is written. It checks the browser's `Origin` (403), then
//! the credential the auth modes ask for (401), and says who the connection is and what it
//! may do. Sans-I/O: one shared `Gate` per server, called from every shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::jwt::JwtVerifier;
use super::policy::Policy;
use super::tickets::Tickets;
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

/// The auth policy of a running server.
pub struct Gate {
    /// Static token → (user, admin).
    tokens: HashMap<Secret, (String, bool)>,
    jwt: Option<Arc<JwtVerifier>>,
    /// Issued by `POST /api/ticket`; redeemed once with `?ticket=`.
    pub tickets: Option<Tickets>,
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
            tickets: settings.tickets.then(|| Tickets::new(settings.ticket_ttl)),
            allowed_origins: settings.allowed_origins.clone(),
            plain_grants: Arc::new(Grants::default()),
            policy: settings.policy.clone(),
        }
    }

    /// No credential is asked for: `?user=` is taken as given.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && self.jwt.is_none() && self.tickets.is_none()
    }

    /// Decides on an upgrade: who it is, or the refusal to send instead of a 101.
    pub fn admit(&self, upgrade: &Upgrade, now: Instant) -> Result<Admitted, HttpResponse> {
        if let Some(origin) = &upgrade.origin {
            if !self.origin_allowed(origin, upgrade.host.as_deref()) {
                return Err(HttpResponse::text(403, reason_phrase(403), "origin not allowed"));
            }
        }
        if self.is_open() {
            return Ok(Admitted { user: upgrade.user.clone(), grants: None, expires_at: None });
        }
        let identity = self.identify(upgrade.credential.as_ref(), now).map_err(|e| {
            HttpResponse::text(401, reason_phrase(401), e.to_string()).with_header("WWW-Authenticate", "Bearer")
        })?;
        let grants = match identity.grants == *self.plain_grants {
            true => self.plain_grants.clone(),
            false => Arc::new(identity.grants),
        };
        Ok(Admitted { user: Some(identity.user), grants: Some(grants), expires_at: identity.expires_at })
    }

    fn identify(&self, credential: Option<&Credential>, now: Instant) -> Result<Identity, AuthError> {
        match credential {
            None => Err(AuthError::Missing),
            Some(Credential::Ticket(ticket)) => match &self.tickets {
                Some(tickets) => tickets.redeem(ticket, now),
                None => Err(AuthError::UnknownToken),
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

    fn status(result: Result<Admitted, HttpResponse>) -> u16 {
        result.err().map_or(101, |response| response.status)
    }

    #[test]
    fn open_mode_takes_the_user_as_given() {
        let gate = Gate::new(&AuthSettings::default());
        assert!(gate.is_open());
        let admitted = gate.admit(&upgrade("", "/?user=bob"), Instant::now()).unwrap();
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
        let ann = gate.admit(&upgrade("Authorization: Bearer tok-ann\r\n", "/?user=mallory"), now).unwrap();
        assert_eq!(ann.user.as_deref(), Some("ann"), "the credential names the user, not ?user=");
        assert!(ann.grants.unwrap().admin);

        let token = jwt::sign(SECRET, &serde_json::json!({"sub": "bob", "exp": unix_now() + 60}));
        let bob = gate.admit(&upgrade("", &format!("/?token={token}")), now).unwrap();
        assert_eq!((bob.user.as_deref(), bob.expires_at.is_some()), (Some("bob"), true));

        let identity = Identity { user: "cy".into(), grants: Grants::default(), expires_at: None };
        let ticket = gate.tickets.as_ref().unwrap().issue(identity, now).unwrap();
        let request = upgrade("", &format!("/?ticket={ticket}"));
        assert_eq!(gate.admit(&request, now).unwrap().user.as_deref(), Some("cy"));
        assert_eq!(status(gate.admit(&request, now)), 401, "a ticket works once");
    }

    #[test]
    fn a_bad_or_missing_credential_is_401() {
        let gate = Gate::new(&settings());
        let now = Instant::now();
        assert_eq!(status(gate.admit(&upgrade("", "/?user=ann"), now)), 401);
        assert_eq!(status(gate.admit(&upgrade("Authorization: Bearer nope\r\n", "/"), now)), 401);
        let expired = jwt::sign(SECRET, &serde_json::json!({"sub": "bob", "exp": unix_now() - 3600}));
        let refusal = gate.admit(&upgrade("", &format!("/?token={expired}")), now).unwrap_err();
        assert_eq!(refusal.status, 401);
        assert!(!String::from_utf8_lossy(&refusal.body).contains(&expired), "the token is not echoed");
        let forged = jwt::sign(b"another secret", &serde_json::json!({"sub": "bob"}));
        assert_eq!(status(gate.admit(&upgrade("", &format!("/?token={forged}")), now)), 401);
        let later = now + Duration::from_secs(3600);
        let identity = Identity { user: "cy".into(), grants: Grants::default(), expires_at: None };
        let ticket = gate.tickets.as_ref().unwrap().issue(identity, now).unwrap();
        assert_eq!(status(gate.admit(&upgrade("", &format!("/?ticket={ticket}")), later)), 401, "expired ticket");
    }
}
