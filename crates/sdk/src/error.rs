//! The one error type of the SDK, keeping the server's error code so callers can match on it.

use serde::Deserialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status; `code` is the contract's machine-readable code
    /// (`not_found`, `precondition_failed`, `rate_limited`, or an OAuth code like `invalid_grant`).
    #[error("server answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// Seconds from the `Retry-After` header, when the server asked to wait (429, 503).
        retry_after: Option<u64>,
    },
    /// The request could not be sent or its answer not read.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The server (or the redirect) answered something this client cannot make sense of.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The authorization server redirected back with an OAuth error (`access_denied` when the user said no).
    #[error("authorization denied: {0}")]
    Denied(String),
    /// The call needs a token the client does not hold (`"access"` or `"refresh"`).
    #[error("no {0} token held")]
    NoToken(&'static str),
    /// An argument cannot be sent as given, e.g. a key of `..`, which URLs silently drop.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// The HTTP status, for [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// SELF's name for the error: `PERMISSION_DENIED` (a permission the user did not allow,
    /// 403), `RATE_LIMITED` (429, also a spent token budget: wait `retry_after`),
    /// `UNAUTHENTICATED` (401: the grant ended, connect again), `NOT_FOUND`; `None` for others.
    pub fn self_code(&self) -> Option<&'static str> {
        match self {
            Error::Api { status: 403, .. } => Some("PERMISSION_DENIED"),
            Error::Api { status: 429, .. } => Some("RATE_LIMITED"),
            Error::Api { status: 401, .. } => Some("UNAUTHENTICATED"),
            Error::Api { status: 404, .. } => Some("NOT_FOUND"),
            _ => None,
        }
    }

    /// Maps an error answer's body: the contract's `{"error":{"code","message"}}`, OAuth's
    /// `{"error","error_description"}` (token and revoke endpoints), or anything else verbatim
    /// under the code `unknown`, so nothing the server said is lost.
    pub(crate) fn from_answer(status: u16, retry_after: Option<u64>, body: &str) -> Error {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Body {
            Contract { error: Detail },
            OAuth { error: String, error_description: Option<String> },
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            #[serde(default)]
            message: String,
        }

        let (code, message) = match serde_json::from_str(body) {
            Ok(Body::Contract { error }) => (error.code, error.message),
            Ok(Body::OAuth { error, error_description }) => (error, error_description.unwrap_or_default()),
            Err(_) => ("unknown".to_owned(), body.chars().take(500).collect()),
        };
        Error::Api { status, code, message, retry_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_contract_body() {
        let body = r#"{"error":{"code":"rate_limited","message":"too many requests"}}"#;
        let Error::Api { status, code, message, retry_after } = Error::from_answer(429, Some(3), body) else {
            panic!("not an Api error");
        };
        assert_eq!(
            (status, code.as_str(), message.as_str(), retry_after),
            (429, "rate_limited", "too many requests", Some(3))
        );
    }

    #[test]
    fn maps_an_oauth_body() {
        let e = Error::from_answer(400, None, r#"{"error":"invalid_grant","error_description":"code used"}"#);
        assert_eq!(e.code(), Some("invalid_grant"));
        assert_eq!(e.status(), Some(400));
        assert!(e.to_string().contains("code used"));
    }

    #[test]
    fn keeps_a_foreign_body_verbatim() {
        let e = Error::from_answer(502, None, "Bad Gateway");
        assert_eq!(e.code(), Some("unknown"));
        assert!(matches!(e, Error::Api { ref message, .. } if message == "Bad Gateway"));
    }
}
