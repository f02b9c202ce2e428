//! Tiers: every account starts free; the operator moves instances between tiers, which changes
//! their quota and rate limits at once. The operator API shows metadata, never contents.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use selfcloud_core::config::TierLimits;
use serde_json::{json, Value};

fn operator_token(s: &Server) -> String {
    std::fs::read_to_string(s.home.path().join(selfcloud_control::OPERATOR_TOKEN_FILE)).unwrap().trim().to_owned()
}

async fn small_tiers() -> Server {
    Server::start_with(|c| {
        c.limits.quota_bytes = 100;
        c.limits.rate_per_token = 3;
        c.limits.rate_burst = 3;
        c.limits.growth = TierLimits {
            quota_bytes: 1_000,
            rate_per_token: 1000,
            rate_burst: 1000,
            llm_app_tokens_per_day: 1000,
            llm_owner_tokens_per_day: 1000,
        };
        c.limits.pro = TierLimits {
            quota_bytes: 10_000,
            rate_per_token: 1000,
            rate_burst: 1000,
            llm_app_tokens_per_day: 1000,
            llm_owner_tokens_per_day: 1000,
        };
    })
    .await
}

#[tokio::test]
async fn tiers_set_quota_and_rate_and_the_operator_moves_them() {
    let s = small_tiers().await;
    let t = s.user("ada").await;
    let (_, _, me) = s.call(Method::GET, "/v1/me", Some(&t), None).await;
    assert_eq!((me["tier"].as_str(), me["storage"]["quota_bytes"].as_u64()), (Some("free"), Some(100)));
    let instance = me["instance"]["id"].as_str().unwrap().to_owned();

    // Free: 100 bytes. A 150-byte record is refused.
    let big = json!("x".repeat(150));
    let (st, _, err) = s.call(Method::PUT, "/v1/storage/n/big", Some(&t), Some(big.clone())).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"));

    // The operator lists instances (metadata only) and moves Ada to pro.
    let op = operator_token(&s);
    let (st, _, list) = s.call(Method::GET, "/v1/admin/instances", Some(&op), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["instances"][0]["id"], instance.as_str());
    assert_eq!(list["instances"][0]["tier"], "free");
    let (st, _, changed) = s
        .call(Method::PUT, &format!("/v1/admin/instances/{instance}/tier"), Some(&op), Some(json!({"tier": "pro"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{changed}");
    assert_eq!(changed["quota_bytes"], 10_000);

    // At once: the new quota admits the record, and the new rate admits a burst.
    assert_eq!(s.call(Method::PUT, "/v1/storage/n/big", Some(&t), Some(big)).await.0, StatusCode::OK);
    let (_, _, me) = s.call(Method::GET, "/v1/me", Some(&t), None).await;
    assert_eq!((me["tier"].as_str(), me["storage"]["quota_bytes"].as_u64()), (Some("pro"), Some(10_000)));
    for _ in 0..20 {
        assert_eq!(s.call(Method::GET, "/v1/storage/n/big", Some(&t), None).await.0, StatusCode::OK);
    }

    // Back to free: the rate limit bites again; data over the quota stays, growth is refused.
    s.call(Method::PUT, &format!("/v1/admin/instances/{instance}/tier"), Some(&op), Some(json!({"tier": "free"})))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(s.call(Method::GET, "/v1/storage/n/big", Some(&t), None).await.0);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
}

#[tokio::test]
async fn the_operator_api_refuses_everyone_else_and_bad_input() {
    let s = small_tiers().await;
    let t = s.user("ada").await;
    let (_, app) = s.app_token(&t, &["storage:read:notes"]).await;
    for token in [Some(t.as_str()), Some(app.access_token.as_str()), Some("sco_forged")] {
        let (st, _, err) = s.call(Method::GET, "/v1/admin/instances", token, None).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{token:?}");
    }
    let (st, _, _) = s.call(Method::GET, "/v1/admin/instances", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The operator token is not a user session: it opens no instance.
    let op = operator_token(&s);
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&op), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.call(Method::GET, "/v1/me", Some(&op), None).await.0, StatusCode::UNAUTHORIZED);

    let (_, _, list) = s.call(Method::GET, "/v1/admin/instances", Some(&op), None).await;
    let id = list["instances"][0]["id"].as_str().unwrap().to_owned();
    let body: Value = list["instances"][0].clone();
    assert!(body.get("storage").is_none() && !body.to_string().contains("notes"), "metadata only: {body}");
    for (path, tier) in [
        (format!("/v1/admin/instances/{id}/tier"), json!({"tier": "platinum"})),
        (format!("/v1/admin/instances/{id}/tier"), json!({"level": "pro"})),
    ] {
        assert_eq!(s.call(Method::PUT, &path, Some(&op), Some(tier)).await.0, StatusCode::BAD_REQUEST);
    }
    for path in
        ["/v1/admin/instances/ins_00000000000000000000000000000000/tier", "/v1/admin/instances/..%2F..%2Fx/tier"]
    {
        assert_eq!(s.call(Method::PUT, path, Some(&op), Some(json!({"tier": "pro"}))).await.0, StatusCode::NOT_FOUND);
    }
}
