//! The instance protocol: what crosses the boundary between the gateway and an instance, in
//! process or over its socket. It is HTTP: the instance serves its own API (see [`crate::service`])
//! at the same paths the public API has, plus `/system/…` calls that only control makes. Every
//! call carries a [`CallContext`] in one header, written by the gateway after it authenticated
//! the caller; the client's own credentials never cross. Errors cross as the contract's JSON error
//! (`core::Error::body`); streamed answers (an export, later LLM tokens) are HTTP bodies, with
//! HTTP's backpressure, and a caller that goes away cancels the call.
//!
//! The access rules ([`Need`], [`check`]) are pure functions used on both sides: the gateway checks
//! before it forwards, the instance checks again on what it is handed.

pub mod broker;
pub mod egress;
pub mod wire;

use base64::Engine as _;
use selfcloud_core::{Collection, Error, ErrorCode, Result, Scope, ScopeSet};
use serde::{Deserialize, Serialize};

/// Raised when a request or answer changes shape; an instance refuses a context of another version.
pub const PROTOCOL_VERSION: u32 = 1;
/// The header that carries the [`CallContext`] (base64url of its JSON).
pub const CONTEXT_HEADER: &str = "x-selfcloud-context";

/// Who made a request on the instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// The instance's owner, with their session.
    Owner,
    /// A third-party app, through a grant.
    App { client_id: String, name: String, grant_id: String },
    /// Control itself (audit, quota, usage, verify): never a client's request.
    System,
}

/// What every call carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    pub v: u32,
    pub actor: Actor,
    /// The scopes the gateway granted (an app's token's); empty for the owner and control.
    pub scopes: String,
    pub request_id: Option<String>,
    /// The caller's clock (Unix milliseconds), for what the instance stamps (an export's date).
    pub now_ms: u64,
    /// How long the caller waits for the answer's head, from when the instance receives it (a
    /// duration, not an instant, so the two sides' clocks need not agree).
    pub timeout_ms: u64,
    /// LLM tokens the app may spend in a UTC day (its grant's budget under the tier's ceiling);
    /// the instance keeps what each app spent. `None` for the owner and control.
    #[serde(default)]
    pub token_budget: Option<u64>,
}

impl CallContext {
    pub fn new(actor: Actor, scopes: &ScopeSet, request_id: Option<String>, now_ms: u64, timeout_ms: u64) -> Self {
        CallContext {
            v: PROTOCOL_VERSION,
            actor,
            scopes: scopes.to_string(),
            request_id,
            now_ms,
            timeout_ms,
            token_budget: None,
        }
    }

    /// A call control makes on its own behalf.
    pub fn system(now_ms: u64, timeout_ms: u64) -> Self {
        Self::new(Actor::System, &ScopeSet::default(), None, now_ms, timeout_ms)
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a context serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(header: &str) -> Result<CallContext> {
        let bad = || Error::invalid("the call context is malformed");
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| bad())?;
        let ctx: CallContext = serde_json::from_slice(&json).map_err(|_| bad())?;
        if ctx.v != PROTOCOL_VERSION {
            return Err(Error::invalid(format!(
                "protocol version {} is not this instance's ({PROTOCOL_VERSION})",
                ctx.v
            )));
        }
        Ok(ctx)
    }

    /// Checks this call may do what `need` names; answers the scope that allowed it.
    pub fn check(&self, need: &Need) -> Result<Option<String>> {
        let scopes = ScopeSet::parse(&self.scopes).unwrap_or_default();
        check(&self.actor, &scopes, need)
    }
}

/// What a call needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// A scope (the owner holds every scope of their own instance).
    Scope(Scope),
    /// The owner's own session: export, import, the access log.
    Owner,
    /// Control: never reachable through the gateway.
    System,
}

impl Need {
    /// A record call: reads need `storage:read:<c>`, writes and deletes `storage:write:<c>`.
    pub fn record(method: &http::Method, collection: &Collection) -> Need {
        if method == http::Method::GET || method == http::Method::HEAD {
            Need::Scope(Scope::storage_read(collection))
        } else {
            Need::Scope(Scope::storage_write(collection))
        }
    }
}

/// The one access rule: who may do what `need` names. Answers the scope that allowed it (for the
/// audit log), `None` when none was needed.
pub fn check(actor: &Actor, scopes: &ScopeSet, need: &Need) -> Result<Option<String>> {
    match (need, actor) {
        (Need::System, Actor::System) => Ok(None),
        (Need::System, _) => Err(Error::not_found("no such endpoint")),
        (Need::Owner, Actor::Owner) => Ok(None),
        (Need::Owner, _) => Err(Error::forbidden("only the instance's owner may do this")),
        (Need::Scope(s), Actor::Owner) => Ok(Some(s.to_string())),
        (Need::Scope(_), Actor::System) => Err(Error::forbidden("control does not read instance data")),
        (Need::Scope(s), Actor::App { .. }) => match scopes.permits(s) {
            Some(held) => Ok(Some(held.to_string())),
            None => Err(Error::forbidden(format!("this token does not carry the scope {s}"))),
        },
    }
}

/// What an instance is told at start (in process: passed in; out of process: the first line on
/// its stdin, with the key, never on its command line or in its environment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub id: selfcloud_core::InstanceId,
    pub quota_bytes: u64,
    pub max_value_bytes: usize,
    pub max_import_bytes: usize,
    pub list_default: usize,
    pub list_max: usize,
    pub list_max_bytes: usize,
    /// The private LLM, when the server has a model; `None` answers its calls with 503.
    #[serde(default)]
    pub llm: Option<LlmSettings>,
    /// Argon2id's cost for the backup passphrase's wrap of a new target's key.
    #[serde(default)]
    pub backup_kdf: selfcloud_backup::KdfCost,
}

/// How an instance runs its LLM part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmSettings {
    pub engine: selfcloud_llm::llama::LlamaOptions,
    pub limits: selfcloud_llm::openai::RequestLimits,
    /// The embedding model; `None` answers `/v1/llm/embeddings` with 503.
    #[serde(default)]
    pub embedding: Option<selfcloud_llm::embed::EmbedOptions>,
    /// Shared mode: one batching engine for every instance, with these options (its places are
    /// all instances' together), instead of each instance's own: the engine process reached
    /// through control's broker, or with the in-process runtime one engine in the server's
    /// process. `None`: each instance runs its own engine (`engine`).
    #[serde(default)]
    pub shared: Option<selfcloud_llm::llama::LlamaOptions>,
}

impl Settings {
    pub fn new(id: selfcloud_core::InstanceId, limits: &selfcloud_core::config::Limits, quota_bytes: u64) -> Self {
        Settings {
            id,
            quota_bytes,
            max_value_bytes: limits.max_value_bytes,
            max_import_bytes: limits.max_import_bytes,
            list_default: limits.list_default,
            list_max: limits.list_max,
            list_max_bytes: limits.list_max_bytes,
            llm: None,
            backup_kdf: Default::default(),
        }
    }

    /// A list's page size: the default when none is asked for, otherwise 1 to the maximum.
    pub fn page_limit(&self, asked: Option<usize>) -> Result<usize> {
        let limit = asked.unwrap_or(self.list_default);
        if limit == 0 || limit > self.list_max {
            return Err(Error::invalid(format!("limit must be 1..={}", self.list_max)));
        }
        Ok(limit)
    }
}

/// The start message of an instance process.
#[derive(Serialize, Deserialize)]
pub struct Start {
    pub settings: Settings,
    /// Put the process behind the sandbox's walls (off only where the kernel lacks them).
    pub sandbox: bool,
    /// Shared files mounted read-only in the sandbox.
    pub read_only: Vec<std::path::PathBuf>,
    /// The host uid and gid the instance's root is mapped to (a server running as root gives
    /// each instance its own); `None` keeps the server's, unprivileged, ids.
    #[serde(default)]
    pub host_id: Option<u32>,
    /// The instance's own disk, mounted at its directory inside its walls (a server running as
    /// root gives one); `None`: the directory is on the host's filesystem.
    #[serde(default)]
    pub image: Option<DiskImage>,
}

/// An instance's disk image: the file and the size (its tier's disk limit) it must have.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskImage {
    pub path: std::path::PathBuf,
    pub bytes: u64,
}
// The data key follows the start message on stdin, as a second line of hex: the instance reads
// it only once behind its walls, so the process left outside them to reap it never holds it.

/// The descriptor on which an instance process finds its listening socket, bound by the server
/// at its directory's socket path: the instance never makes a socket of its own.
pub const LISTENER_FD: i32 = 3;

/// The line an instance process writes on stdout once its socket accepts calls.
pub const READY_LINE: &str = "ready";

/// The answer to a transport failure: the instance is not reachable now (crashed, restarting).
pub fn unreachable(retry_after: std::time::Duration) -> Error {
    Error { ..Error::unavailable("the instance is restarting; try again shortly", retry_after) }
}

/// The answer to a call whose request body did not arrive whole (shorter than its
/// `Content-Length`, or its client gone): the client's error, whichever runtime serves it.
pub fn body_incomplete() -> Error {
    Error::invalid("the request's body ended before it was whole (shorter than its Content-Length?)")
}

/// Whether an error is the instance being unreachable (as opposed to an answer it gave).
pub fn is_unreachable(e: &Error) -> bool {
    e.code == ErrorCode::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Actor {
        Actor::App { client_id: "app_x".into(), name: "Notes".into(), grant_id: "grt_x".into() }
    }

    #[test]
    fn each_actor_reaches_only_what_it_may() {
        let notes = Collection::parse("notes").unwrap();
        let read = Need::record(&http::Method::GET, &notes);
        let write = Need::record(&http::Method::PUT, &notes);
        let scopes = ScopeSet::parse("storage:read:notes").unwrap();
        assert_eq!(check(&app(), &scopes, &read).unwrap(), Some("storage:read:notes".into()));
        assert_eq!(check(&app(), &scopes, &write).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(check(&app(), &scopes, &Need::Owner).unwrap_err().code, ErrorCode::Forbidden);
        // System calls do not even exist for anyone else.
        assert_eq!(check(&app(), &scopes, &Need::System).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(check(&Actor::Owner, &ScopeSet::default(), &Need::System).unwrap_err().code, ErrorCode::NotFound);
        // The owner holds every scope of their instance; control holds none of its data.
        assert_eq!(check(&Actor::Owner, &ScopeSet::default(), &write).unwrap(), Some("storage:write:notes".into()));
        assert_eq!(check(&Actor::System, &ScopeSet::default(), &read).unwrap_err().code, ErrorCode::Forbidden);
        assert!(check(&Actor::System, &ScopeSet::default(), &Need::System).is_ok());
    }

    #[test]
    fn a_context_round_trips_and_a_forged_or_foreign_one_is_refused() {
        let ctx = CallContext::new(app(), &ScopeSet::parse("storage:read:notes").unwrap(), Some("r1".into()), 5, 1000);
        assert_eq!(CallContext::decode(&ctx.encode()).unwrap(), ctx);
        assert_eq!(CallContext::decode("not base64!").unwrap_err().code, ErrorCode::InvalidRequest);
        let other = CallContext { v: PROTOCOL_VERSION + 1, ..ctx };
        assert!(CallContext::decode(&other.encode()).unwrap_err().message.contains("version"));
    }
}
