//! Export and import over HTTP: an archive taken from one account restores exactly into a new
//! one, on either engine; a damaged, oversized, over-quota or misdirected import writes nothing.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use selfcloud_instance::{archive, EngineKind};
use serde_json::{json, Value};

/// Raw record bodies, each sent exactly as written.
const RECORDS: &[(&str, &str, &str)] = &[
    ("notes", "a", r#"{"text":"hello"}"#),
    ("notes", "b:c@d", "{\n  \"pretty\": [1, 2]\n}"),
    ("notes", "z", "null"),
    ("notes.work", "q", r#""é — ✓""#),
    ("photos", "p1", r#"{"jpg":"..."}"#),
];

async fn put_raw(s: &Server, token: &str, collection: &str, key: &str, body: &str) {
    let resp = s
        .http
        .put(s.url(&format!("/v1/storage/{collection}/{key}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn get_raw(s: &Server, token: &str, collection: &str, key: &str) -> (StatusCode, String) {
    let resp = s.http.get(s.url(&format!("/v1/storage/{collection}/{key}"))).bearer_auth(token).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn export(s: &Server, token: &str) -> Vec<u8> {
    let resp = s.http.get(s.url("/v1/export")).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"selfcloud-"));
    resp.bytes().await.unwrap().to_vec()
}

async fn import(s: &Server, token: &str, archive: Vec<u8>) -> (StatusCode, Value) {
    let resp = s
        .http
        .post(s.url("/v1/import"))
        .bearer_auth(token)
        .header("content-type", "application/x-tar")
        .body(archive)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn records_of(s: &Server, token: &str) -> u64 {
    s.call(Method::GET, "/v1/me", Some(token), None).await.2["storage"]["records"].as_u64().unwrap()
}

async fn ada_with_records(s: &Server) -> String {
    let ada = s.user("ada").await;
    for (collection, key, body) in RECORDS {
        put_raw(s, &ada, collection, key, body).await;
    }
    ada
}

#[tokio::test]
async fn an_export_restores_exactly_into_a_new_account_on_either_engine() {
    let from = Server::start().await;
    let ada = ada_with_records(&from).await;
    let bytes = export(&from, &ada).await;
    let (manifest, records) = archive::read(&bytes, 1 << 20).unwrap();
    assert_eq!((manifest.records, records.len()), (5, 5));
    assert_eq!(
        manifest.parts.iter().map(|p| p.collection.as_str()).collect::<Vec<_>>(),
        ["notes", "notes.work", "photos"]
    );
    assert!(!bytes.windows(5).any(|w| w == b"ins_0"), "no instance id is needed to restore");

    for engine in EngineKind::ALL {
        let into = Server::start_with(|c| c.store_engine = engine).await;
        let bob = into.user("bob").await;
        let (st, answer) = import(&into, &bob, bytes.clone()).await;
        assert_eq!(st, StatusCode::OK, "{engine}: {answer}");
        assert_eq!(answer["records"], 5);
        for (collection, key, body) in RECORDS {
            assert_eq!(get_raw(&into, &bob, collection, key).await, (StatusCode::OK, body.to_string()), "{engine}");
        }
        // A second export of the restored instance holds the same records.
        let again = archive::read(&export(&into, &bob).await, 1 << 20).unwrap().1;
        assert_eq!(again, records, "{engine}");
        let (_, _, me) = into.call(Method::GET, "/v1/me", Some(&bob), None).await;
        let (_, _, ada_me) = from.call(Method::GET, "/v1/me", Some(&ada), None).await;
        assert_eq!(me["storage"]["bytes"], ada_me["storage"]["bytes"]);
    }

    // The owner's export and import are in their access log.
    let (_, _, audit) = from.call(Method::GET, "/v1/audit", Some(&ada), None).await;
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["path"] == "/v1/export" && e["status"] == 200));
}

#[tokio::test]
async fn an_empty_instance_exports_a_manifest_only_archive() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (manifest, records) = archive::read(&export(&s, &ada).await, 1 << 20).unwrap();
    assert_eq!((manifest.records, manifest.parts.len(), records.len()), (0, 0, 0));
}

#[tokio::test]
async fn bad_imports_are_refused_clearly_and_write_nothing() {
    let s = Server::start_with(|c| {
        c.limits.quota_bytes = 10_000;
        c.limits.max_import_bytes = 64 * 1024;
    })
    .await;
    let ada = ada_with_records(&s).await;
    let good = export(&s, &ada).await;
    let bob = s.user("bob").await;

    // A byte changed inside a part (the tar layer still reads): the SHA-256 check refuses it.
    let at = good.windows(5).position(|w| w == b"hello").unwrap();
    let mut tampered = good.clone();
    tampered[at] = b'j';
    let (st, err) = import(&s, &bob, tampered).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert!(err["error"]["message"].as_str().unwrap().contains("SHA-256"), "{err}");
    // Cut short: the manifest, which comes last, is missing.
    let (st, err) = import(&s, &bob, good[..good.len() - 2048].to_vec()).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{err}");
    // Not an archive at all, or not sent as one.
    let (st, _) = import(&s, &bob, b"{\"records\": []}".to_vec()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, err) = s.call(Method::POST, "/v1/import", Some(&bob), Some(json!({"records": []}))).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    // Larger than the import limit.
    let (st, err) = import(&s, &bob, vec![0; 65 * 1024]).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    assert_eq!(records_of(&s, &bob).await, 0, "nothing half-imported");

    // Into an instance that holds records: a conflict, and Ada's data is unchanged.
    let (st, err) = import(&s, &ada, good.clone()).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(records_of(&s, &ada).await, 5);

    // Over the quota: the records fit the exporter's quota, not this instance's 60 bytes.
    let tight = Server::start_with(|c| c.limits.quota_bytes = 60).await;
    let erin = tight.user("erin").await;
    let (st, err) = import(&tight, &erin, good.clone()).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"), "{err}");
    assert_eq!(records_of(&tight, &erin).await, 0, "every record or none");

    // After all of that, the good archive still imports whole.
    let (st, answer) = import(&s, &bob, good).await;
    assert_eq!((st, answer["records"].as_u64()), (StatusCode::OK, Some(5)));
}
