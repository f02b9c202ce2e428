//! The service called as the gateway calls it, in process: the context is required and checked,
//! and what only a store written behind the API's back can hold is still served.

use super::*;
use crate::protocol::Actor;
use crate::{DataKey, EngineKind};
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use selfcloud_core::{Collection, InstanceId, RecordKey, ScopeSet};
use selfcloud_store::Precondition;
use tower::ServiceExt;

fn instance(dir: &std::path::Path) -> (Router, Arc<()>, InstanceId) {
    let id = InstanceId::random();
    let key = DataKey::generate();
    let settings = Settings::new(id, &selfcloud_core::config::Limits::default(), 1 << 30);
    crate::create(&settings, dir, &key, EngineKind::Sqlite).unwrap();
    let local = Local::open(id, dir, &key, selfcloud_store::StoreOptions { quota_bytes: 1 << 30 }).unwrap();
    (router(local, settings), Arc::new(()), id)
}

async fn call(router: &Router, ctx: Option<&CallContext>, method: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ctx) = ctx {
        req = req.header(CONTEXT_HEADER, ctx.encode());
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn owner() -> CallContext {
    CallContext::new(Actor::Owner, &ScopeSet::default(), None, 0, 5_000)
}

#[tokio::test]
async fn every_call_needs_its_context_and_the_access_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _, _) = instance(dir.path());
    assert_eq!(call(&router, None, "GET", "/v1/storage/notes").await.0, StatusCode::BAD_REQUEST);
    let app = CallContext::new(
        Actor::App { client_id: "app_1".into(), name: "n".into(), grant_id: "grt_1".into() },
        &ScopeSet::parse("storage:read:notes").unwrap(),
        None,
        0,
        5_000,
    );
    assert_eq!(call(&router, Some(&app), "GET", "/v1/storage/notes").await.0, StatusCode::OK);
    assert_eq!(call(&router, Some(&app), "GET", "/v1/storage/todo").await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&router, Some(&app), "DELETE", "/v1/storage/notes/a").await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&router, Some(&app), "GET", "/v1/export").await.0, StatusCode::FORBIDDEN);
    // Control's calls exist for control alone; the owner reads no data as control either.
    assert_eq!(call(&router, Some(&app), "GET", "/system/usage").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&router, Some(&owner()), "GET", "/system/usage").await.0, StatusCode::NOT_FOUND);
    let system = CallContext::system(0, 5_000);
    assert_eq!(call(&router, Some(&system), "GET", "/system/usage").await.0, StatusCode::OK);
    assert_eq!(call(&router, Some(&system), "GET", "/v1/storage/notes").await.0, StatusCode::FORBIDDEN);
    // A forged header is an error, not an owner.
    let mut req = Request::builder().uri("/v1/storage/notes").header(CONTEXT_HEADER, "eyJ2IjoxfQ");
    req = req.method("GET");
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_damaged_value_on_disk_breaks_no_list_or_export() {
    let dir = tempfile::tempdir().unwrap();
    let id = InstanceId::random();
    let key = DataKey::generate();
    let settings = Settings::new(id, &selfcloud_core::config::Limits::default(), 1 << 30);
    crate::create(&settings, dir.path(), &key, EngineKind::Sqlite).unwrap();
    let options = selfcloud_store::StoreOptions { quota_bytes: 1 << 30 };
    let local = Local::open(id, dir.path(), &key, options).unwrap();
    // Written behind the API's back (as before values were checked): invalid UTF-8 in a string.
    let (c, k) = (Collection::parse("notes").unwrap(), RecordKey::parse("old").unwrap());
    local.put_record(&c, &k, b"{\"t\":\"caf\xff\"}".to_vec(), Precondition::None).await.unwrap();
    local
        .put_record(&c, &RecordKey::parse("ok").unwrap(), br#"{"t":"fine"}"#.to_vec(), Precondition::None)
        .await
        .unwrap();
    let router = router(local, settings);
    let (status, body) = call(&router, Some(&owner()), "GET", "/v1/storage/notes").await;
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let value =
        |key: &str| page["records"].as_array().unwrap().iter().find(|r| r["key"] == key).unwrap()["value"].clone();
    assert_eq!(value("old")["t"], "caf\u{fffd}");
    assert_eq!(value("ok")["t"], "fine");
    let (status, archive) = call(&router, Some(&owner()), "GET", "/v1/export").await;
    assert_eq!(status, StatusCode::OK);
    let (manifest, records) = crate::archive::read(&archive, 1 << 20).unwrap();
    assert_eq!(manifest.records, 2, "the export runs to its end");
    assert_eq!(records.len(), 2);
}

/// A declared path with sample parameters: a collection and key an app holds no scope for.
fn sample_path(route: &Route) -> String {
    route.path.replace("{collection}", "notes").replace("{key}", "secret").replace("{id}", "x")
}

#[tokio::test]
async fn every_declared_route_is_served_behind_the_access_it_declares() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _, _) = instance(dir.path());
    let stranger = CallContext::new(
        Actor::App { client_id: "app_1".into(), name: "n".into(), grant_id: "grt_1".into() },
        &ScopeSet::parse("storage:read:other chain:read").unwrap(),
        None,
        0,
        5_000,
    );
    let routes: Vec<&Route> = served().collect();
    assert!(routes.len() >= 20, "{routes:?}");
    for route in routes {
        let path = sample_path(route);
        let method = route.method.as_str();
        // No context, no call.
        assert_eq!(call(&router, None, method, &path).await.0, StatusCode::BAD_REQUEST, "{route:?}");
        // An app without the scope is refused before the handler runs; control's routes do not
        // exist for it, nor for the owner.
        let (status, body) = call(&router, Some(&stranger), method, &path).await;
        let refused = if route.is_public() { StatusCode::FORBIDDEN } else { StatusCode::NOT_FOUND };
        assert_eq!(status, refused, "{route:?}: {}", String::from_utf8_lossy(&body));
        if !route.is_public() {
            assert_eq!(call(&router, Some(&owner()), method, &path).await.0, StatusCode::NOT_FOUND, "{route:?}");
            continue;
        }
        // The owner reaches its handler: whatever it answers, it is not the router's own refusal.
        let (status, body) = call(&router, Some(&owner()), method, &path).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such endpoint"),
            "{route:?}: {status} {text}"
        );
    }
}
