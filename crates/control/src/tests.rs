//! Control's guarantees that cut across its modules, each with the moment of a race made
//! explicit instead of hoped for.

use crate::{Consent, Control, ControlConfig, TokenKind, TokenOutcome, Verdict};
use selfcloud_core::config::KdfParams;
use selfcloud_core::{ErrorCode, ScopeSet};
use std::sync::Arc;

const PASSWORD: &str = "correct horse battery";

fn control_with(tweak: impl FnOnce(&mut ControlConfig)) -> (tempfile::TempDir, Arc<Control>) {
    let home = tempfile::tempdir().unwrap();
    let mut config = ControlConfig::new(home.path().join("home"));
    config.kdf = KdfParams::INSECURE_FOR_TESTS;
    tweak(&mut config);
    let control = Control::open(config, 1_000).unwrap();
    (home, control)
}

#[tokio::test]
async fn a_log_in_checked_before_a_password_change_cannot_start_a_session_after_it() {
    let (_home, c) = control_with(|_| {});
    let account = c.sign_up("ada", PASSWORD, 1_000).await.unwrap();
    // The log-in checks the old password; the change lands before its session is inserted.
    let checked = c.log_in("ada", PASSWORD).await.unwrap();
    c.change_password(account.user_id, PASSWORD, "a new password", 1_001).await.unwrap();
    let late = c.create_session(&checked, TokenKind::Session, 1_002).await.unwrap_err();
    assert_eq!(late.code, ErrorCode::Unauthenticated);
    let web = c.create_session(&checked, TokenKind::Web, 1_002).await.unwrap_err();
    assert_eq!(web.code, ErrorCode::Unauthenticated);
    // Refused by the registry itself, not only by memory: no such session waits for a restart.
    let sessions = |c: &Control| c.registry.live_tokens(1_002).unwrap().iter().filter(|t| t.kind != "access").count();
    assert_eq!(sessions(&c), 1, "only the session the change itself started");
    // The same race against a recovery.
    let checked = c.log_in("ada", "a new password").await.unwrap();
    let code = c.recover("ada", &account.recovery_code, "another password", 1_003).await.unwrap();
    assert!(!code.recovery_code.is_empty());
    assert_eq!(
        c.create_session(&checked, TokenKind::Session, 1_004).await.unwrap_err().code,
        ErrorCode::Unauthenticated
    );
    // A log-in under the current password works, and survives a restart as the only kind there is.
    let fresh = c.log_in("ada", "another password").await.unwrap();
    let (token, _) = c.create_session(&fresh, TokenKind::Session, 1_005).await.unwrap();
    assert!(c.authenticate(&token, 1_006).is_some());
}

#[tokio::test]
async fn a_user_keeps_a_bounded_number_of_sessions() {
    let (_home, c) = control_with(|config| config.limits.sessions_per_user = 3);
    c.sign_up("ada", PASSWORD, 1_000).await.unwrap();
    let user = c.log_in("ada", PASSWORD).await.unwrap();
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(c.create_session(&user, TokenKind::Session, 1_000 + i).await.unwrap().0);
    }
    let live: Vec<bool> = tokens.iter().map(|t| c.authenticate(t, 1_010).is_some()).collect();
    assert_eq!(live, [false, false, true, true, true], "the oldest end first");
}

#[tokio::test]
async fn password_checks_queue_for_a_bounded_number_of_kdf_slots() {
    let (_home, c) = control_with(|config| {
        config.kdf_concurrency = 1;
        config.kdf_wait = std::time::Duration::from_millis(50);
    });
    c.sign_up("ada", PASSWORD, 1_000).await.unwrap();
    // Every slot is taken (by a derivation that takes long): the next check waits, then is told
    // to come back instead of adding another 19 MiB derivation.
    let held = c.kdf_slot().await.unwrap();
    let busy = c.log_in("ada", PASSWORD).await.unwrap_err();
    assert_eq!(busy.code, ErrorCode::Unavailable);
    assert!(busy.retry_after.is_some());
    assert_eq!(c.sign_up("bob", PASSWORD, 1_000).await.unwrap_err().code, ErrorCode::Unavailable);
    drop(held);
    assert!(c.log_in("ada", PASSWORD).await.is_ok());
}

async fn code_for(c: &Arc<Control>, user: selfcloud_core::UserId, app: &crate::App, scopes: &str) -> String {
    let consent = Consent {
        scopes: ScopeSet::parse(scopes).unwrap(),
        redirect_uri: "https://notes.example/cb".into(),
        code_challenge: "c".into(),
        token_budget: None,
        expires_at: None,
    };
    c.consent(user, app, consent, 1_000).await.unwrap().1
}

async fn notes_app(c: &Arc<Control>, owner: selfcloud_core::UserId, scopes: &str) -> crate::App {
    let app = crate::NewApp {
        id: selfcloud_core::AppId::random(),
        confidential: false,
        name: "Notes".into(),
        redirect_uris: vec!["https://notes.example/cb".into()],
        scopes: ScopeSet::parse(scopes).unwrap(),
    };
    c.register_app(owner, app, 1_000).await.unwrap().0
}

fn issue_all<R>(_: &R) -> Verdict<()> {
    Verdict::Issue(ScopeSet::parse("storage:read:notes").unwrap())
}

#[tokio::test]
async fn one_grant_per_app_gains_scopes_and_its_revocation_ends_every_token() {
    let (_home, c) = control_with(|_| {});
    let ada = c.sign_up("ada", PASSWORD, 1_000).await.unwrap().user_id;
    let app = notes_app(&c, ada, "storage:read:notes storage:write:notes").await;
    let mut access = Vec::new();
    for scopes in ["storage:read:notes", "storage:write:notes"] {
        let code = code_for(&c, ada, &app, scopes).await;
        let TokenOutcome::Issued(t) = c.redeem_code(&code, 1_000, issue_all).await.unwrap() else { panic!() };
        access.push(t.access);
    }
    let grants = c.grants(ada, 1_000_000).await.unwrap();
    assert_eq!(grants.len(), 1, "one grant however many consents");
    assert_eq!(grants[0].scopes.to_string(), "storage:read:notes storage:write:notes");
    c.revoke_grant(ada, grants[0].id, 1_001).await.unwrap();
    assert!(access.iter().all(|t| c.authenticate(t, 1_002).is_none()));
    assert!(c.grants(ada, 1_000_000).await.unwrap().is_empty());
    // Consenting again starts a new grant; the revoked one's fence does not touch it.
    let code = code_for(&c, ada, &app, "storage:read:notes").await;
    let TokenOutcome::Issued(t) = c.redeem_code(&code, 1_003, issue_all).await.unwrap() else { panic!() };
    assert!(c.authenticate(&t.access, 1_004).is_some());
    assert_ne!(c.grants(ada, 1_000_000).await.unwrap()[0].id, grants[0].id);
}

#[tokio::test]
async fn a_grant_keeps_a_bounded_number_of_sign_ins_and_a_refresh_supersedes_its_access_token() {
    let (_home, c) = control_with(|config| {
        config.limits.app_sessions_per_grant = 2;
        config.limits.spent_refresh_kept = 2;
    });
    let ada = c.sign_up("ada", PASSWORD, 1_000).await.unwrap().user_id;
    let app = notes_app(&c, ada, "storage:read:notes").await;
    let mut sign_ins = Vec::new();
    for _ in 0..3 {
        let code = code_for(&c, ada, &app, "storage:read:notes").await;
        let TokenOutcome::Issued(t) = c.redeem_code(&code, 1_000, issue_all).await.unwrap() else { panic!() };
        sign_ins.push(t);
    }
    assert!(c.authenticate(&sign_ins[0].access, 1_001).is_none(), "the oldest sign-in ended");
    assert!(c.authenticate(&sign_ins[2].access, 1_001).is_some());
    let refreshed = |token: &str| {
        let (c, token) = (c.clone(), token.to_owned());
        async move {
            match c.rotate_refresh(&token, 1_002, issue_all).await.unwrap() {
                TokenOutcome::Issued(t) => Some(t),
                _ => None,
            }
        }
    };
    assert!(refreshed(&sign_ins[0].refresh).await.is_none());
    // Rotation: the new access token supersedes the family's old one.
    let mut current = sign_ins[2].clone();
    let mut spent = Vec::new();
    for _ in 0..4 {
        let next = refreshed(&current.refresh).await.unwrap();
        assert!(c.authenticate(&current.access, 1_003).is_none(), "superseded");
        assert!(c.authenticate(&next.access, 1_003).is_some());
        spent.push(current.refresh.clone());
        current = next;
    }
    // The oldest spent tokens are forgotten (presenting one is refused, nothing more); a recent
    // one is still recognised as a replay and ends its family, not the grant's other sign-ins.
    let revoke = |_: &crate::RefreshGrant| Verdict::Revoke(());
    assert!(matches!(c.rotate_refresh(&spent[0], 1_004, revoke).await.unwrap(), TokenOutcome::Unknown));
    assert!(c.authenticate(&current.access, 1_004).is_some());
    assert!(matches!(c.rotate_refresh(&spent[3], 1_004, revoke).await.unwrap(), TokenOutcome::Revoked(())));
    assert!(c.authenticate(&current.access, 1_005).is_none());
    assert!(refreshed(&current.refresh).await.is_none(), "the family's live refresh token ended too");
    assert!(c.authenticate(&sign_ins[1].access, 1_005).is_some(), "another sign-in of the grant");
    assert_eq!(c.grants(ada, 1_000_000).await.unwrap().len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn the_home_is_private_and_so_is_every_file_control_writes() {
    use std::os::unix::fs::PermissionsExt;
    let (home, c) = control_with(|_| {});
    c.sign_up("ada", PASSWORD, 1_000).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = home.path().join("home");
    assert_eq!(mode(&root), 0o700);
    for name in ["control.db", "control.db-wal", "node.key", "operator.token"] {
        let path = root.join(name);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    // A home that was left open is closed again on start.
    drop(c);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = ControlConfig::new(&root);
    config.kdf = KdfParams::INSECURE_FOR_TESTS;
    drop(Control::open(config, 1_000).unwrap());
    assert_eq!(mode(&root), 0o700);
}

/// Awake instances stay within the memory budget by their tiers' limits: a wake past it
/// hibernates the least recently used idle instance, and when every awake one is in use it is
/// refused with 503 and a wait, until one is free again.
#[tokio::test]
async fn awake_instances_stay_within_the_memory_budget() {
    use crate::RunState;
    const MIB: u64 = 1 << 20;
    let (_home, c) = control_with(|config| {
        config.limits.resources.free.memory_bytes = 100 * MIB;
        config.instance_memory_bytes = Some(250 * MIB);
    });
    let mut ids = Vec::new();
    for name in ["ada", "bob", "cyd"] {
        ids.push(c.sign_up(name, PASSWORD, 1_000).await.unwrap().instance_id);
    }
    let state = |c: &Control, i: usize| c.run_status(ids[i]).state;
    // Two fit; the third's wake hibernates the least recently used.
    drop(c.instance(ids[0]).await.unwrap());
    drop(c.instance(ids[1]).await.unwrap());
    drop(c.instance(ids[2]).await.unwrap());
    let running = (0..3).filter(|i| state(&c, *i) == RunState::Running).count();
    assert_eq!(running, 2, "{:?}", (0..3).map(|i| state(&c, i)).collect::<Vec<_>>());
    assert_eq!(state(&c, 0), RunState::Hibernated, "the least recently used made room");
    // With both awake ones in use, a third is refused, and nothing in use is stopped.
    let held = (c.instance(ids[1]).await.unwrap(), c.instance(ids[2]).await.unwrap());
    let Err(refused) = c.instance(ids[0]).await else { panic!("a wake past the budget was admitted") };
    assert_eq!(refused.code, ErrorCode::Unavailable, "{}", refused.message);
    assert!(refused.retry_after.is_some());
    assert_eq!((state(&c, 1), state(&c, 2)), (RunState::Running, RunState::Running));
    assert_eq!(c.runtime_summary().refused_for_memory, 1);
    // Once one is free, the wake goes through in its place.
    let evicted = c.runtime_summary().evicted_for_memory;
    drop(held.0);
    c.instance(ids[0]).await.unwrap();
    assert_eq!(
        (state(&c, 0), state(&c, 1), state(&c, 2)),
        (RunState::Running, RunState::Hibernated, RunState::Running)
    );
    assert_eq!(c.runtime_summary().evicted_for_memory, evicted + 1);
}
