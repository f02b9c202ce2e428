//! An S3-compatible bucket (AWS S3, MinIO, Garage, Cloudflare R2, ...). Each request is signed
//! here with the user's key (SigV4 presigning by rusty-s3, which does no I/O) and sent by a
//! [`Transport`]: an instance sends it on its egress channel, so the key leaves it only inside a
//! signature that expires.

use super::{check_name, Target, Transport, KINDS};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use selfcloud_core::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a signed request stays good: long enough to cross a slow link, short enough that
/// one seen on the way is soon worthless.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// The most names one list may hold (a million packs: 4 TiB of backup).
const MAX_LISTED: usize = 1 << 20;
/// The longest prefix a bucket's objects may be kept under.
const MAX_PREFIX_CHARS: usize = 200;

/// Where a bucket is and how to reach it, as the owner gives it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's base URL, e.g. `https://s3.eu-west-1.amazonaws.com` (https; http on loopback only).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Objects are kept under this prefix (`selfcloud/` by default): one bucket may hold more.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`; most
    /// self-hosted services want it (the default).
    #[serde(default = "yes")]
    pub path_style: bool,
}

fn default_prefix() -> String {
    "selfcloud/".into()
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Config({} {} {}, key withheld)", self.endpoint, self.bucket, self.region)
    }
}

impl S3Config {
    /// What the owner may see again: everything but the secret.
    pub fn shown(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint, "bucket": self.bucket, "region": self.region,
            "access_key_id": self.access_key_id, "prefix": self.prefix, "path_style": self.path_style,
        })
    }
}

/// A bucket on the far side of a [`Transport`].
pub struct S3Target<T> {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    transport: T,
}

impl<T: Transport> S3Target<T> {
    /// Checks the configuration (a URL, a bucket name, a prefix of plain path segments).
    pub fn new(config: &S3Config, transport: T) -> Result<S3Target<T>> {
        let endpoint: url::Url =
            config.endpoint.trim_end_matches('/').parse().map_err(|e| Error::invalid(format!("endpoint: {e}")))?;
        let loopback = matches!(endpoint.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
            || matches!(endpoint.host(), Some(url::Host::Ipv6(a)) if a.is_loopback())
            || endpoint.host_str() == Some("localhost");
        // Signed requests stay good for minutes: never in the clear off this machine.
        let secure = endpoint.scheme() == "https" || (endpoint.scheme() == "http" && loopback);
        if !secure || endpoint.query().is_some() {
            return Err(Error::invalid("endpoint: an https URL (http on loopback only) with no query"));
        }
        let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain(&config.bucket) || !plain(&config.region) {
            return Err(Error::invalid("bucket and region: letters, digits, '-', '_' and '.'"));
        }
        let prefix = config.prefix.trim_start_matches('/');
        if prefix.len() > MAX_PREFIX_CHARS
            || !(prefix.is_empty() || prefix.ends_with('/'))
            || !prefix.split('/').all(|s| s.is_empty() || plain(s))
        {
            return Err(Error::invalid("prefix: path segments of letters, digits, '-', '_' and '.', ending in '/'"));
        }
        if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
            return Err(Error::invalid("access_key_id and secret_access_key are both needed"));
        }
        let style = if config.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, config.bucket.clone(), config.region.clone())
            .map_err(|e| Error::invalid(format!("the bucket: {e}")))?;
        let credentials = Credentials::new(config.access_key_id.clone(), config.secret_access_key.clone());
        Ok(S3Target { bucket, credentials, prefix: prefix.to_owned(), transport })
    }

    async fn send(&self, method: Method, url: url::Url, body: Bytes) -> Result<(StatusCode, Bytes)> {
        let request = Request::builder().method(method).uri(url.as_str()).body(body).map_err(Error::internal)?;
        let answer = self.transport.send(request).await?;
        Ok((answer.status(), answer.into_body()))
    }

    fn failed(&self, what: &str, status: StatusCode, body: &[u8]) -> Error {
        // The service's own words first (an error body of ours if control refused it).
        if let Some(e) = Error::from_body(body, None) {
            return e;
        }
        let text = String::from_utf8_lossy(body);
        let code = text.split("<Code>").nth(1).and_then(|s| s.split("</Code>").next()).unwrap_or("");
        Error::new(ErrorCode::UpstreamFailed, format!("the S3 target refused to {what}: {status} {code}"))
    }
}

#[async_trait]
impl<T: Transport> Target for S3Target<T> {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        check_name(name)?;
        let key = format!("{}{name}", self.prefix);
        let url = rusty_s3::actions::PutObject::new(&self.bucket, Some(&self.credentials), &key).sign(SIGNED_FOR);
        let (status, body) = self.send(Method::PUT, url, bytes.into()).await?;
        if !status.is_success() {
            return Err(self.failed("store an object", status, &body));
        }
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let key = format!("{}{name}", self.prefix);
        let url = rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.credentials), &key).sign(SIGNED_FOR);
        let (status, body) = self.send(Method::GET, url, Bytes::new()).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(body.to_vec())),
            s => Err(self.failed("read an object", s, &body)),
        }
    }

    async fn list(&self, kind: &str) -> Result<Vec<String>> {
        if !KINDS.contains(&kind) {
            return Err(Error::internal(format!("not a backup object kind: {kind:?}")));
        }
        let prefix = format!("{}{kind}/", self.prefix);
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = rusty_s3::actions::ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            list.with_prefix(prefix.as_str());
            if let Some(t) = &token {
                list.with_continuation_token(t.as_str());
            }
            let url = list.sign(SIGNED_FOR);
            let (status, body) = self.send(Method::GET, url, Bytes::new()).await?;
            if !status.is_success() {
                return Err(self.failed("list objects", status, &body));
            }
            let text = std::str::from_utf8(&body).map_err(|_| self.failed("list objects", status, b""))?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(text)
                .map_err(|_| Error::new(ErrorCode::UpstreamFailed, "the S3 target's list did not parse"))?;
            for object in page.contents {
                if let Some(name) = object.key.strip_prefix(self.prefix.as_str()) {
                    if check_name(name).is_ok() {
                        names.push(name.to_owned());
                    }
                }
            }
            match page.next_continuation_token {
                // A token given twice, or a list past any backup's, is a target going in circles.
                Some(next) if token.as_deref() != Some(next.as_str()) && names.len() <= MAX_LISTED => {
                    token = Some(next)
                }
                Some(_) => return Err(Error::new(ErrorCode::UpstreamFailed, "the S3 target's list does not end")),
                None => break,
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let key = format!("{}{name}", self.prefix);
        let url = rusty_s3::actions::DeleteObject::new(&self.bucket, Some(&self.credentials), &key).sign(SIGNED_FOR);
        let (status, body) = self.send(Method::DELETE, url, Bytes::new()).await?;
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            return Err(self.failed("remove an object", status, &body));
        }
        Ok(())
    }
}
