//! Where a backup's objects are kept: a [`Target`] stores whole objects under names the
//! repository chose (`keys/…`, `packs/…`, `snapshots/…`, each a random hex id) and knows
//! nothing of what they hold. An object is either there whole or not at all.

mod dir;
mod remote;
mod s3;

pub use dir::DirTarget;
pub use remote::{serve, DirRequest, RemoteDir, Transport, DIR_ORIGIN};
pub use s3::{S3Config, S3Target};

use async_trait::async_trait;
use selfcloud_core::{Error, Result};

/// The kinds of object a repository writes, each under its own prefix.
pub const KINDS: [&str; 3] = ["keys", "packs", "snapshots"];

/// Checks `name` is `<kind>/<32 hex digits>`: a target is never asked for any other path.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.split_once('/').is_some_and(|(kind, id)| {
        KINDS.contains(&kind) && id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ok {
        return Err(Error::internal(format!("not a backup object name: {name:?}")));
    }
    Ok(())
}

#[async_trait]
pub trait Target: Send + Sync {
    /// Stores `bytes` as `name`, durably once this returns, replacing any object of that name.
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()>;
    /// The object, or `None` if the target has none of that name.
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The names of the objects of one kind (`keys`, `packs`, `snapshots`).
    async fn list(&self, kind: &str) -> Result<Vec<String>>;
    /// Removes the object; one already gone is no error.
    async fn delete(&self, name: &str) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repository_names_are_objects() {
        check_name("packs/0123456789abcdef0123456789abcdef").unwrap();
        for bad in [
            "packs/../../etc/passwd",
            "packs/0123456789ABCDEF0123456789abcdef",
            "other/0123456789abcdef0123456789abcdef",
            "packs/0123",
            "/packs/0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
