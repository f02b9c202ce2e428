//! Registry rows of host uids: when the server runs as root, each instance's root is a host uid
//! of its own, taken from a range the operator names, and given back when the account is
//! deleted.

use super::{db_err, Registry};
use rusqlite::{params, OptionalExtension};
use selfcloud_core::{Error, InstanceId, Result};

impl Registry {
    /// The instance's host uid within `first .. first + count`: the one it holds, or else the
    /// lowest no other instance holds (one it holds outside the range, after the operator moved
    /// it, is given back first).
    pub fn host_id(&self, id: InstanceId, first: u32, count: u32) -> Result<u32> {
        let (first, end) = (i64::from(first), i64::from(first) + i64::from(count));
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let held: Option<i64> = tx
            .query_row("SELECT uid FROM host_ids WHERE instance_id = ?1", [id.to_string()], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        if let Some(uid) = held.filter(|uid| (first..end).contains(uid)) {
            return Ok(uid as u32);
        }
        tx.execute("DELETE FROM host_ids WHERE instance_id = ?1", [id.to_string()]).map_err(db_err)?;
        // The range's first uid if free, else the lowest held one whose successor is free.
        let free: i64 = tx
            .query_row(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM host_ids WHERE uid = ?1) THEN ?1 ELSE
                     (SELECT min(a.uid) + 1 FROM host_ids a WHERE a.uid >= ?1 AND a.uid < ?2
                      AND NOT EXISTS (SELECT 1 FROM host_ids b WHERE b.uid = a.uid + 1)) END",
                params![first, end],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if free >= end {
            return Err(Error::unavailable(
                format!("every host uid of --instance-uids is taken ({} instances): widen the range", end - first),
                std::time::Duration::from_secs(60),
            ));
        }
        tx.execute("INSERT INTO host_ids (instance_id, uid) VALUES (?1, ?2)", params![id.to_string(), free])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(free as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_holds_its_own_uid_and_a_freed_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("control.db")).unwrap();
        let (a, b, c) = (InstanceId::random(), InstanceId::random(), InstanceId::random());
        assert_eq!(r.host_id(a, 1000, 3).unwrap(), 1000);
        assert_eq!(r.host_id(b, 1000, 3).unwrap(), 1001);
        assert_eq!(r.host_id(a, 1000, 3).unwrap(), 1000, "held");
        assert_eq!(r.host_id(c, 1000, 3).unwrap(), 1002);
        let full = r.host_id(InstanceId::random(), 1000, 3).unwrap_err();
        assert!(full.message.contains("--instance-uids"), "{}", full.message);
        r.conn.lock().execute("DELETE FROM host_ids WHERE instance_id = ?1", [a.to_string()]).unwrap();
        let d = InstanceId::random();
        assert_eq!(r.host_id(d, 1000, 3).unwrap(), 1000, "a freed uid is reused");
        // The range moved: each instance gets one in the new range.
        assert_eq!(r.host_id(b, 5000, 10).unwrap(), 5000);
        assert_eq!(r.host_id(c, 5000, 10).unwrap(), 5001);
    }
}
