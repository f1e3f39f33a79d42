//! The credential an upgrade request presents. Browsers cannot set headers on a
//! WebSocket, so besides `Authorization: Bearer` a client may put its token in the query
//! (`?token=`, or a one-time `?ticket=`) or offer it as a `bearer.<token>` subprotocol; the
//! request parser collects them here, and exactly one place may be used.

use super::query::query_params;

/// A subprotocol starting with this carries a token: `bearer.<token>`.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// A credential on an upgrade request, by kind.
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

/// The one credential an upgrade presents, from its `Authorization` headers, its target's
/// query and its offered subprotocols; `None` without any. More than one (two places, or
/// one place twice) is ambiguous, whether or not they agree, and refused with the reason
/// (naming where they came from, never their values): a client uses one method
/// (RFC 6750 section 2). An `Authorization` header of another scheme is not a credential
/// here, but two `Authorization` headers are refused whatever their schemes.
pub(super) fn presented_credential(
    headers: &[httparse::Header<'_>],
    target: &str,
    offered: &[String],
) -> Result<Option<Credential>, String> {
    let authorization: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::tests::{examine, status, upgrade_request};
    use crate::http::request::Verdict;

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
}
