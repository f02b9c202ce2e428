//! The protocol's decisions, with every input in the test's hands.

use super::*;
use selfcloud_core::UserId;

fn app() -> App {
    App {
        client_id: AppId::random(),
        owner_id: UserId::random(),
        name: "Notes".into(),
        redirect_uris: vec!["https://notes.example/cb".into()],
        scopes: ScopeSet::parse("storage:read:notes* llm:chat").unwrap(),
        created_at: 0,
        secret_hash: None,
    }
}

fn request(app: &App) -> AuthorizeParams {
    AuthorizeParams {
        response_type: Some("code".into()),
        client_id: Some(app.client_id.to_string()),
        redirect_uri: Some("https://notes.example/cb".into()),
        scope: Some("storage:read:notes llm:chat".into()),
        state: Some("xyz".into()),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        code_challenge_method: Some("S256".into()),
    }
}

#[test]
fn a_well_formed_request_passes() {
    let a = app();
    let ok = check_authorize(&request(&a), Some(a.clone())).unwrap();
    assert_eq!(ok.scopes.to_string(), "storage:read:notes llm:chat");
    assert_eq!(ok.state.as_deref(), Some("xyz"));
}

#[test]
fn untrusted_client_or_redirect_is_shown_never_redirected() {
    let a = app();
    for (tweak, with_app) in [
        (Box::new(|p: &mut AuthorizeParams| p.client_id = None) as Box<dyn Fn(&mut AuthorizeParams)>, true),
        (Box::new(|p: &mut AuthorizeParams| p.client_id = Some("not-an-id".into())), true),
        (Box::new(|_: &mut AuthorizeParams| {}), false),
        (Box::new(|p: &mut AuthorizeParams| p.redirect_uri = None), true),
        (Box::new(|p: &mut AuthorizeParams| p.redirect_uri = Some("https://notes.example/cb/".into())), true),
        (Box::new(|p: &mut AuthorizeParams| p.redirect_uri = Some("https://notes.example/cb?x=1".into())), true),
        (Box::new(|p: &mut AuthorizeParams| p.redirect_uri = Some("https://NOTES.example/cb".into())), true),
        (Box::new(|p: &mut AuthorizeParams| p.state = Some("a\nb".into())), true),
    ] {
        let mut p = request(&a);
        tweak(&mut p);
        let result = check_authorize(&p, with_app.then(|| a.clone()));
        assert!(matches!(result, Err(AuthorizeError::Show(_))), "{p:?}");
    }
}

#[test]
fn pkce_cannot_be_downgraded_or_skipped() {
    let a = app();
    for (method, challenge) in [
        (None, Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")),
        (Some("plain"), Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")),
        (Some("s256"), Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")),
        (Some("S256"), None),
        (Some("S256"), Some("too-short")),
        (Some("S256"), Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c!")),
    ] {
        let mut p = request(&a);
        p.code_challenge_method = method.map(str::to_owned);
        p.code_challenge = challenge.map(str::to_owned);
        match check_authorize(&p, Some(a.clone())) {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(error, "invalid_request");
                assert_eq!(state.as_deref(), Some("xyz"));
            }
            other => panic!("{method:?} {challenge:?}: {other:?}"),
        }
    }
}

#[test]
fn scopes_must_be_known_nonempty_and_registered() {
    let a = app();
    for scope in
        [None, Some(""), Some("storage:read:photos"), Some("storage:read:*"), Some("audit"), Some("llm:chat backup")]
    {
        let mut p = request(&a);
        p.scope = scope.map(str::to_owned);
        assert!(
            matches!(
                check_authorize(&p, Some(a.clone())),
                Err(AuthorizeError::Redirect { error: "invalid_scope", .. })
            ),
            "{scope:?}"
        );
    }
}

#[test]
fn the_verifier_must_hash_to_the_challenge() {
    // RFC 7636 appendix B.
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    assert!(verify_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", challenge));
    assert!(!verify_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj", challenge));
    assert!(!verify_pkce("", challenge));
    // The challenge itself is not a verifier (a client echoing it back proves nothing).
    assert!(!verify_pkce(challenge, challenge));
    assert!(!verify_pkce(&"a".repeat(129), challenge));
}

#[test]
fn redirect_uris_are_restricted() {
    for ok in [
        "https://notes.example/cb",
        "http://127.0.0.1:8080/cb",
        "http://localhost/cb",
        "http://[::1]/cb",
        "https://notes.example/cb?tenant=1",
    ] {
        assert!(validate_redirect_uri(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://notes.example/cb",
        "https://notes.example/cb#x",
        "https://user:pw@notes.example/cb",
        "javascript:alert(1)",
        "data:text/html,hi",
        "file:///etc/passwd",
        "notes/cb",
        "custom:/cb",
        "com.example.notes:/cb",
        "",
        // Smuggling: what the URL parser strips or rewrites never registers.
        "https://good.example/cb\nhttp://evil.example/steal",
        "https://good.example/cb\n",
        "https://good.example/c\tb",
        " https://good.example/cb",
        "https://good.example/cb\u{0}",
        "https://good.example",
        "https://GOOD.example/cb",
        "https://good.example/c b",
        "https://good.example/caf\u{e9}",
        "javascript://good.example/%0aalert(1)",
    ] {
        assert!(validate_redirect_uri(bad).is_err(), "{bad}");
    }
}

#[test]
fn redirects_keep_the_registered_query_and_add_ours() {
    let to = redirect_with("https://notes.example/cb?tenant=1", &[("code", "a b&c"), ("state", "s")]).unwrap();
    assert_eq!(to, "https://notes.example/cb?tenant=1&code=a+b%26c&state=s");
}

#[test]
fn csrf_tokens_differ_per_session() {
    assert_ne!(csrf_token(&[1; 32]), csrf_token(&[2; 32]));
    assert_eq!(csrf_token(&[1; 32]), csrf_token(&[1; 32]));
    assert_eq!(csrf_token(&[1; 32]).len(), 64);
}

#[test]
fn a_registered_uri_that_breaks_todays_rules_is_not_redirected_to() {
    // An app stored before the rules were strict, with a smuggled entry in its list.
    let mut a = app();
    a.redirect_uris.push("https://notes.example/cb\nhttp://evil.example/steal".into());
    a.redirect_uris.push(String::new());
    for uri in ["https://notes.example/cb\nhttp://evil.example/steal", ""] {
        let mut p = request(&a);
        p.redirect_uri = Some(uri.into());
        assert!(matches!(check_authorize(&p, Some(a.clone())), Err(AuthorizeError::Show(_))), "{uri:?}");
    }
}

#[test]
fn csrf_tokens_are_compared_whole() {
    let token = csrf_token(&[1; 32]);
    assert!(csrf_matches(Some(&token), &[1; 32]));
    assert!(!csrf_matches(Some(&token[..63]), &[1; 32]));
    assert!(!csrf_matches(Some(""), &[1; 32]));
    assert!(!csrf_matches(None, &[1; 32]));
    assert!(!csrf_matches(Some(&csrf_token(&[2; 32])), &[1; 32]));
}

#[test]
fn forms_are_taken_only_from_our_own_pages() {
    let issuer = "http://127.0.0.1:8420";
    let ours = |site, origin| sent_from_our_pages(site, origin, issuer);
    assert!(ours(Some("same-origin"), Some("http://127.0.0.1:8420")));
    assert!(ours(Some("none"), None));
    // An app's page on another port of the same host is same-site, and refused.
    assert!(!ours(Some("same-site"), Some("http://127.0.0.1:9000")));
    assert!(!ours(Some("cross-site"), Some("https://evil.example")));
    // A name rebound to this address is same-origin to the browser, not to us.
    assert!(!ours(Some("same-origin"), Some("http://attacker.example:8420")));
    // Older browsers: the Origin alone, which must be the issuer's, scheme included.
    assert!(ours(None, Some("http://127.0.0.1:8420")));
    assert!(!ours(None, Some("https://127.0.0.1:8420")));
    assert!(!ours(None, Some("http://127.0.0.1:9000")));
    assert!(!ours(None, Some("null")));
    // Not a browser at all.
    assert!(ours(None, None));
}

#[test]
fn a_consent_grants_the_ticked_boxes_and_what_the_app_held() {
    let set = |s: &str| ScopeSet::parse(s).unwrap();
    let asked = set("storage:read:notes storage:write:notes llm:chat");
    assert_eq!(granted_scopes(&asked, None, &set("")), asked, "no page, no boxes: the whole request");
    let ticked = set("storage:read:notes");
    assert_eq!(granted_scopes(&asked, Some(&ticked), &set("")), ticked);
    assert!(granted_scopes(&asked, Some(&set("")), &set("")).is_empty(), "every box unticked grants nothing");
    let held = set("llm:chat");
    assert_eq!(granted_scopes(&asked, Some(&set("")), &held), held, "what it held stays without a box");
    assert_eq!(granted_scopes(&asked, Some(&set("storage:write:*")), &set("")), set("storage:write:notes"));
}

#[test]
fn client_credentials_come_from_a_basic_header_and_must_match_the_client() {
    use super::token::{authenticate_client, basic_credentials, TokenErrorKind};
    use base64::Engine as _;
    let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app_x:s%3Acret"));
    assert_eq!(basic_credentials(Some(&header)).unwrap(), Some(("app_x".into(), "s:cret".into())));
    assert_eq!(basic_credentials(None).unwrap(), None);
    for bad in ["Bearer abc", "Basic !!!", "Basic YWJj"] {
        assert_eq!(basic_credentials(Some(bad)).unwrap_err().kind, TokenErrorKind::InvalidClient, "{bad}");
    }
    let hash = selfcloud_control::tokens::hash_token("sck_right");
    assert!(authenticate_client(Some(&hash), Some("sck_right")).is_ok());
    assert!(authenticate_client(Some(&hash), Some("sck_wrong")).is_err());
    assert!(authenticate_client(Some(&hash), None).is_err(), "a confidential client must authenticate");
    assert!(authenticate_client(None, Some("sck_right")).is_err(), "a public client has no secret");
    assert!(authenticate_client(None, None).is_ok());
}

#[test]
fn a_grant_lasts_the_days_chosen_or_until_revoked() {
    assert_eq!(grant_expiry(None, None, 1_000).unwrap(), None);
    assert_eq!(grant_expiry(Some(""), None, 1_000).unwrap(), None);
    assert_eq!(grant_expiry(Some("30"), None, 1_000).unwrap(), Some(1_000 + 30 * 86_400));
    // A grant the app holds keeps its end unless the user chose another, "until revoked" included.
    assert_eq!(grant_expiry(None, Some(5_000), 1_000).unwrap(), Some(5_000));
    assert_eq!(grant_expiry(Some("keep"), Some(5_000), 1_000).unwrap(), Some(5_000));
    assert_eq!(grant_expiry(Some(""), Some(5_000), 1_000).unwrap(), None);
    assert_eq!(grant_expiry(Some("1"), Some(5_000), 1_000).unwrap(), Some(1_000 + 86_400));
    // "Keep" what is gone (the grant ended or was revoked while the page was open): refused.
    assert!(grant_expiry(Some("keep"), None, 1_000).is_err());
    for bad in ["0", "-1", "3651", "soon", "1.5"] {
        assert!(grant_expiry(Some(bad), None, 1_000).is_err(), "{bad}");
    }
}
