//! Shared vocabulary of selfcloud: ids, the scope grammar, record names, the error type and its
//! HTTP status mapping, and configuration types. This crate does no I/O.

pub mod config;
pub mod error;
pub mod id;
pub mod json;
pub mod names;
pub mod scope;

pub use error::{Error, ErrorCode, Result};
pub use id::{AppId, GrantId, InstanceId, UserId};
pub use names::{Collection, RecordKey};
pub use scope::{Scope, ScopeSet};
