//! Every change to an account is in its owner's access log beside the forwarded calls: an app
//! registered and deleted, a grant revoked, a password changed, a recovery, and each token
//! exchange (as the app it was for).

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn every_state_change_is_in_the_owners_access_log() {
    let s = Server::start().await;
    let signed_up = s.sign_up("ada").await;
    let ada = s.log_in("ada").await;

    // An app's sign-in (a code exchange) and a refresh: two token exchanges, as that app.
    let (client_id, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
    let refresh = tokens.refresh_token.unwrap();
    let form =
        [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", client_id.as_str())];
    assert_eq!(s.token_form(&form).await.0, StatusCode::OK);
    // Her own app, registered and deleted.
    let body = json!({"name": "Mine", "redirect_uris": ["http://127.0.0.1:9/cb"], "scopes": ["storage:read:notes"]});
    let (st, _, app) = s.call(Method::POST, "/v1/apps", Some(&ada), Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{app}");
    let own_app = app["client_id"].as_str().unwrap().to_owned();
    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/apps/{own_app}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // The other app's grant, revoked.
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).cloned();
    let grant = grant.unwrap()["id"].as_str().unwrap().to_owned();
    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/grants/{grant}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // A password change, then a recovery.
    let change = json!({"password": PASSWORD, "new_password": "a new password"});
    let (st, _, body) = s.call(Method::PUT, "/v1/accounts/me/password", Some(&ada), Some(change)).await;
    assert!(st.is_success(), "{body}");
    let code = signed_up["recovery_code"].as_str().unwrap();
    let recover = json!({"username": "ada", "recovery_code": code, "new_password": "a third password"});
    let (st, _, recovered) = s.call(Method::POST, "/v1/accounts/recover", None, Some(recover)).await;
    assert_eq!(st, StatusCode::OK, "{recovered}");
    let owner = recovered["token"].as_str().unwrap();

    let (st, _, log) = s.call(Method::GET, "/v1/audit", Some(owner), None).await;
    assert_eq!(st, StatusCode::OK, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let find = |method: &str, path: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["method"] == method && e["path"] == path).collect()
    };
    let exchanges = find("POST", "/oauth/token");
    assert_eq!(exchanges.len(), 2, "a code exchange and a refresh: {log}");
    assert!(exchanges.iter().all(|e| e["actor"]["kind"] == "app" && e["actor"]["client_id"] == client_id.as_str()));
    for (method, path, status) in [
        ("POST", "/v1/apps".to_owned(), 201),
        ("DELETE", format!("/v1/apps/{own_app}"), 204),
        ("DELETE", format!("/v1/grants/{grant}"), 204),
        ("POST", "/v1/accounts/recover".to_owned(), 200),
    ] {
        let found = find(method, &path);
        assert_eq!(found.len(), 1, "{method} {path} in {log}");
        assert_eq!((found[0]["status"].as_u64(), &found[0]["actor"]["kind"]), (Some(status), &json!("owner")));
    }
    assert_eq!(find("PUT", "/v1/accounts/me/password").len(), 1, "{log}");
    // Someone else's refused recovery is in nobody's log.
    let wrong = json!({"username": "ada", "recovery_code": code, "new_password": "a fourth password"});
    assert_eq!(s.call(Method::POST, "/v1/accounts/recover", None, Some(wrong)).await.0, StatusCode::UNAUTHORIZED);
    let (_, _, log) = s.call(Method::GET, "/v1/audit", Some(owner), None).await;
    assert_eq!(log["entries"].as_array().unwrap().iter().filter(|e| e["path"] == "/v1/accounts/recover").count(), 1);
}
