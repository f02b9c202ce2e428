//! Every route the instance's parts declare, attacked: read from the declarations themselves
//! (`selfcloud_instance::service::PARTS`), so a route added to a part is attacked here without
//! anyone listing it. Missing, forged, expired and revoked tokens, an app without the route's
//! scope, and another user with every power over their own instance: none reaches the route,
//! or another user's data. And what is declared is what the gateway serves and documents.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use selfcloud_instance::part::Route;
use selfcloud_instance::service::PARTS;
use serde_json::{json, Value};

/// The routes the gateway forwards: every declared one but control's own.
fn declared() -> Vec<&'static Route> {
    let routes: Vec<&Route> = PARTS.iter().flat_map(|p| p.routes.iter()).filter(|r| r.is_public()).collect();
    // Storage, export and import, the access log, the LLM and the assistant.
    assert!(routes.len() >= 20, "{routes:?}");
    routes
}

fn method(route: &Route) -> Method {
    Method::from_bytes(route.method.as_str().as_bytes()).unwrap()
}

/// The route's path with `id` for its `{id}`, on Ada's secret note, and a body where it takes one.
fn call_of(route: &Route, id: &str) -> (Method, String, Option<Value>) {
    let path = route.path.replace("{collection}", "notes").replace("{key}", "secret").replace("{id}", id);
    // A body each route takes, so its success is reached where the instance can give one.
    let body = match (route.body, route.path) {
        (selfcloud_instance::part::Body::None, _) => None,
        (_, "/v1/assistant/memories") => Some(json!({"text": "planted"})),
        (_, "/v1/assistant/settings") => Some(json!({"collections": ["notes"]})),
        (_, "/v1/assistant/chat") => Some(json!({"message": "hi"})),
        (_, p) if p.starts_with("/v1/llm/") => {
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "input": "hi"}))
        }
        _ => Some(json!({"pwned": true})),
    };
    (method(route), path, body)
}

#[tokio::test]
async fn no_declared_route_opens_to_a_missing_forged_expired_or_revoked_token() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;
    let mut forged = ada.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let all = ["storage:read:notes", "storage:write:notes", "llm:chat", "llm:embed"];
    let (_, revoked) = s.app_token(&ada, &all).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s.call(Method::DELETE, &format!("/v1/grants/{grant}"), Some(&ada), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, expiring) = s.app_token(&ada, &all).await;
    let refused = |token: Option<&str>| (token.map(str::to_owned), StatusCode::UNAUTHORIZED);
    for route in declared() {
        let (method, path, body) = call_of(route, "x");
        let revoked = revoked.access_token.as_str();
        for (token, status) in
            [None, Some(forged.as_str()), Some("scs_"), Some(""), Some("Basic YWRhOnB3"), Some(revoked)].map(refused)
        {
            let (st, _, err) = s.call(method.clone(), &path, token.as_deref(), body.clone()).await;
            assert_eq!((st, Server::error_code(&err)), (status, "unauthenticated"), "{route:?} with {token:?}");
        }
    }
    // Access tokens live an hour.
    s.clock.advance(3601);
    for route in declared() {
        let (method, path, body) = call_of(route, "x");
        let (st, _, err) = s.call(method, &path, Some(&expiring.access_token), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::UNAUTHORIZED, "unauthenticated"), "{route:?}");
    }
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/secret", Some(&ada), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"text": "ada's secret"})));
}

#[tokio::test]
async fn no_declared_route_opens_to_an_app_without_its_scope_and_each_refusal_is_logged() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;
    // Scopes of everything but what any declared route on `notes` or the LLM needs.
    let (_, app) = s.app_token(&ada, &["storage:read:photos", "storage:write:photos", "profile:read"]).await;
    let routes = declared();
    for route in &routes {
        let (method, path, body) = call_of(route, "x");
        let (st, _, err) = s.call(method, &path, Some(&app.access_token), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{route:?}: {err}");
    }
    let (_, _, log) = s.call(Method::GET, "/v1/audit?limit=1000", Some(&ada), None).await;
    let refused =
        log["entries"].as_array().unwrap().iter().filter(|e| e["actor"]["kind"] == "app" && e["status"] == 403).count();
    assert_eq!(refused, routes.len(), "{log}");
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/secret", Some(&ada), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"text": "ada's secret"})));
}

/// What Ada keeps, as she reads it: her note, her memories, the assistant's settings.
async fn adas_data(s: &Server, ada: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in ["/v1/storage/notes/secret", "/v1/storage/notes", "/v1/assistant/memories", "/v1/assistant/settings"] {
        let (st, _, v) = s.call(Method::GET, path, Some(ada), None).await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        seen.push(v);
    }
    seen
}

#[tokio::test]
async fn another_user_with_every_power_over_their_own_instance_reaches_nothing_of_adas() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let bob = s.user("bob").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;
    let (st, _, memory) =
        s.call(Method::POST, "/v1/assistant/memories", Some(&ada), Some(json!({"text": "ada's memory"}))).await;
    assert_eq!(st, StatusCode::CREATED, "{memory}");
    let memory_id = memory["id"].as_str().unwrap().to_owned();
    let (st, _, _) =
        s.call(Method::PUT, "/v1/assistant/settings", Some(&ada), Some(json!({"collections": ["notes"]}))).await;
    assert_eq!(st, StatusCode::OK);
    let before = adas_data(&s, &ada).await;

    // Bob, as owner and through an app holding every scope, calls every declared route with
    // the names of Ada's things (her note's key, her memory's id).
    let (_, bob_app) = s.app_token(&bob, &["storage:read:notes", "storage:write:notes", "llm:chat", "llm:embed"]).await;
    for route in declared() {
        let (method, path, body) = call_of(route, &memory_id);
        for token in [bob.as_str(), bob_app.access_token.as_str()] {
            let (_, _, answer) = s.call(method.clone(), &path, Some(token), body.clone()).await;
            assert!(!answer.to_string().contains("ada's"), "{route:?} showed Bob Ada's data: {answer}");
        }
    }
    assert_eq!(adas_data(&s, &ada).await, before, "Bob's calls changed nothing of Ada's");
    let (_, _, log) = s.call(Method::GET, "/v1/audit?limit=1000", Some(&ada), None).await;
    let actors: Vec<&Value> = log["entries"].as_array().unwrap().iter().map(|e| &e["actor"]).collect();
    assert!(actors.iter().all(|a| a["kind"] == "owner"), "Ada's log holds only her own calls: {log}");
}

#[tokio::test]
async fn the_gateway_serves_and_documents_exactly_what_the_parts_declare() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let doc: Value = s.http.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for route in declared() {
        let operation = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert!(operation.is_object(), "{route:?} is not in the OpenAPI document");
        assert!(operation["responses"]["401"].is_object(), "{route:?}: {operation}");
        assert!(operation["operationId"].is_string(), "{route:?}: {operation}");
        // The owner reaches the instance's handler: whatever it answers, it is not a refusal of
        // the gateway's router or the instance's.
        let (method, path, body) = call_of(route, "x");
        let (st, _, answer) = s.call(method, &path, Some(&ada), body).await;
        assert!(
            st != StatusCode::METHOD_NOT_ALLOWED && answer["error"]["message"] != "no such endpoint",
            "{route:?} is not served: {st} {answer}"
        );
        // A success answers with a status the document names.
        if st.is_success() {
            assert!(
                operation["responses"][st.as_str()].is_object(),
                "{route:?} answered {st}, undocumented: {operation}"
            );
        }
    }
    // Control's routes are neither served nor documented.
    for path in ["/system/usage", "/system/audit", "/system/probe"] {
        assert!(doc["paths"][path].is_null(), "{path} is documented");
        assert_eq!(s.call(Method::POST, path, Some(&ada), Some(json!({}))).await.0, StatusCode::NOT_FOUND);
    }
    let instance_paths: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|p| p.starts_with("/v1/storage") || p.starts_with("/v1/llm") || p.starts_with("/v1/assistant"))
        .collect();
    let declared_paths: std::collections::BTreeSet<&str> = declared().iter().map(|r| r.path).collect();
    assert!(instance_paths.iter().all(|p| declared_paths.contains(p.as_str())), "{instance_paths:?}");
}
