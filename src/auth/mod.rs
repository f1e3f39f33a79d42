//! Who a connection is and what it may do. The request parser (`http`) takes a credential off the
//! upgrade request; the [`gate`] checks it (static token, [`jwt`], or one-time
//! [`tickets`], kept here or in the cluster's Redis: [`ticket_store`]) and the browser's
//! origin before the 101; [`policy`] then decides, frame by frame, which topics and
//! broadcasts the identity may use.

use std::fmt;

mod gate;
mod jwt;
mod policy;
mod settings;
mod ticket_store;
mod tickets;

pub use gate::unix_now;
pub(crate) use gate::{Admitted, Decision, Gate};
pub use jwt::{sign as sign_jwt, JwtVerifier};
pub use policy::{Policy, TopicAction, TopicDenied, TopicRule};
pub use settings::{ApiKey, AuthSettings, Secret, StaticToken};
pub(crate) use ticket_store::{NewTicket, TicketStore};
pub(crate) use tickets::IssueError;

/// What a credential allows beyond connecting. `None` lists mean no limit from the
/// credential (the `user:` topic rule still applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Glob patterns of the topics it may subscribe to (JWT claim `subs`).
    pub subscribe: Option<Vec<String>>,
    /// Glob patterns of the topics it may publish to (JWT claim `pubs`).
    pub publish: Option<Vec<String>>,
    /// May broadcast and use any topic (JWT `admin: true` or role `admin`; a static
    /// token marked `admin`).
    pub admin: bool,
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub grants: Grants,
    /// Unix seconds when the credential stops being valid (a JWT's `exp`).
    pub expires_at: Option<u64>,
}

/// Why a credential was refused. Every variant means the same to the caller: refuse with
/// 401 and this reason; none of them carries the credential itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credential was presented.
    Missing,
    /// Malformed, or a signature that does not verify.
    Invalid(&'static str),
    /// Past its `exp` (or a ticket past its lifetime).
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// Neither a known static token nor a JWT; or a ticket never issued.
    UnknownToken,
    /// A ticket already redeemed.
    TicketUsed,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("credential required: a bearer token, ?token= or ?ticket="),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
            AuthError::Expired => f.write_str("credential expired"),
            AuthError::NotYetValid => f.write_str("token not yet valid"),
            AuthError::WrongIssuer => f.write_str("token from the wrong issuer"),
            AuthError::WrongAudience => f.write_str("token for another audience"),
            AuthError::UnknownToken => f.write_str("unknown token"),
            AuthError::TicketUsed => f.write_str("ticket already used"),
        }
    }
}

impl std::error::Error for AuthError {}
