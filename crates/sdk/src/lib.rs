//! Rust client for a selfcloud server, for app developers.
//!
//! An app gets a user's consent with the OAuth 2.1 authorization-code flow and PKCE
//! ([`AuthorizationRequest`], [`Client::exchange_code`]), then calls the user's instance with
//! the access token ([`Client::storage`], [`Client::get_json`]). The [`Client`] holds the tokens
//! and rotates them on refresh, so every call takes `&self` and one client can be shared.
//!
//! ```no_run
//! # async fn demo() -> selfcloud_sdk::Result<()> {
//! use selfcloud_sdk::{AppConfig, AuthorizationRequest, Client};
//!
//! let config = AppConfig {
//!     base_url: "http://127.0.0.1:8080".parse().unwrap(),
//!     client_id: "notes".into(),
//!     redirect_uri: "http://127.0.0.1:9000/callback".into(),
//! };
//! let request = AuthorizationRequest::new(&config, &["storage:write:notes"]);
//! // Send the user to `request.url()`; the server redirects back to the redirect URI.
//! # let location = String::new();
//! let code = request.finish(&location)?;
//! let client = Client::new(config);
//! client.exchange_code(&request, &code).await?;
//! let rev = client.storage().put("notes", "first", &serde_json::json!({"text": "hi"})).await?;
//! # let _ = rev;
//! # Ok(())
//! # }
//! ```

mod app;
mod auth;
mod client;
mod error;
mod storage;

#[cfg(test)]
mod testserver;

pub use app::{app_namespace, Ai, App, AppStorage, Session, TestUser};
pub use auth::{code_challenge, AppConfig, AuthorizationRequest};
pub use client::{Client, TokenSet};
pub use error::{Error, Result};
pub use reqwest::Method;
pub use storage::{Page, Record, Storage};
