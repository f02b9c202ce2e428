use super::*;
use selfcloud_core::ErrorCode;

fn rec(collection: &str, key: &str, value: &str) -> ScannedRecord {
    ScannedRecord {
        collection: Collection::parse(collection).unwrap(),
        key: RecordKey::parse(key).unwrap(),
        rev: 1,
        value: value.as_bytes().to_vec(),
    }
}

fn write(records: &[ScannedRecord], part_bytes: usize) -> (Vec<u8>, Manifest) {
    let mut w = ArchiveWriter::new(1_700_000_000, part_bytes);
    let mut out = Vec::new();
    for r in records {
        w.push(r).unwrap();
        out.extend(w.take());
    }
    let (rest, manifest) = w.finish().unwrap();
    out.extend(rest);
    (out, manifest)
}

/// The archive's files, in order.
fn files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(archive);
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

/// A tar of exactly these files, under exactly these names.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw name bytes: `set_path` would refuse the path tricks some tests need.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Replaces the manifest with `edit` applied to it (so hashes can be made to agree with a change).
fn with_manifest(mut files: Vec<(String, Vec<u8>)>, edit: impl FnOnce(&mut Manifest)) -> Vec<(String, Vec<u8>)> {
    let (_, bytes) = files.iter_mut().find(|(p, _)| p == MANIFEST_PATH).unwrap();
    let mut manifest: Manifest = serde_json::from_slice(bytes).unwrap();
    edit(&mut manifest);
    *bytes = serde_json::to_vec(&manifest).unwrap();
    files
}

/// Rewrites part `path` and fixes its size and hash in the manifest, as a careful forger would.
fn forge_part(files: Vec<(String, Vec<u8>)>, path: &str, data: &[u8]) -> Vec<u8> {
    let mut files = with_manifest(files, |m| {
        let part = m.parts.iter_mut().find(|p| p.path == path).unwrap();
        part.bytes = data.len() as u64;
        part.sha256 = hex::encode(Sha256::digest(data));
    });
    files.iter_mut().find(|(p, _)| p == path).unwrap().1 = data.to_vec();
    tar_of(&files)
}

fn refused(archive: &[u8]) -> String {
    let err = read(archive, 1 << 20).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    err.message
}

fn sample() -> Vec<ScannedRecord> {
    vec![
        rec("a", "1", r#"{"n":1}"#),
        rec("a", "2", "null"),
        rec("a", "3", "{\n  \"pretty\": true\n}"),
        rec("a", "4", " 7 "),
        rec("b.c", "x:y@z", r#""é — ✓""#),
        rec("b.c", "y", "[1,2,{\"deep\":[]}]"),
    ]
}

#[test]
fn every_value_comes_back_byte_for_byte_in_order() {
    let records = sample();
    let (archive, manifest) = write(&records, PART_BYTES);
    assert_eq!(manifest.records, 6);
    assert_eq!(
        manifest.parts.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
        ["records/a/000001.jsonl", "records/b.c/000001.jsonl"]
    );
    let names: Vec<String> = files(&archive).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names.last().map(String::as_str), Some(MANIFEST_PATH), "the manifest comes last");
    let (read_manifest, back) = read(&archive, 1 << 20).unwrap();
    assert_eq!(read_manifest, manifest);
    let want: Vec<_> = records.iter().map(|r| (r.collection.clone(), r.key.clone(), r.value.clone())).collect();
    let got: Vec<_> = back.into_iter().map(|r| (r.collection, r.key, r.value)).collect();
    assert_eq!(got, want);
}

#[test]
fn large_collections_are_cut_into_parts_and_streamed() {
    let records: Vec<_> =
        (0..300).map(|i| rec("big", &format!("k{i:04}"), &format!("\"{}\"", "x".repeat(100)))).collect();
    let mut w = ArchiveWriter::new(0, 4096);
    let mut archive = Vec::new();
    for r in &records {
        w.push(r).unwrap();
        archive.extend(w.take());
    }
    assert!(archive.len() > 4096, "whole parts leave before the end");
    let (rest, manifest) = w.finish().unwrap();
    archive.extend(rest);
    assert!(manifest.parts.len() > 5, "{}", manifest.parts.len());
    assert!(manifest.parts.iter().all(|p| p.bytes < 4096 + 200));
    assert_eq!(manifest.parts.iter().map(|p| p.records).sum::<u64>(), 300);
    let (_, back) = read(&archive, 1 << 20).unwrap();
    assert_eq!(
        back.iter().map(|r| r.key.to_string()).collect::<Vec<_>>(),
        records.iter().map(|r| r.key.to_string()).collect::<Vec<_>>()
    );
}

#[test]
fn an_empty_instance_exports_to_an_archive_of_only_a_manifest() {
    let (archive, manifest) = write(&[], PART_BYTES);
    assert_eq!((manifest.records, manifest.parts.len()), (0, 0));
    assert_eq!(read(&archive, 1 << 20).unwrap().1, vec![]);
}

#[test]
fn damage_anywhere_is_refused_with_what_is_wrong() {
    let (archive, _) = write(&sample(), PART_BYTES);
    let original = files(&archive);
    let part = "records/a/000001.jsonl";

    // A flipped byte in a part (inside a value, so every line still reads): its hash no longer matches.
    let mut flipped = original.clone();
    let at = flipped[0].1.windows(5).position(|w| w == b"\"n\":1").unwrap() + 4;
    flipped[0].1[at] ^= 1;
    assert!(refused(&tar_of(&flipped)).contains("SHA-256"));
    // Cut short, no manifest, an extra or a missing file, something that is not tar at all.
    assert!(refused(&archive[..archive.len() / 2]).contains("not a valid selfcloud export"));
    let no_manifest: Vec<_> = original.iter().filter(|(p, _)| p != MANIFEST_PATH).cloned().collect();
    assert!(refused(&tar_of(&no_manifest)).contains("no manifest"));
    let mut extra = original.clone();
    extra.insert(extra.len() - 1, ("records/c/000001.jsonl".into(), b"{\"key\":\"1\",\"value\":1}\n".to_vec()));
    assert!(refused(&tar_of(&extra)).contains("not in the manifest"));
    // Parts in another order than the manifest's.
    let mut swapped = original.clone();
    swapped.swap(0, 1);
    assert!(refused(&tar_of(&swapped)).contains("out of order"));
    // Anything after the manifest.
    let mut late = original.clone();
    late.push(("records/z/000001.jsonl".into(), b"{\"key\":\"1\",\"value\":1}\n".to_vec()));
    assert!(refused(&tar_of(&late)).contains("after manifest.json"));
    let missing: Vec<_> = original.iter().filter(|(p, _)| p != part).cloned().collect();
    assert!(refused(&tar_of(&missing)).contains("missing"));
    assert!(refused(b"definitely not a tar archive").contains("not a valid selfcloud export"));
    // A path trick is just a file the manifest does not name.
    let mut trick = original.clone();
    trick.insert(0, ("records/../../etc/passwd".into(), b"x".to_vec()));
    assert!(refused(&tar_of(&trick)).contains("not in the manifest"));

    // Forgeries with agreeing hashes: counts, names, values and duplicates are still checked.
    let forged = |data: &str| refused(&forge_part(original.clone(), part, data.as_bytes()));
    assert!(forged("{\"key\":\"1\",\"value\":1}\n").contains("holds 1 records, the manifest says 4"));
    assert!(forged("{\"key\":\"../x\",\"value\":1}\n").contains("line 1"));
    assert!(forged("{\"key\":\"1\",\"value\":1}").contains("line break"));
    assert!(forged("{\"key\":\"1\"}\n").contains("exactly one of value and value_text"));
    assert!(forged("{\"key\":\"1\",\"value_text\":\"{oops\"}\n").contains("not JSON"));
    assert!(forged("{\"key\":\"1\",\"value\":1,\"rev\":9}\n").contains("unknown field"));
    let dup = "{\"key\":\"1\",\"value\":1}\n{\"key\":\"1\",\"value\":2}\n{\"key\":\"5\",\"value\":1}\n{\"key\":\"6\",\"value\":1}\n";
    assert!(forged(dup).contains("appears twice"));
    let big = format!("{{\"key\":\"1\",\"value\":\"{}\"}}\n", "x".repeat(2 << 20));
    assert!(forged(&big).contains("over"));

    // The manifest itself: another format, a wrong total, a bad collection, a part out of place.
    let edited = |edit: fn(&mut Manifest)| refused(&tar_of(&with_manifest(original.clone(), edit)));
    assert!(edited(|m| m.version = 2).contains("version 2"));
    assert!(edited(|m| m.records += 1).contains("the manifest says 7"));
    assert!(edited(|m| m.parts[0].collection = "A/..".into()).contains("records/a/000001.jsonl"));
    assert!(edited(|m| m.parts[0].path = "records/a/000002.jsonl".into()).contains("out of place"));
}

#[test]
fn only_plain_files_are_accepted() {
    let (archive, _) = write(&sample(), PART_BYTES);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "records/a/000001.jsonl", "/etc/passwd").unwrap();
    for (path, data) in files(&archive) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    assert!(refused(&b.into_inner().unwrap()).contains("other than plain files"));
}

#[test]
fn reading_streams_one_line_at_a_time_and_hands_records_on_in_order() {
    // A reader that never gives more than 7 bytes at once: nothing relies on whole parts.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let records = sample();
    let (archive, manifest) = write(&records, 64);
    let mut seen = Vec::new();
    let read_manifest = walk(Trickle(&archive), 1 << 20, |r| {
        seen.push(r.key.to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(read_manifest, manifest);
    assert_eq!(seen, records.iter().map(|r| r.key.to_string()).collect::<Vec<_>>());
    // A record handler's error stops the walk with that error.
    let err = walk(archive.as_slice(), 1 << 20, |_| Err(Error::conflict("stop"))).unwrap_err();
    assert_eq!(err.message, "stop");
}
