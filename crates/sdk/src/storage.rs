//! The user's records: JSON values by collection and key, each write answering a new revision.

use crate::client::{check, read_json};
use crate::{Client, Error, Result};
use reqwest::header::{HeaderName, ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

/// One record as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    /// Changes on every write; pass it to [`Storage::put_if_match`] to update only what you read.
    pub rev: String,
    pub value: serde_json::Value,
}

/// One page of [`Storage::list`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub records: Vec<Record>,
    /// Where the next page starts; `None` on the last page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Storage calls with the client's access token; from [`Client::storage`].
#[derive(Clone, Copy, Debug)]
pub struct Storage<'a> {
    client: &'a Client,
}

#[derive(Deserialize)]
struct Written {
    rev: String,
}

impl<'a> Storage<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Storage { client }
    }

    /// Writes `value` under `key`, whatever is there; answers the new revision.
    pub async fn put<T: Serialize + ?Sized>(&self, collection: &str, key: &str, value: &T) -> Result<String> {
        self.write(collection, key, value, None).await
    }

    /// Writes only if the record's revision is still `rev` (else `precondition_failed`, 412),
    /// so a concurrent write is never silently overwritten.
    pub async fn put_if_match<T: Serialize + ?Sized>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
        rev: &str,
    ) -> Result<String> {
        let tag = format!("\"{rev}\"");
        self.write(collection, key, value, Some((IF_MATCH, tag))).await
    }

    /// Writes only if there is no record under `key` yet (else `precondition_failed`, 412).
    pub async fn put_if_absent<T: Serialize + ?Sized>(&self, collection: &str, key: &str, value: &T) -> Result<String> {
        self.write(collection, key, value, Some((IF_NONE_MATCH, "*".into()))).await
    }

    async fn write<T: Serialize + ?Sized>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
        precondition: Option<(HeaderName, String)>,
    ) -> Result<String> {
        let url = self.url(collection, Some(key))?;
        let response = self
            .client
            .send_authed(|http| {
                let request = http.put(url.clone()).json(value);
                match &precondition {
                    Some((name, value)) => request.header(name, value),
                    None => request,
                }
            })
            .await?;
        let written: Written = read_json(check(response).await?).await?;
        Ok(written.rev)
    }

    /// The record under `key`, or `None` when there is none.
    pub async fn get(&self, collection: &str, key: &str) -> Result<Option<Record>> {
        let url = self.url(collection, Some(key))?;
        let response = self.client.send_authed(|http| http.get(url.clone())).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check(response).await?;
        let rev = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"').to_owned())
            .ok_or_else(|| Error::Protocol("record answered without an ETag".into()))?;
        let value = read_json(response).await?;
        Ok(Some(Record { key: key.to_owned(), rev, value }))
    }

    /// Deletes the record under `key`.
    pub async fn delete(&self, collection: &str, key: &str) -> Result<()> {
        let url = self.url(collection, Some(key))?;
        check(self.client.send_authed(|http| http.delete(url.clone())).await?).await?;
        Ok(())
    }

    /// One page of the collection's records in key order, those whose key starts with `prefix`;
    /// pass the answered cursor back for the next page.
    pub async fn list(
        &self,
        collection: &str,
        prefix: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page> {
        let mut url = self.url(collection, None)?;
        let limit = limit.map(|n| n.to_string());
        let query: Vec<(&str, &str)> = [("prefix", prefix), ("limit", limit.as_deref()), ("cursor", cursor)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        read_json(check(self.client.send_authed(|http| http.get(url.clone())).await?).await?).await
    }

    /// `/v1/storage/{collection}[/{key}]`, refusing the names a URL cannot carry as one segment.
    fn url(&self, collection: &str, key: Option<&str>) -> Result<Url> {
        for (what, name) in [("collection", Some(collection)), ("key", key)] {
            if let Some(name @ ("" | "." | "..")) = name {
                return Err(Error::InvalidInput(format!("{what} {name:?} cannot be a path segment")));
            }
        }
        let mut segments = vec!["v1", "storage", collection];
        segments.extend(key);
        self.client.config().endpoint(&segments)
    }
}

#[cfg(test)]
mod tests {
    use crate::testserver::{response, serve};
    use crate::{AppConfig, Client, Error, Page, Record, TokenSet};
    use serde_json::json;

    fn client(base: url::Url) -> Client {
        let config = AppConfig { base_url: base, client_id: "app".into(), redirect_uri: "http://127.0.0.1/cb".into() };
        let tokens = TokenSet { access_token: "a1".into(), refresh_token: None, expires_in: 900, scope: String::new() };
        Client::with_tokens(config, tokens)
    }

    #[tokio::test]
    async fn put_sends_json_with_the_token() {
        let (base, seen) = serve(vec![
            response(200, &[], r#"{"rev":"r1"}"#),
            response(200, &[], r#"{"rev":"r2"}"#),
            response(200, &[], r#"{"rev":"r3"}"#),
        ]);
        let client = client(base);
        let value = json!({"text": "hi"});
        assert_eq!(client.storage().put("notes", "k:1@x", &value).await.unwrap(), "r1");
        assert_eq!(client.storage().put_if_match("notes", "k:1@x", &value, "r1").await.unwrap(), "r2");
        assert_eq!(client.storage().put_if_absent("notes", "new", &value).await.unwrap(), "r3");

        let seen: Vec<_> = seen.try_iter().collect();
        assert_eq!((seen[0].method.as_str(), seen[0].target.as_str()), ("PUT", "/v1/storage/notes/k:1@x"));
        assert_eq!(seen[0].header("authorization"), Some("Bearer a1"));
        assert_eq!(seen[0].header("content-type"), Some("application/json"));
        assert_eq!(seen[0].header("if-match"), None);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&seen[0].body).unwrap(), value);
        assert_eq!(seen[1].header("if-match"), Some("\"r1\""));
        assert_eq!((seen[2].header("if-none-match"), seen[2].header("if-match")), (Some("*"), None));
    }

    #[tokio::test]
    async fn get_reads_the_rev_from_the_etag_and_a_404_as_none() {
        let (base, seen) = serve(vec![
            response(200, &[("etag", "\"r7\"")], r#"{"text":"hi"}"#),
            response(404, &[], r#"{"error":{"code":"not_found","message":"no such record"}}"#),
        ]);
        let client = client(base);
        let record = client.storage().get("notes", "a b").await.unwrap();
        assert_eq!(record, Some(Record { key: "a b".into(), rev: "r7".into(), value: json!({"text": "hi"}) }));
        assert_eq!(client.storage().get("notes", "gone").await.unwrap(), None);
        assert_eq!(seen.recv().unwrap().target, "/v1/storage/notes/a%20b");
    }

    #[tokio::test]
    async fn a_401_without_a_refresh_token_is_answered_as_is() {
        let (base, seen) =
            serve(vec![response(401, &[], r#"{"error":{"code":"unauthenticated","message":"expired"}}"#)]);
        let err = client(base).storage().get("notes", "a").await.unwrap_err();
        assert_eq!((err.status(), err.code()), (Some(401), Some("unauthenticated")));
        assert_eq!(seen.try_iter().count(), 1);
    }

    #[tokio::test]
    async fn list_sends_only_the_given_params() {
        let page = json!({"records": [{"key": "a", "rev": "r1", "value": 1}], "cursor": "c2"});
        let (base, seen) =
            serve(vec![response(200, &[], &page.to_string()), response(200, &[], r#"{"records":[],"cursor":null}"#)]);
        let client = client(base);
        let got = client.storage().list("notes", Some("a"), Some(10), Some("c1")).await.unwrap();
        let want = Page {
            records: vec![Record { key: "a".into(), rev: "r1".into(), value: json!(1) }],
            cursor: Some("c2".into()),
        };
        assert_eq!(got, want);
        assert_eq!(client.storage().list("notes", None, None, None).await.unwrap().cursor, None);
        let seen: Vec<_> = seen.try_iter().map(|s| s.target).collect();
        assert_eq!(seen, ["/v1/storage/notes?prefix=a&limit=10&cursor=c1", "/v1/storage/notes"]);
    }

    #[tokio::test]
    async fn delete_and_errors() {
        let (base, seen) = serve(vec![
            response(204, &[], ""),
            response(429, &[("retry-after", "7")], r#"{"error":{"code":"rate_limited","message":"slow down"}}"#),
        ]);
        let client = client(base);
        client.storage().delete("notes", "a").await.unwrap();
        assert_eq!(seen.recv().unwrap().method, "DELETE");
        let err = client.storage().delete("notes", "a").await.unwrap_err();
        assert!(
            matches!(err, Error::Api { status: 429, retry_after: Some(7), ref code, .. } if code == "rate_limited")
        );
        // Names a URL would drop or merge are refused before sending.
        for key in ["", ".", ".."] {
            assert!(matches!(client.storage().get("notes", key).await, Err(Error::InvalidInput(_))), "{key:?}");
        }
    }
}
