//! HTTP before (or instead of) the upgrade, free of sockets: [`request`] decides what a
//! connection's first bytes ask for, [`response`] is what goes back.

mod request;
mod response;

pub use request::PlainRequest;
pub(crate) use request::{bearer_token, examine, is_valid_user, Credential, Upgrade, Verdict, MAX_REQUEST_BYTES};
pub(crate) use response::reason_phrase;
pub use response::HttpResponse;
