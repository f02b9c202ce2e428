//! The egress channel ([`super::broker::Channel::Egress`]): how a request an instance prepared
//! reaches a host outside. The instance speaks HTTP/2 on the channel, each request in absolute
//! form (`https://host/path`) with the headers it wrote (an upstream provider's key among them).
//! Control sends it on only when its [`Origin`] is on the operator's allow-list
//! (`--egress-allow`), follows no redirect, and answers any other with 403. These rules are
//! pure and used on both sides: the instance checks the URL an owner gives it, control checks
//! every request it is handed.

use http::uri::{Scheme, Uri};

/// Marks control's own refusal of a request (403, the contract's error): a host's answer
/// never carries it, as control drops every `x-selfcloud-` header from what hosts send.
pub const REFUSED_HEADER: &str = "x-selfcloud-egress-refused";

/// Headers of one hop only: neither side carries them across the channel.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Where a request goes, as the allow-list names it: scheme, host (lowercase) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub secure: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Origin {
    /// The origin of an absolute `http` or `https` URI; no user name or password in it.
    pub fn of(uri: &Uri) -> Result<Origin, String> {
        let secure = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) => return Err(format!("the scheme {s} is not http or https")),
            None => return Err("the URL is not absolute (no scheme)".into()),
        };
        let authority = uri.authority().ok_or("the URL names no host")?;
        if authority.as_str().contains('@') {
            return Err("the URL carries a user name or password; send a key as a header".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Origin { secure, host, port })
    }

    /// An allow-list entry: `https://api.example.com` or `http://127.0.0.1:8080` (a path, query
    /// or user name in it is refused, so an entry means what it says).
    pub fn parse(text: &str) -> Result<Origin, String> {
        let uri: Uri = text.trim().parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{text:?}: name an origin only (scheme, host and port), no path or query"));
        }
        Origin::of(&uri).map_err(|e| format!("{text:?}: {e}"))
    }
}

/// Control's rule for one request on an instance's egress channel: its origin when the
/// allow-list holds it, else why not.
pub fn allowed(allow: &[Origin], uri: &Uri) -> Result<Origin, String> {
    let origin = Origin::of(uri)?;
    if allow.contains(&origin) {
        Ok(origin)
    } else if allow.is_empty() {
        Err("this server lets instances reach no outside host (its operator names them with --egress-allow)".into())
    } else {
        Err(format!("{origin} is not on this server's egress allow-list (--egress-allow)"))
    }
}

/// Whether a header crosses the channel (both ways): none of one hop, none of ours.
pub fn crosses(name: &http::HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && !name.as_str().starts_with("x-selfcloud-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn origins_name_scheme_host_and_port_with_the_defaults_filled_in() {
        let o = Origin::of(&uri("https://API.Example.com/v1/chat/completions")).unwrap();
        assert_eq!(o.to_string(), "https://api.example.com:443");
        assert_eq!(Origin::of(&uri("http://127.0.0.1:8080/v1")).unwrap().to_string(), "http://127.0.0.1:8080");
        assert_eq!(Origin::of(&uri("http://[::1]:9/")).unwrap().host, "::1");
        assert_eq!(Origin::parse("https://api.example.com").unwrap(), o);
        assert_eq!(Origin::parse("https://api.example.com:443/").unwrap(), o);
        for bad in ["/v1/chat", "ftp://host/", "https://user:pw@host/"] {
            assert!(Origin::of(&uri(bad)).is_err(), "{bad}");
        }
        for bad in ["https://host/v1", "https://host/?a=1", "not a url", "https://u@host"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_an_origin_on_the_list_is_reached() {
        let allow = vec![Origin::parse("http://127.0.0.1:8080").unwrap()];
        assert!(allowed(&allow, &uri("http://127.0.0.1:8080/v1/chat/completions")).is_ok());
        // Another port, scheme or host of the same machine is another origin.
        for other in ["http://127.0.0.1:8081/v1", "https://127.0.0.1:8080/v1", "http://localhost:8080/v1"] {
            assert!(allowed(&allow, &uri(other)).unwrap_err().contains("not on"), "{other}");
        }
        assert!(allowed(&[], &uri("http://127.0.0.1:8080/")).unwrap_err().contains("no outside host"));
        assert!(allowed(&allow, &uri("/v1/chat/completions")).is_err());
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_side() {
        assert!(!crosses(&http::header::HOST));
        assert!(!crosses(&http::header::CONNECTION));
        assert!(crosses(&http::header::AUTHORIZATION));
        assert!(crosses(&http::header::CONTENT_TYPE));
        assert!(!crosses(&http::HeaderName::from_static(REFUSED_HEADER)));
    }
}
