//! The store's behaviour, written once against the facade so every engine runs the same suite.

use super::*;
use selfcloud_core::ErrorCode;

fn c(s: &str) -> Collection {
    Collection::parse(s).unwrap()
}
fn k(s: &str) -> RecordKey {
    RecordKey::parse(s).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    key: DataKey,
    store: Store,
}

fn sqlite(quota_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let store = Store::open_sqlite(
        &dir.path().join("store.db"),
        &key,
        StoreOptions { quota_bytes },
    )
    .unwrap();
    Fixture { dir, key, store }
}

#[test]
fn put_get_delete_with_revs() {
    let f = sqlite(u64::MAX);
    let s = &f.store;
    assert_eq!(s.get(&c("notes"), &k("a")).unwrap(), None);
    let r1 = s
        .put(&c("notes"), &k("a"), br#"{"t":1}"#, Precondition::None)
        .unwrap();
    let r2 = s
        .put(
            &c("notes"),
            &k("a"),
            br#"{"t":2}"#,
            Precondition::IfMatch(r1),
        )
        .unwrap();
    assert!(r2 > r1);
    let got = s.get(&c("notes"), &k("a")).unwrap().unwrap();
    assert_eq!((got.rev, got.value.as_slice()), (r2, &br#"{"t":2}"#[..]));
    // Stale If-Match and create-only on an existing record are refused and change nothing.
    let err = s
        .put(&c("notes"), &k("a"), b"3", Precondition::IfMatch(r1))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PreconditionFailed);
    assert_eq!(
        s.put(&c("notes"), &k("a"), b"3", Precondition::IfAbsent)
            .unwrap_err()
            .code,
        ErrorCode::PreconditionFailed
    );
    assert_eq!(s.get(&c("notes"), &k("a")).unwrap().unwrap().rev, r2);
    // The same key in another collection is another record.
    assert_eq!(s.get(&c("other"), &k("a")).unwrap(), None);
    assert_eq!(
        s.delete(&c("notes"), &k("a"), Precondition::IfMatch(r1))
            .unwrap_err()
            .code,
        ErrorCode::PreconditionFailed
    );
    s.delete(&c("notes"), &k("a"), Precondition::IfMatch(r2))
        .unwrap();
    assert_eq!(
        s.delete(&c("notes"), &k("a"), Precondition::None)
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    assert_eq!(
        s.usage().unwrap(),
        Usage {
            records: 0,
            bytes: 0
        }
    );
}

#[test]
fn list_is_ordered_prefixed_and_paged() {
    let f = sqlite(u64::MAX);
    let s = &f.store;
    for key in ["b2", "a1", "b1", "b3", "c1", "b10"] {
        s.put(&c("col"), &k(key), b"1", Precondition::None).unwrap();
    }
    s.put(&c("col2"), &k("b0"), b"1", Precondition::None)
        .unwrap();
    let keys = |p: &Page| {
        p.records
            .iter()
            .map(|r| r.key.to_string())
            .collect::<Vec<_>>()
    };
    let page = s.list(&c("col"), "b", 2, None).unwrap();
    assert_eq!(keys(&page), ["b1", "b10"]);
    let page2 = s.list(&c("col"), "b", 2, page.cursor.as_deref()).unwrap();
    assert_eq!(keys(&page2), ["b2", "b3"]);
    assert_eq!(page2.cursor, None, "no page follows the last");
    assert_eq!(
        keys(&s.list(&c("col"), "", 10, None).unwrap()),
        ["a1", "b1", "b10", "b2", "b3", "c1"]
    );
    // A record written between pages does not disturb a cursor already handed out.
    s.put(&c("col"), &k("b0"), b"1", Precondition::None)
        .unwrap();
    assert_eq!(
        keys(&s.list(&c("col"), "b", 2, page.cursor.as_deref()).unwrap()),
        ["b2", "b3"]
    );
    assert_eq!(
        s.list(&c("col"), "", 10, Some("!!")).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        s.list(&c("col"), "a/b", 10, None).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
}

#[test]
fn values_are_encrypted_on_disk_and_bound_to_their_key() {
    let f = sqlite(u64::MAX);
    let secret = br#"{"diary":"the-secret-text-1234"}"#;
    f.store
        .put(&c("notes"), &k("d"), secret, Precondition::None)
        .unwrap();
    f.store
        .append_log(&[b"audit-secret-path-5678".to_vec()], 10)
        .unwrap();
    drop(f.store);
    let mut all = Vec::new();
    for entry in std::fs::read_dir(f.dir.path()).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"the-secret-text-1234"));
    assert!(!contains(b"audit-secret-path-5678"));

    // Reopen with the wrong key: the value does not decrypt.
    let path = f.dir.path().join("store.db");
    let wrong = Store::open_sqlite(
        &path,
        &DataKey::generate(),
        StoreOptions {
            quota_bytes: u64::MAX,
        },
    )
    .unwrap();
    assert_eq!(
        wrong.get(&c("notes"), &k("d")).unwrap_err().code,
        ErrorCode::Internal
    );
    // Move the sealed value to another key on disk: authentication fails instead of serving it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE records SET key = 'e' WHERE key = 'd'", [])
        .unwrap();
    let right = Store::open_sqlite(
        &path,
        &f.key,
        StoreOptions {
            quota_bytes: u64::MAX,
        },
    )
    .unwrap();
    assert_eq!(
        right.get(&c("notes"), &k("e")).unwrap_err().code,
        ErrorCode::Internal
    );
}

#[test]
fn quota_refuses_growth_and_writes_nothing() {
    let f = sqlite(100);
    let s = &f.store;
    s.put(&c("q"), &k("a"), &[b'1'; 60], Precondition::None)
        .unwrap();
    let err = s
        .put(&c("q"), &k("b"), &[b'1'; 60], Precondition::None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded);
    assert_eq!(s.get(&c("q"), &k("b")).unwrap(), None);
    assert_eq!(
        s.usage().unwrap(),
        Usage {
            records: 1,
            bytes: 61
        }
    );
    // Shrinking is always allowed, even at the quota.
    s.put(&c("q"), &k("a"), b"1", Precondition::None).unwrap();
    assert_eq!(
        s.usage().unwrap(),
        Usage {
            records: 1,
            bytes: 2
        }
    );
}

#[test]
fn log_appends_reads_newest_first_and_prunes() {
    let f = sqlite(u64::MAX);
    let entries: Vec<Vec<u8>> = (0..5).map(|i| format!("e{i}").into_bytes()).collect();
    assert_eq!(f.store.append_log(&entries, 3).unwrap(), 5);
    let read = f.store.read_log(None, 10).unwrap();
    assert_eq!(read.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5, 4, 3]);
    assert_eq!(read[0].1, b"e4");
    assert_eq!(
        f.store.read_log(Some(4), 1).unwrap(),
        vec![(3, b"e2".to_vec())]
    );
}

#[test]
fn reopening_keeps_data_and_schema() {
    let f = sqlite(u64::MAX);
    let rev = f
        .store
        .put(&c("n"), &k("a"), b"true", Precondition::None)
        .unwrap();
    drop(f.store);
    let s = Store::open_sqlite(
        &f.dir.path().join("store.db"),
        &f.key,
        StoreOptions {
            quota_bytes: u64::MAX,
        },
    )
    .unwrap();
    assert_eq!(s.get(&c("n"), &k("a")).unwrap().unwrap().rev, rev);
    assert!(s.put(&c("n"), &k("b"), b"1", Precondition::None).unwrap() > rev);
}
