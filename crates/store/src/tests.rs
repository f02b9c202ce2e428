//! The store's behaviour, written once against the facade; every engine runs the same suite
//! (see `engine_suite!` at the bottom).

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

fn fixture(kind: EngineKind, quota_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let store = Store::create(kind, dir.path(), &key, StoreOptions { quota_bytes }).unwrap();
    Fixture { dir, key, store }
}

fn reopen(kind: EngineKind, dir: &std::path::Path, key: &DataKey) -> Store {
    Store::open(kind, dir, key, StoreOptions { quota_bytes: u64::MAX }).unwrap()
}

/// Moves the sealed bytes of record `from` to record `to` behind the store's back.
fn move_sealed_value(kind: EngineKind, dir: &std::path::Path, collection: &str, from: &str, to: &str) {
    let path = dir.join(kind.file_name());
    match kind {
        EngineKind::Sqlite => {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("UPDATE records SET key = ?3 WHERE collection = ?1 AND key = ?2", [collection, from, to])
                .unwrap();
        }
        EngineKind::Rocksdb => {
            let db = ::rocksdb::DB::open_default(&path).unwrap();
            let k = |key: &str| [b"r\0".as_slice(), collection.as_bytes(), b"\0", key.as_bytes()].concat();
            let v = db.get(k(from)).unwrap().unwrap();
            db.put(k(to), v).unwrap();
            db.delete(k(from)).unwrap();
        }
    }
}

fn put_get_delete_with_revs(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    assert_eq!(s.get(&c("notes"), &k("a")).unwrap(), None);
    let r1 = s.put(&c("notes"), &k("a"), br#"{"t":1}"#, Precondition::None).unwrap();
    let r2 = s.put(&c("notes"), &k("a"), br#"{"t":2}"#, Precondition::IfMatch(r1)).unwrap();
    assert!(r2 > r1);
    let got = s.get(&c("notes"), &k("a")).unwrap().unwrap();
    assert_eq!((got.rev, got.value.as_slice()), (r2, &br#"{"t":2}"#[..]));
    // Stale If-Match and create-only on an existing record are refused and change nothing.
    let err = s.put(&c("notes"), &k("a"), b"3", Precondition::IfMatch(r1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PreconditionFailed);
    assert_eq!(
        s.put(&c("notes"), &k("a"), b"3", Precondition::IfAbsent).unwrap_err().code,
        ErrorCode::PreconditionFailed
    );
    assert_eq!(s.get(&c("notes"), &k("a")).unwrap().unwrap().rev, r2);
    // The same key in another collection is another record.
    assert_eq!(s.get(&c("other"), &k("a")).unwrap(), None);
    assert_eq!(
        s.delete(&c("notes"), &k("a"), Precondition::IfMatch(r1)).unwrap_err().code,
        ErrorCode::PreconditionFailed
    );
    s.delete(&c("notes"), &k("a"), Precondition::IfMatch(r2)).unwrap();
    assert_eq!(s.delete(&c("notes"), &k("a"), Precondition::None).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(s.usage().unwrap(), Usage { records: 0, bytes: 0 });
}

fn list_is_ordered_prefixed_and_paged(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    for key in ["b2", "a1", "b1", "b3", "c1", "b10"] {
        s.put(&c("col"), &k(key), b"1", Precondition::None).unwrap();
    }
    s.put(&c("col2"), &k("b0"), b"1", Precondition::None).unwrap();
    let keys = |p: &Page| p.records.iter().map(|r| r.key.to_string()).collect::<Vec<_>>();
    let all = usize::MAX;
    let page = s.list(&c("col"), "b", 2, all, None).unwrap();
    assert_eq!(keys(&page), ["b1", "b10"]);
    let page2 = s.list(&c("col"), "b", 2, all, page.cursor.as_deref()).unwrap();
    assert_eq!(keys(&page2), ["b2", "b3"]);
    assert_eq!(page2.cursor, None, "no page follows the last");
    assert_eq!(keys(&s.list(&c("col"), "", 10, all, None).unwrap()), ["a1", "b1", "b10", "b2", "b3", "c1"]);
    // A record written between pages does not disturb a cursor already handed out.
    s.put(&c("col"), &k("b0"), b"1", Precondition::None).unwrap();
    assert_eq!(keys(&s.list(&c("col"), "b", 2, all, page.cursor.as_deref()).unwrap()), ["b2", "b3"]);
    assert_eq!(s.list(&c("col"), "", 10, all, Some("!!")).unwrap_err().code, ErrorCode::InvalidRequest);
    assert_eq!(s.list(&c("col"), "a/b", 10, all, None).unwrap_err().code, ErrorCode::InvalidRequest);
}

fn list_pages_stop_at_their_byte_budget(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    let big = format!("\"{}\"", "x".repeat(1000));
    for key in ["a", "b", "c", "d", "e"] {
        s.put(&c("col"), &k(key), big.as_bytes(), Precondition::None).unwrap();
    }
    // About two and a half values' worth: each page stops once it holds that much, never empty.
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = s.list(&c("col"), "", 100, 2500, cursor.as_deref()).unwrap();
        assert!(page.records.len() <= 3, "{} records in one page", page.records.len());
        seen.extend(page.records.iter().map(|r| r.key.to_string()));
        pages += 1;
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert!(pages >= 2);
    // A budget smaller than one value still returns that value.
    assert_eq!(s.list(&c("col"), "", 100, 1, None).unwrap().records.len(), 1);
}

fn if_match_star_requires_the_record_to_exist(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    let missing = s.put(&c("n"), &k("a"), b"1", Precondition::IfExists).unwrap_err();
    assert_eq!(missing.code, ErrorCode::PreconditionFailed);
    assert_eq!(s.get(&c("n"), &k("a")).unwrap(), None);
    s.put(&c("n"), &k("a"), b"1", Precondition::None).unwrap();
    s.put(&c("n"), &k("a"), b"2", Precondition::IfExists).unwrap();
    assert_eq!(s.get(&c("n"), &k("a")).unwrap().unwrap().value, b"2");
    s.delete(&c("n"), &k("a"), Precondition::IfExists).unwrap();
    // A condition on a record that is not there fails as a condition; without one, 404.
    assert_eq!(s.delete(&c("n"), &k("a"), Precondition::IfExists).unwrap_err().code, ErrorCode::PreconditionFailed);
    assert_eq!(s.delete(&c("n"), &k("a"), Precondition::IfMatch(1)).unwrap_err().code, ErrorCode::PreconditionFailed);
    assert_eq!(s.delete(&c("n"), &k("a"), Precondition::None).unwrap_err().code, ErrorCode::NotFound);
}

fn tiny_records_are_charged_what_they_take(kind: EngineKind) {
    // A thousand one-byte records under a long collection name cost far more than 2 bytes each.
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    let col = c("a-rather-long-collection-name");
    for i in 0..1000 {
        s.put(&col, &k(&format!("k{i:04}")), b"1", Precondition::None).unwrap();
    }
    let used = s.usage().unwrap().bytes;
    assert_eq!(used, 1000 * charged_bytes(&col, &k("k0000"), 1));
    assert!(used >= 1000 * (2 * 34 + 1 + 41), "{used}");
    assert_eq!(s.verify().unwrap().bytes, used);
}

fn values_are_encrypted_on_disk_and_bound_to_their_key(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let secret = br#"{"diary":"the-secret-text-1234"}"#;
    f.store.put(&c("notes"), &k("d"), secret, Precondition::None).unwrap();
    f.store.append_log(&[b"audit-secret-path-5678".to_vec()], 10).unwrap();
    drop(f.store);
    let mut all = Vec::new();
    let mut stack = vec![f.dir.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                all.extend(std::fs::read(path).unwrap());
            }
        }
    }
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"the-secret-text-1234"));
    assert!(!contains(b"audit-secret-path-5678"));

    // Reopen with the wrong key: the value does not decrypt.
    let wrong = reopen(kind, f.dir.path(), &DataKey::generate());
    assert_eq!(wrong.get(&c("notes"), &k("d")).unwrap_err().code, ErrorCode::Internal);
    drop(wrong);
    // Move the sealed value to another key on disk: authentication fails instead of serving it.
    move_sealed_value(kind, f.dir.path(), "notes", "d", "e");
    let right = reopen(kind, f.dir.path(), &f.key);
    assert_eq!(right.get(&c("notes"), &k("e")).unwrap_err().code, ErrorCode::Internal);
}

fn quota_refuses_growth_and_writes_nothing(kind: EngineKind) {
    let sixty = charged_bytes(&c("q"), &k("a"), 60);
    let f = fixture(kind, sixty + 60);
    let s = &f.store;
    s.put(&c("q"), &k("a"), &[b'1'; 60], Precondition::None).unwrap();
    let err = s.put(&c("q"), &k("b"), &[b'1'; 60], Precondition::None).unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded);
    assert_eq!(s.get(&c("q"), &k("b")).unwrap(), None);
    assert_eq!(s.usage().unwrap(), Usage { records: 1, bytes: sixty });
    // Shrinking is always allowed, even at the quota.
    s.put(&c("q"), &k("a"), b"1", Precondition::None).unwrap();
    assert_eq!(s.usage().unwrap(), Usage { records: 1, bytes: charged_bytes(&c("q"), &k("a"), 1) });
}

fn log_appends_reads_newest_first_and_prunes(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    assert_eq!(f.store.read_log(None, 10).unwrap(), vec![], "a new store's log is empty");
    f.store.verify().unwrap();
    let e = |i: u64| format!("e{i}").into_bytes();
    let seqs = |v: Vec<(u64, Vec<u8>)>| {
        for (seq, entry) in &v {
            assert_eq!(entry, &e(*seq), "entry {seq} holds what was written as it");
        }
        v.into_iter().map(|(seq, _)| seq).collect::<Vec<_>>()
    };
    // Five batches of one, keeping 3: the two oldest go.
    for i in 1..=5 {
        assert_eq!(f.store.append_log(&[e(i)], 3).unwrap(), i);
    }
    assert_eq!(seqs(f.store.read_log(None, 10).unwrap()), [5, 4, 3]);
    // A batch of four (6..=9): batches wholly older than the 3 newest entries go; it stays whole.
    assert_eq!(f.store.append_log(&[e(6), e(7), e(8), e(9)], 3).unwrap(), 9);
    assert_eq!(seqs(f.store.read_log(None, 10).unwrap()), [9, 8, 7, 6]);
    // Paging lands inside a batch and keeps counting down from there.
    assert_eq!(seqs(f.store.read_log(Some(8), 1).unwrap()), [7]);
    assert_eq!(seqs(f.store.read_log(Some(8), 5).unwrap()), [7, 6]);
    assert_eq!(seqs(f.store.read_log(Some(6), 5).unwrap()), Vec::<u64>::new());
    assert_eq!(f.store.append_log(&[], 3).unwrap(), 0, "an empty batch writes nothing");
    // The log outlives a reopen, and keeps counting.
    drop(f.store);
    let s = reopen(kind, f.dir.path(), &f.key);
    assert_eq!(s.append_log(&[e(10)], 3).unwrap(), 10);
    assert_eq!(seqs(s.read_log(None, 10).unwrap()), [10, 9, 8, 7, 6]);
    assert_eq!(seqs(s.read_log(None, 2).unwrap()), [10, 9]);
    s.verify().unwrap();
}

fn reopening_keeps_data_and_schema(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let rev = f.store.put(&c("n"), &k("a"), b"true", Precondition::None).unwrap();
    drop(f.store);
    let s = reopen(kind, f.dir.path(), &f.key);
    assert_eq!(s.get(&c("n"), &k("a")).unwrap().unwrap().rev, rev);
    assert!(s.put(&c("n"), &k("b"), b"1", Precondition::None).unwrap() > rev);
}

fn verify_agrees_with_counters(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    for i in 0..50 {
        f.store.put(&c("v"), &k(&format!("k{i}")), b"[1,2,3]", Precondition::None).unwrap();
    }
    f.store.delete(&c("v"), &k("k7"), Precondition::None).unwrap();
    // Keys k0..k9 (k7 deleted) are 2 bytes, k10..k49 are 3; each value is 7.
    let bytes = 9 * charged_bytes(&c("v"), &k("k0"), 7) + 40 * charged_bytes(&c("v"), &k("k10"), 7);
    assert_eq!(f.store.verify().unwrap(), Usage { records: 49, bytes });
    assert_eq!(f.store.verify().unwrap(), f.store.usage().unwrap());
}

fn engine_detected_from_disk(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    assert_eq!(EngineKind::detect(f.dir.path()), Some(kind));
    assert_eq!(kind.as_str().parse::<EngineKind>().unwrap(), kind);
    // A directory holds one store: creating another there, of either engine, is refused.
    for other in EngineKind::ALL {
        let err = Store::create(other, f.dir.path(), &f.key, StoreOptions { quota_bytes: 1 }).err().unwrap();
        assert_eq!(err.code, ErrorCode::Conflict);
    }
}

#[test]
fn a_new_sqlite_store_is_a_copy_of_the_template_in_wal_mode_at_the_current_schema() {
    let f = fixture(EngineKind::Sqlite, u64::MAX);
    f.store.put(&c("n"), &k("a"), b"1", Precondition::None).unwrap();
    drop(f.store);
    let conn = rusqlite::Connection::open(f.dir.path().join("store.db")).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!((mode.as_str(), version), ("wal", crate::sqlite::MIGRATIONS_LEN));
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    // No scratch file is left beside it.
    let names: Vec<String> =
        std::fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".template")), "{names:?}");
}

/// Every record of a store, by scanning `limit` (and `max_bytes`) at a time.
fn scan_all(s: &Store, limit: usize, max_bytes: usize) -> Vec<ScannedRecord> {
    let (mut all, mut cursor) = (Vec::new(), None);
    loop {
        let page = s.scan(cursor.as_deref(), limit, max_bytes).unwrap();
        all.extend(page.records);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

fn scan_walks_every_collection_in_key_order(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    assert_eq!(s.scan(None, 10, usize::MAX).unwrap(), ScanPage::default());
    // "a" < "a-c" < "a.b" < "b": a collection name that prefixes another sorts first.
    let written = [("b", "k1"), ("a.b", "z"), ("a", "b10"), ("a", "b2"), ("a-c", "A"), ("a", "B"), ("b", "k0")];
    for (i, (col, key)) in written.iter().enumerate() {
        s.put(&c(col), &k(key), format!(r#"{{"i":{i}}}"#).as_bytes(), Precondition::None).unwrap();
    }
    let mut want: Vec<_> = written.iter().map(|(col, key)| (col.to_string(), key.to_string())).collect();
    want.sort();
    for limit in [1, 2, 3, 100] {
        let got = scan_all(s, limit, usize::MAX);
        assert_eq!(got.iter().map(|r| (r.collection.to_string(), r.key.to_string())).collect::<Vec<_>>(), want);
    }
    // Values come back opened, with their revs.
    let all = scan_all(s, 100, usize::MAX);
    let b10 = all.iter().find(|r| r.key.as_str() == "b10").unwrap();
    assert_eq!(b10.value, br#"{"i":2}"#);
    assert_eq!(Some(b10.rev), s.get(&c("a"), &k("b10")).unwrap().map(|r| r.rev));
    // A byte budget cuts pages short (one record each here) without losing any.
    assert_eq!(s.scan(None, 100, 1).unwrap().records.len(), 1);
    assert_eq!(scan_all(s, 100, 1), all);
    let page = s.scan(None, written.len(), usize::MAX).unwrap();
    assert_eq!((page.records.len(), page.cursor), (written.len(), None), "no page follows the last");
    // Not base64; "a" (no separator); "a/" (an empty key).
    for bad in ["!!", "YQ", "YS8"] {
        assert_eq!(s.scan(Some(bad), 10, usize::MAX).unwrap_err().code, ErrorCode::InvalidRequest, "{bad}");
    }
}

fn import_writes_everything_at_once_with_new_revs(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    let rec = |col: &str, key: &str, value: &str| ImportRecord { collection: c(col), key: k(key), value: value.into() };
    let records = vec![rec("a", "x", r#"{"n":[1,{"é":"ü"}]}"#), rec("a", "y", "2"), rec("b", "x", "\"3\"")];
    // Out of order or duplicated: refused before anything is written.
    let mut shuffled = records.clone();
    shuffled.swap(0, 2);
    assert_eq!(s.import(shuffled.into_iter().map(Ok)).unwrap_err().code, ErrorCode::InvalidRequest);
    let dup = vec![records[0].clone(), records[0].clone()];
    assert_eq!(s.import(dup.into_iter().map(Ok)).unwrap_err().code, ErrorCode::InvalidRequest);
    assert_eq!(s.usage().unwrap(), Usage::default());

    let usage = s.import(records.clone().into_iter().map(Ok)).unwrap();
    let bytes: u64 = records.iter().map(|r| charged_bytes(&r.collection, &r.key, r.value.len())).sum();
    assert_eq!(usage, Usage { records: 3, bytes });
    assert_eq!(s.verify().unwrap(), usage);
    let all = scan_all(s, 10, usize::MAX);
    assert_eq!(
        all.iter().map(|r| (&r.collection, &r.key, &r.value)).collect::<Vec<_>>(),
        records.iter().map(|r| (&r.collection, &r.key, &r.value)).collect::<Vec<_>>()
    );
    let mut revs: Vec<_> = all.iter().map(|r| r.rev).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 3, "each record has its own rev");
    // Later writes keep counting up from the imported revs.
    assert!(s.put(&c("a"), &k("z"), b"1", Precondition::None).unwrap() > *revs.iter().max().unwrap());
    // Only an empty store takes an import, and a refused one changes nothing.
    let err = s.import([Ok(rec("c", "x", "1"))]).unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(s.get(&c("c"), &k("x")).unwrap(), None);
    drop(f.store);
    let s = reopen(kind, f.dir.path(), &f.key);
    assert_eq!(s.get(&c("a"), &k("x")).unwrap().unwrap().value, records[0].value, "durable across reopen");
    assert_eq!(s.verify().unwrap().records, 4);
}

fn import_over_quota_writes_nothing(kind: EngineKind) {
    let each = charged_bytes(&c("q"), &k("k0"), 9);
    let f = fixture(kind, 10 * each - 1);
    let s = &f.store;
    let records: Vec<_> =
        (0..10).map(|i| ImportRecord { collection: c("q"), key: k(&format!("k{i}")), value: vec![b'1'; 9] }).collect();
    // Ten records need one byte more than the quota.
    let err = s.import(records.clone().into_iter().map(Ok)).unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded);
    assert_eq!(s.usage().unwrap(), Usage::default());
    assert_eq!(s.scan(None, 10, usize::MAX).unwrap().records, vec![]);
    assert_eq!(s.verify().unwrap(), Usage::default());
    // Nine fit; the store is still empty so this one is taken.
    assert_eq!(s.import(records[..9].iter().cloned().map(Ok)).unwrap(), Usage { records: 9, bytes: 9 * each });
}

fn scan_then_import_restores_another_store(kind: EngineKind) {
    let from = fixture(kind, u64::MAX);
    for i in 0..250 {
        let col = format!("c{}", i % 7);
        from.store.put(&c(&col), &k(&format!("key{i}")), format!("[{i}]").as_bytes(), Precondition::None).unwrap();
    }
    let scanned = scan_all(&from.store, 64, 1000);
    // Into the other engine too: the scan's order is the same whichever engine holds the data.
    for into_kind in EngineKind::ALL {
        let into = fixture(into_kind, u64::MAX);
        let records = scanned
            .iter()
            .map(|r| Ok(ImportRecord { collection: r.collection.clone(), key: r.key.clone(), value: r.value.clone() }));
        into.store.import(records).unwrap();
        let again = scan_all(&into.store, 1000, usize::MAX);
        let strip = |v: &[ScannedRecord]| {
            v.iter().map(|r| (r.collection.clone(), r.key.clone(), r.value.clone())).collect::<Vec<_>>()
        };
        assert_eq!(strip(&again), strip(&scanned));
        assert_eq!(into.store.usage().unwrap(), from.store.usage().unwrap());
    }
}

fn an_import_that_fails_part_way_writes_nothing(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    let s = &f.store;
    let rec = |key: &str| Ok(ImportRecord { collection: c("a"), key: k(key), value: b"1".to_vec() });
    let broken = vec![rec("x"), rec("y"), Err(Error::invalid("the archive broke off")), rec("z")];
    assert_eq!(s.import(broken).unwrap_err().message, "the archive broke off");
    assert_eq!(s.usage().unwrap(), Usage::default());
    assert_eq!(s.scan(None, 10, usize::MAX).unwrap().records, vec![]);
    assert_eq!(s.verify().unwrap(), Usage::default());
    assert_eq!(s.import(vec![rec("x"), rec("y")]).unwrap().records, 2);
}

/// A snapshot is one moment: taken while another thread writes, it opens as a store whose
/// counters agree with its records (a torn copy would not), holding the log and everything
/// acknowledged before it began, and nothing written after it ended.
fn a_snapshot_is_one_moment_while_writes_go_on(kind: EngineKind) {
    let f = fixture(kind, u64::MAX);
    for i in 0..200 {
        f.store
            .put(&c("notes"), &k(&format!("n{i:03}")), format!("{{\"i\":{i}}}").as_bytes(), Precondition::None)
            .unwrap();
    }
    f.store.append_log(&[b"e1".to_vec(), b"e2".to_vec()], 10).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let into = f.dir.path().join("snap");
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                f.store.put(&c("busy"), &k(&format!("w{}", n % 300)), &[b'x'; 512], Precondition::None).unwrap();
                n += 1;
            }
            n
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.store.snapshot(&into).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(written >= 50);
    f.store.put(&c("notes"), &k("after"), b"1", Precondition::None).unwrap();
    let copy = reopen(kind, &into, &f.key);
    let usage = copy.verify().unwrap();
    assert!(usage.records >= 200, "{usage:?}");
    for i in [0, 99, 199] {
        let got = copy.get(&c("notes"), &k(&format!("n{i:03}"))).unwrap().unwrap();
        assert_eq!(got.value, format!("{{\"i\":{i}}}").into_bytes());
    }
    assert_eq!(copy.get(&c("notes"), &k("after")).unwrap(), None);
    let log: Vec<Vec<u8>> = copy.read_log(None, 10).unwrap().into_iter().map(|(_, e)| e).collect();
    assert_eq!(log, vec![b"e2".to_vec(), b"e1".to_vec()]);
    // A copy of its sealed values only: another key opens nothing in it.
    drop(copy);
    let other = Store::open(kind, &into, &DataKey::generate(), StoreOptions { quota_bytes: u64::MAX }).unwrap();
    assert!(other.get(&c("notes"), &k("n000")).is_err());
    // Never over what is there.
    let err = f.store.snapshot(&into).unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err:?}");
}

macro_rules! engine_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::$case(super::EngineKind::Sqlite) } )*
        }
        mod rocksdb {
            $( #[test] fn $case() { super::$case(super::EngineKind::Rocksdb) } )*
        }
    };
}

engine_suite!(
    put_get_delete_with_revs,
    list_is_ordered_prefixed_and_paged,
    list_pages_stop_at_their_byte_budget,
    if_match_star_requires_the_record_to_exist,
    tiny_records_are_charged_what_they_take,
    values_are_encrypted_on_disk_and_bound_to_their_key,
    quota_refuses_growth_and_writes_nothing,
    log_appends_reads_newest_first_and_prunes,
    reopening_keeps_data_and_schema,
    verify_agrees_with_counters,
    engine_detected_from_disk,
    scan_walks_every_collection_in_key_order,
    import_writes_everything_at_once_with_new_revs,
    import_over_quota_writes_nothing,
    an_import_that_fails_part_way_writes_nothing,
    scan_then_import_restores_another_store,
    a_snapshot_is_one_moment_while_writes_go_on,
);
