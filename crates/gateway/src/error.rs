//! The contract's JSON error: one definition, shared with the instance's own API.

pub use selfcloud_instance::api::*;
