//! HTTP before (or instead of) the upgrade, free of sockets: [`request`] decides what a
//! connection's first bytes ask for (with [`credential`], the token or ticket an upgrade
//! presents), [`response`] is what goes back.

mod credential;
mod query;
mod request;
mod response;

pub(crate) use credential::{bearer_token, Credential};
pub use request::PlainRequest;
pub(crate) use request::{examine, is_valid_user, Upgrade, Verdict, MAX_REQUEST_BYTES};
pub(crate) use response::reason_phrase;
pub use response::HttpResponse;
