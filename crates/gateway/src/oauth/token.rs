//! The token endpoint's rules (RFC 6749 4.1.3 and 6, OAuth 2.1 4.3.1) as pure functions: the
//! request parsed into typed values, and each decision made from the stored code or refresh
//! token and `now`. Control runs a decision inside the transaction that would spend the code
//! or token, so nothing is spent by a request that fails a check.
//!
//! A replay ends the sign-in it came from (the token family: what the code's exchange issued and
//! every refresh since; RFC 6749 4.1.2, RFC 9700 4.14.2), never the grant and its other
//! sign-ins, and only when the replaying request proves what the first one did (the client, and
//! for a code the PKCE verifier): a stranger who merely saw a code cannot end anyone's sign-in.

use super::verify_pkce;
use selfcloud_control::{CodeGrant, RefreshGrant, Verdict};
use selfcloud_core::{AppId, ScopeSet};
use serde::Deserialize;

/// RFC 6749 5.2's error codes that this server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenErrorKind {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    UnsupportedGrantType,
}

impl TokenErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenErrorKind::InvalidRequest => "invalid_request",
            TokenErrorKind::InvalidClient => "invalid_client",
            TokenErrorKind::InvalidGrant => "invalid_grant",
            TokenErrorKind::InvalidScope => "invalid_scope",
            TokenErrorKind::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    pub kind: TokenErrorKind,
    pub description: String,
}

impl TokenError {
    pub fn new(kind: TokenErrorKind, description: impl Into<String>) -> Self {
        TokenError { kind, description: description.into() }
    }
    fn request(description: &str) -> Self {
        Self::new(TokenErrorKind::InvalidRequest, description)
    }
    fn grant(description: &str) -> Self {
        Self::new(TokenErrorKind::InvalidGrant, description)
    }
}

/// The form as posted; every field optional so a missing one gets the protocol's error.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub client_id: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
}

/// A well-formed token request.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRequest {
    Code(CodeExchange),
    Refresh(Refresh),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeExchange {
    pub client_id: AppId,
    pub code: String,
    pub redirect_uri: String,
    pub verifier: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refresh {
    pub client_id: AppId,
    pub token: String,
    /// A narrower scope asked for; `None` keeps the token's.
    pub scope: Option<ScopeSet>,
}

fn required(field: Option<String>, name: &str) -> Result<String, TokenError> {
    field.filter(|v| !v.is_empty()).ok_or_else(|| TokenError::request(&format!("{name} is required")))
}

/// The client credentials of an `Authorization: Basic` header (RFC 6749 2.3.1: each part
/// form-urlencoded, then joined by `:`), `None` without one.
pub fn basic_credentials(header: Option<&str>) -> Result<Option<(String, String)>, TokenError> {
    use base64::Engine as _;
    let Some(value) = header else { return Ok(None) };
    let bad = || TokenError::new(TokenErrorKind::InvalidClient, "malformed Basic client credentials");
    let Some((scheme, encoded)) = value.split_once(' ') else { return Err(bad()) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let unescape =
        |s: &str| url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Ok(Some((unescape(id).ok_or_else(bad)?, unescape(secret).ok_or_else(bad)?)))
}

/// Client authentication (RFC 6749 2.3): a confidential client must present its secret, a public
/// one must not present any (it has none; a secret sent for it is a mistake worth refusing).
pub fn authenticate_client(secret_hash: Option<&[u8; 32]>, presented: Option<&str>) -> Result<(), TokenError> {
    use subtle::ConstantTimeEq;
    let refused = |why: &str| Err(TokenError::new(TokenErrorKind::InvalidClient, why));
    match (secret_hash, presented) {
        (None, None) => Ok(()),
        (None, Some(_)) => refused("this client is public: it has no secret, and proves itself with PKCE"),
        (Some(_), None) => refused("this client is confidential: authenticate with client_secret_basic"),
        (Some(expected), Some(secret)) => {
            let sent = selfcloud_control::tokens::hash_token(secret);
            if bool::from(sent.ct_eq(expected)) {
                Ok(())
            } else {
                refused("wrong client secret")
            }
        }
    }
}

/// Parses the form into a typed request, or the error RFC 6749 5.2 names.
pub fn parse(f: TokenForm) -> Result<TokenRequest, TokenError> {
    let client_id: AppId = required(f.client_id, "client_id")?
        .parse()
        .map_err(|_| TokenError::new(TokenErrorKind::InvalidClient, "unknown client_id"))?;
    match f.grant_type.as_deref() {
        Some("authorization_code") => Ok(TokenRequest::Code(CodeExchange {
            client_id,
            code: required(f.code, "code")?,
            redirect_uri: required(f.redirect_uri, "redirect_uri")?,
            // No verifier is never accepted: a code issued with a challenge cannot be downgraded.
            verifier: required(f.code_verifier, "code_verifier")?,
        })),
        Some("refresh_token") => {
            let scope = f
                .scope
                .map(|s| ScopeSet::parse(&s))
                .transpose()
                .map_err(|e| TokenError::new(TokenErrorKind::InvalidScope, e.message))?;
            Ok(TokenRequest::Refresh(Refresh { client_id, token: required(f.refresh_token, "refresh_token")?, scope }))
        }
        Some(_) => {
            Err(TokenError::new(TokenErrorKind::UnsupportedGrantType, "use authorization_code or refresh_token"))
        }
        None => Err(TokenError::request("grant_type is required")),
    }
}

/// The decision on a stored code. Checks that prove the presenter come first; only then does a
/// spent code count as a replay (which ends the family its exchange started).
pub fn decide_code(req: &CodeExchange, code: &CodeGrant, now: u64) -> Verdict<TokenError> {
    if code.app_id != req.client_id {
        return Verdict::Refuse(TokenError::grant("code was issued to another client"));
    }
    if code.redirect_uri != req.redirect_uri {
        return Verdict::Refuse(TokenError::grant("redirect_uri does not match the authorization request"));
    }
    if !verify_pkce(&req.verifier, &code.code_challenge) {
        return Verdict::Refuse(TokenError::grant("code_verifier does not match code_challenge"));
    }
    if code.spent {
        // A code used twice may have been stolen: everything issued from it goes (RFC 6749 4.1.2).
        return Verdict::Revoke(TokenError::grant("code already used; the tokens issued from it are revoked"));
    }
    if code.expires_at <= now {
        return Verdict::Refuse(TokenError::grant("code expired"));
    }
    if code.scopes.is_empty() {
        return Verdict::Refuse(TokenError::grant("code carries no scope"));
    }
    Verdict::Issue(code.scopes.clone())
}

/// The decision on a stored refresh token: each works once (rotation); a second use means two
/// parties hold it, so its family (that sign-in) is revoked. A narrower scope may be asked for, never a wider one,
/// and a request refused for its scope spends nothing.
pub fn decide_refresh(req: &Refresh, token: &RefreshGrant, now: u64) -> Verdict<TokenError> {
    if token.app_id != req.client_id {
        return Verdict::Refuse(TokenError::grant("refresh token was issued to another client"));
    }
    if token.spent {
        return Verdict::Revoke(TokenError::grant("refresh token already used; its sign-in is revoked"));
    }
    if token.expires_at <= now {
        return Verdict::Refuse(TokenError::grant("refresh token expired"));
    }
    match &req.scope {
        None => Verdict::Issue(token.scopes.clone()),
        Some(asked) if asked.is_empty() => {
            Verdict::Refuse(TokenError::new(TokenErrorKind::InvalidScope, "empty scope"))
        }
        Some(asked) if !token.scopes.covers_all(asked) => {
            Verdict::Refuse(TokenError::new(TokenErrorKind::InvalidScope, "a refresh cannot widen the grant"))
        }
        Some(asked) => Verdict::Issue(asked.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::{GrantId, UserId};

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn code(client: AppId) -> CodeGrant {
        CodeGrant {
            app_id: client,
            user_id: UserId::random(),
            grant_id: GrantId::random(),
            redirect_uri: "https://notes.example/cb".into(),
            code_challenge: CHALLENGE.into(),
            scopes: ScopeSet::parse("storage:read:notes").unwrap(),
            expires_at: 1_060,
            spent: false,
            family: None,
        }
    }

    fn exchange(client: AppId) -> CodeExchange {
        CodeExchange {
            client_id: client,
            code: "scc_x".into(),
            redirect_uri: "https://notes.example/cb".into(),
            verifier: VERIFIER.into(),
        }
    }

    fn refresh_row(client: AppId) -> RefreshGrant {
        RefreshGrant {
            user_id: UserId::random(),
            grant_id: GrantId::random(),
            app_id: client,
            family: "f".into(),
            scopes: ScopeSet::parse("storage:read:notes storage:write:notes").unwrap(),
            expires_at: 2_000,
            spent: false,
        }
    }

    fn is_issue(v: &Verdict<TokenError>) -> bool {
        matches!(v, Verdict::Issue(_))
    }
    fn refused(v: Verdict<TokenError>) -> Option<TokenError> {
        match v {
            Verdict::Refuse(e) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn a_good_exchange_issues_exactly_the_consented_scopes() {
        let client = AppId::random();
        match decide_code(&exchange(client), &code(client), 1_000) {
            Verdict::Issue(s) => assert_eq!(s.to_string(), "storage:read:notes"),
            _ => panic!("refused"),
        }
    }

    #[test]
    fn a_bad_exchange_spends_nothing_and_revokes_nothing_even_for_a_spent_code() {
        let client = AppId::random();
        let spent = CodeGrant { spent: true, ..code(client) };
        let cases: [(CodeExchange, &str); 3] = [
            (exchange(AppId::random()), "another client"),
            (CodeExchange { redirect_uri: "https://notes.example/other".into(), ..exchange(client) }, "redirect_uri"),
            (CodeExchange { verifier: VERIFIER.replace('k', "j"), ..exchange(client) }, "code_verifier"),
        ];
        for (req, why) in cases {
            for c in [code(client), spent.clone()] {
                let e = refused(decide_code(&req, &c, 1_000)).unwrap_or_else(|| panic!("{why}: not refused"));
                assert_eq!(e.kind, TokenErrorKind::InvalidGrant);
                assert!(e.description.contains(why), "{why}: {}", e.description);
            }
        }
    }

    #[test]
    fn a_replay_that_proves_the_verifier_ends_the_codes_sign_in() {
        let client = AppId::random();
        let spent = CodeGrant { spent: true, ..code(client) };
        assert!(matches!(decide_code(&exchange(client), &spent, 1_000), Verdict::Revoke(_)));
    }

    #[test]
    fn an_expired_code_is_refused() {
        let client = AppId::random();
        assert!(refused(decide_code(&exchange(client), &code(client), 1_060)).is_some());
        assert!(is_issue(&decide_code(&exchange(client), &code(client), 1_059)));
    }

    #[test]
    fn refresh_rotation_rules() {
        let client = AppId::random();
        let req = |scope: Option<&str>| Refresh {
            client_id: client,
            token: "scr_x".into(),
            scope: scope.map(|s| ScopeSet::parse(s).unwrap()),
        };
        let row = refresh_row(client);
        assert!(is_issue(&decide_refresh(&req(None), &row, 1_000)));
        match decide_refresh(&req(Some("storage:read:notes")), &row, 1_000) {
            Verdict::Issue(s) => assert_eq!(s.to_string(), "storage:read:notes"),
            _ => panic!("a narrower scope is allowed"),
        }
        // Widening is refused before anything is spent; so is another client or an expired token.
        let wider = refused(decide_refresh(&req(Some("storage:read:*")), &row, 1_000)).unwrap();
        assert_eq!(wider.kind, TokenErrorKind::InvalidScope);
        assert!(refused(decide_refresh(&Refresh { client_id: AppId::random(), ..req(None) }, &row, 1_000)).is_some());
        assert!(refused(decide_refresh(&req(None), &row, 2_000)).is_some());
        // A spent token presented by its client is a replay.
        let spent = RefreshGrant { spent: true, ..row.clone() };
        assert!(matches!(decide_refresh(&req(None), &spent, 1_000), Verdict::Revoke(_)));
        // ...but not when presented by another client, who proves nothing.
        let stranger = Refresh { client_id: AppId::random(), ..req(None) };
        assert!(refused(decide_refresh(&stranger, &spent, 1_000)).is_some());
    }

    #[test]
    fn malformed_requests_get_the_rfc_error() {
        let client = AppId::random().to_string();
        let form = |grant: Option<&str>, client_id: Option<&str>| TokenForm {
            grant_type: grant.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            code: Some("c".into()),
            redirect_uri: Some("https://notes.example/cb".into()),
            code_verifier: Some(VERIFIER.into()),
            refresh_token: Some("r".into()),
            scope: None,
        };
        let kind = |f: TokenForm| parse(f).unwrap_err().kind;
        assert_eq!(kind(form(Some("authorization_code"), None)), TokenErrorKind::InvalidRequest);
        assert_eq!(kind(form(Some("authorization_code"), Some("app_nope"))), TokenErrorKind::InvalidClient);
        assert_eq!(kind(form(None, Some(&client))), TokenErrorKind::InvalidRequest);
        assert_eq!(kind(form(Some("password"), Some(&client))), TokenErrorKind::UnsupportedGrantType);
        assert_eq!(
            kind(TokenForm { code_verifier: None, ..form(Some("authorization_code"), Some(&client)) }),
            TokenErrorKind::InvalidRequest
        );
        assert_eq!(
            kind(TokenForm { scope: Some("nonsense".into()), ..form(Some("refresh_token"), Some(&client)) }),
            TokenErrorKind::InvalidScope
        );
        assert!(matches!(parse(form(Some("refresh_token"), Some(&client))), Ok(TokenRequest::Refresh(_))));
    }
}
