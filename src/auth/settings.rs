//! Who may connect and how they prove it, as configured: the secrets, the JWT verifier,
//! tickets, origins and the topic policy the [`Gate`](super::Gate) is built from.

use std::sync::Arc;
use std::time::Duration;

use super::jwt::JwtVerifier;
use super::policy::Policy;

/// A secret a client presents (an API key, a static token). Never printed: `Debug`
/// shows only that it is set, so a logged `Config` leaks nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(pub(crate) String);

/// A key for the HTTP publish API.
pub type ApiKey = Secret;

impl std::borrow::Borrow<str> for Secret {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Who may connect, and how they prove it (see the README's "Authentication").
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Static tokens (`--auth token`).
    pub tokens: Vec<StaticToken>,
    /// JWT (HS256) verification (`--auth jwt`).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// One-time tickets from `POST /api/ticket` (`--auth ticket`).
    pub tickets: bool,
    /// How long an issued ticket stays redeemable.
    pub ticket_ttl: Duration,
    /// Origins a browser may connect from: exact values (`https://app.example`) or `*`;
    /// empty means the page must come from the host it connects to.
    pub allowed_origins: Vec<String>,
    /// Who may use which topics and broadcast, beyond what credentials say.
    pub policy: Policy,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            tokens: Vec::new(),
            jwt: None,
            tickets: false,
            ticket_ttl: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            policy: Policy::default(),
        }
    }
}

/// A static token and the identity it stands for.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub token: Secret,
    pub user: String,
    /// May broadcast (and use any topic).
    pub admin: bool,
}

impl Secret {
    pub fn new(key: impl Into<String>) -> Self {
        Secret(key.into())
    }

    /// Compares in time independent of where the two differ, so response timing does not
    /// reveal how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
