//! JWT (HS256) verification for the gate and for `refresh` frames: signature, then the
//! time claims (`exp`, `nbf` with leeway), then `iss` / `aud` when configured; `sub`
//! becomes the user, `subs` / `pubs` / `admin` / `role(s)` the grants. Only HS256 is
//! accepted: a token naming any other algorithm (`none` included), another `typ`, or any
//! `crit` extension is refused before its signature is looked at.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{AuthError, Grants, Identity};
use crate::http::is_valid_user;

type HmacSha256 = Hmac<Sha256>;

/// Longest token looked at; anything longer is refused unread.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Checks HS256 tokens signed with one shared secret.
#[derive(Clone)]
pub struct JwtVerifier {
    secret: Vec<u8>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// Optional; when present it must say JWT, so a token minted for another purpose under
    /// the same key (an `at+jwt`, a JWS of some other document) is not taken as a login.
    typ: Option<String>,
    /// RFC 7515 requires refusing a token whose `crit` names extensions we do not
    /// implement, and we implement none (e.g. `b64: false` would change what is signed).
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<OneOrMany>,
    subs: Option<Vec<String>>,
    pubs: Option<Vec<String>>,
    #[serde(default)]
    admin: bool,
    role: Option<String>,
    roles: Option<Vec<String>>,
}

impl JwtVerifier {
    pub fn new(secret: Vec<u8>) -> Self {
        JwtVerifier { secret, issuer: None, audience: None, leeway: Duration::from_secs(30) }
    }

    /// Requires `iss` to equal `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to be, or contain, `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The identity `token` stands for at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid("not three dot-separated parts"));
        };
        let signed_input = &token[..header.len() + 1 + payload.len()];
        let header: Header = decode_json(header)?;
        if header.alg != "HS256" {
            return Err(AuthError::Invalid("only HS256 is accepted"));
        }
        if header.typ.as_deref().is_some_and(|typ| !typ.eq_ignore_ascii_case("JWT")) {
            return Err(AuthError::Invalid("typ is not JWT"));
        }
        if header.crit.is_some() {
            return Err(AuthError::Invalid("critical header extensions are not supported"));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Invalid("bad base64url"))?;
        let mut mac = HmacSha256::new_from_slice(&self.secret).map_err(|_| AuthError::Invalid("unusable secret"))?;
        mac.update(signed_input.as_bytes());
        mac.verify_slice(&signature).map_err(|_| AuthError::Invalid("bad signature"))?;

        let claims: Claims = decode_json(payload)?;
        let leeway = self.leeway.as_secs();
        if claims.exp.is_some_and(|exp| now > exp.saturating_add(leeway)) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer {
            if claims.iss.as_ref() != Some(issuer) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let matches = match &claims.aud {
                Some(OneOrMany::One(aud)) => aud == audience,
                Some(OneOrMany::Many(auds)) => auds.contains(audience),
                None => false,
            };
            if !matches {
                return Err(AuthError::WrongAudience);
            }
        }
        let user = claims.sub.ok_or(AuthError::Invalid("no sub claim"))?;
        if !is_valid_user(&user) {
            return Err(AuthError::Invalid("sub is not a valid user name"));
        }
        let admin = claims.admin
            || claims.role.as_deref() == Some("admin")
            || claims.roles.is_some_and(|roles| roles.iter().any(|r| r == "admin"));
        let grants = Grants { subscribe: claims.subs, publish: claims.pubs, admin };
        Ok(Identity { user, grants, expires_at: claims.exp })
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Invalid("bad base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Invalid("bad JSON in header or claims"))
}

/// Signs `claims` with HS256: for tests, examples and backends written in Rust.
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::Grants;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_800_000_000;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(SECRET.to_vec()).leeway(Duration::from_secs(10))
    }

    fn token(claims: serde_json::Value) -> String {
        sign(SECRET, &claims)
    }

    #[test]
    fn a_valid_token_names_the_user_and_its_grants() {
        let claims = json!({"sub": "ann", "exp": NOW + 60, "subs": ["room.*"], "pubs": ["room.1"], "role": "admin"});
        let identity = verifier().verify(&token(claims), NOW).unwrap();
        assert_eq!(identity.user, "ann");
        assert_eq!(identity.expires_at, Some(NOW + 60));
        assert_eq!(identity.grants.subscribe, Some(vec!["room.*".to_string()]));
        assert!(identity.grants.admin);
    }

    #[test]
    fn the_jwt_io_example_verifies_but_its_numeric_sub_is_refused() {
        // The HS256 example from jwt.io, signed elsewhere: proves the signature path
        // agrees with other implementations. Its `sub` is all digits, which would pose as
        // a connection id.
        let example = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let verifier = JwtVerifier::new(b"your-256-bit-secret".to_vec());
        assert_eq!(verifier.verify(example, NOW), Err(AuthError::Invalid("sub is not a valid user name")));
        let wrong = JwtVerifier::new(b"not-the-secret".to_vec());
        assert_eq!(wrong.verify(example, NOW), Err(AuthError::Invalid("bad signature")));
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let good = token(json!({"sub": "ann"}));
        let forged = sign(b"other", &json!({"sub": "ann"}));
        assert_eq!(verifier().verify(&forged, NOW), Err(AuthError::Invalid("bad signature")));
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let admin = URL_SAFE_NO_PAD.encode(br#"{"sub":"ann","admin":true}"#);
        let tampered = format!("{head}.{admin}.{signature}");
        assert_eq!(verifier().verify(&tampered, NOW), Err(AuthError::Invalid("bad signature")));
        for alg in ["none", "HS512", "RS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let other = format!("{header}.{rest}");
            assert_eq!(verifier().verify(&other, NOW), Err(AuthError::Invalid("only HS256 is accepted")), "{alg}");
        }
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let v = verifier();
        assert_eq!(v.verify(&token(json!({"sub": "a", "exp": NOW - 11})), NOW), Err(AuthError::Expired));
        assert!(v.verify(&token(json!({"sub": "a", "exp": NOW - 9})), NOW).is_ok(), "within leeway");
        assert_eq!(v.verify(&token(json!({"sub": "a", "nbf": NOW + 11})), NOW), Err(AuthError::NotYetValid));
        assert!(v.verify(&token(json!({"sub": "a", "nbf": NOW + 9})), NOW).is_ok());
        let bad_type = token(json!({"sub": "a", "exp": "tomorrow"}));
        assert!(matches!(v.verify(&bad_type, NOW), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn issuer_and_audience_must_match_when_configured() {
        let v = verifier().issuer("auth.example").audience("wshub");
        let ok = token(json!({"sub": "a", "iss": "auth.example", "aud": ["api", "wshub"]}));
        assert!(v.verify(&ok, NOW).is_ok());
        let ok_string = token(json!({"sub": "a", "iss": "auth.example", "aud": "wshub"}));
        assert!(v.verify(&ok_string, NOW).is_ok());
        let wrong_iss = token(json!({"sub": "a", "iss": "evil", "aud": "wshub"}));
        assert_eq!(v.verify(&wrong_iss, NOW), Err(AuthError::WrongIssuer));
        let no_iss = token(json!({"sub": "a", "aud": "wshub"}));
        assert_eq!(v.verify(&no_iss, NOW), Err(AuthError::WrongIssuer));
        let wrong_aud = token(json!({"sub": "a", "iss": "auth.example", "aud": "other"}));
        assert_eq!(v.verify(&wrong_aud, NOW), Err(AuthError::WrongAudience));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let v = verifier();
        for bad in ["", "a.b", "a.b.c.d", "!!!.???.***", "e30.e30.", &"a".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(matches!(v.verify(bad, NOW), Err(AuthError::Invalid(_))), "{bad:.20}");
        }
        let padded = format!("{}=", token(json!({"sub": "a"})));
        assert!(v.verify(&padded, NOW).is_err(), "padding is not base64url without padding");
        assert!(matches!(v.verify(&token(json!({"name": "x"})), NOW), Err(AuthError::Invalid(_))), "no sub");
        assert!(matches!(v.verify(&token(json!({"sub": "a", "subs": "room"})), NOW), Err(AuthError::Invalid(_))));
    }

    /// Signed with a header of the test's choosing, to reach the header checks.
    fn token_with_header(header: &str, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn the_header_must_be_a_plain_hs256_jwt() {
        let v = verifier();
        let sub = || json!({"sub": "ann"});
        assert!(v.verify(&token_with_header(r#"{"alg":"HS256"}"#, sub()), NOW).is_ok(), "typ is optional");
        assert!(v.verify(&token_with_header(r#"{"alg":"HS256","typ":"jwt"}"#, sub()), NOW).is_ok());
        let refused = [
            (r#"{"alg":"HS256","typ":"at+jwt"}"#, "typ is not JWT"),
            (r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, "critical header extensions are not supported"),
            (r#"{"alg":"none"}"#, "only HS256 is accepted"),
            (r#"{"alg":"hs256"}"#, "only HS256 is accepted"),
            (r#"{"typ":"JWT"}"#, "bad JSON in header or claims"),
            (r#"{"alg":"HS256","alg":"none"}"#, "bad JSON in header or claims"),
        ];
        for (header, why) in refused {
            assert_eq!(v.verify(&token_with_header(header, sub()), NOW), Err(AuthError::Invalid(why)), "{header}");
        }
    }

    #[test]
    fn sub_must_be_a_valid_user_name() {
        let v = verifier();
        let max = "a".repeat(64);
        assert_eq!(v.verify(&token(json!({"sub": max})), NOW).unwrap().user, max);
        for sub in ["", "12345", "an n", "ann/x", "ann\u{0}", &"a".repeat(65)] {
            let refused = v.verify(&token(json!({"sub": sub})), NOW);
            assert_eq!(refused, Err(AuthError::Invalid("sub is not a valid user name")), "{sub:?}");
        }
        assert!(matches!(v.verify(&token(json!({"sub": 42})), NOW), Err(AuthError::Invalid(_))), "not a string");
    }

    #[test]
    fn grants_come_from_the_claims() {
        let v = verifier();
        let grants = |claims: serde_json::Value| v.verify(&token(claims), NOW).map(|id| id.grants);
        let plain = grants(json!({"sub": "a", "role": "user", "roles": ["ops"]})).unwrap();
        assert_eq!(plain, Grants::default(), "no lists: no limits, and no admin");
        assert!(grants(json!({"sub": "a", "admin": true})).unwrap().admin);
        assert!(grants(json!({"sub": "a", "roles": ["ops", "admin"]})).unwrap().admin);
        assert!(!grants(json!({"sub": "a", "admin": false})).unwrap().admin);
        let listed = grants(json!({"sub": "a", "subs": [], "pubs": ["chat.*"]})).unwrap();
        assert_eq!((listed.subscribe, listed.publish), (Some(vec![]), Some(vec!["chat.*".to_string()])));
        for wrong in
            [json!({"pubs": "chat.*"}), json!({"subs": [1]}), json!({"admin": "yes"}), json!({"roles": "admin"})]
        {
            let mut claims = wrong.clone();
            claims["sub"] = json!("a");
            assert!(matches!(grants(claims), Err(AuthError::Invalid(_))), "{wrong}");
        }
        let no_exp = v.verify(&token(json!({"sub": "a"})), NOW).unwrap();
        assert_eq!(no_exp.expires_at, None);
    }

    #[test]
    fn a_configured_audience_must_be_present() {
        let v = verifier().audience("wshub");
        assert_eq!(v.verify(&token(json!({"sub": "a"})), NOW), Err(AuthError::WrongAudience));
        assert_eq!(v.verify(&token(json!({"sub": "a", "aud": []})), NOW), Err(AuthError::WrongAudience));
        assert!(verifier().verify(&token(json!({"sub": "a", "aud": "other"})), NOW).is_ok(), "not configured");
    }

    #[test]
    fn only_canonical_base64url_is_accepted() {
        let v = verifier();
        let good = token(json!({"sub": "a"}));
        let (input, signature) = good.rsplit_once('.').unwrap();
        // 32 bytes leave 2 unused bits in the last character: flipping one spells the
        // same signature a second way, and a strict decoder refuses it.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = signature.as_bytes()[signature.len() - 1];
        let index = ALPHABET.iter().position(|&c| c == last).unwrap();
        let sibling = ALPHABET[index ^ 1] as char;
        let non_canonical = format!("{input}.{}{sibling}", &signature[..signature.len() - 1]);
        assert!(matches!(v.verify(&non_canonical, NOW), Err(AuthError::Invalid(_))));
        let standard_alphabet = format!("{input}.+/{}", &signature[2..]);
        assert!(matches!(v.verify(&standard_alphabet, NOW), Err(AuthError::Invalid(_))), "+ and / are not base64url");
        assert!(matches!(v.verify(&format!("{input}.{signature} "), NOW), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert!(!format!("{:?}", verifier()).contains("test-secret"));
    }
}
