//! The export archive: a whole instance as one tar file a user can take anywhere.
//!
//! ```text
//! records/<collection>/000001.jsonl   one record a line: {"key":"…","value":<the JSON as stored>}
//! records/<collection>/000002.jsonl   (a collection is cut into parts of about PART_BYTES)
//! manifest.json                       last: counts and the SHA-256 of every part
//! ```
//!
//! The manifest comes last so the archive streams: each part is written as soon as it is full,
//! and nothing but the current part is held in memory. Reading streams too ([`walk`]), one line
//! at a time: a first pass checks everything (every part present, its hash, its counts, every
//! name and value, their order) and a second feeds the import, so a damaged or tampered archive
//! imports nothing and a large one never sits in memory.
//!
//! A value is kept byte for byte. JSON whitespace may include line breaks, which a JSON line
//! cannot hold; such a value travels as a string in `value_text` instead of `value`.

use selfcloud_core::json::check_value;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use selfcloud_store::{ImportRecord, ScannedRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

pub const FORMAT: &str = "selfcloud-export";
pub const VERSION: u32 = 1;
pub const MANIFEST_PATH: &str = "manifest.json";
/// A part is closed once it holds this many bytes (one record may take it past).
pub const PART_BYTES: usize = 4 << 20;
/// The archive's media type.
pub const CONTENT_TYPE: &str = "application/x-tar";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Unix seconds.
    pub exported_at: u64,
    pub records: u64,
    pub parts: Vec<PartEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub path: String,
    pub collection: String,
    pub records: u64,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

fn part_path(collection: &str, seq: usize) -> String {
    format!("records/{collection}/{seq:06}.jsonl")
}

#[derive(Serialize)]
struct LineOut<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_text: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    key: String,
    /// `Some` whenever the field is there, `null` included (a plain `Option` would read `null`
    /// as absent).
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    value_text: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Builds an archive record by record; [`ArchiveWriter::take`] hands out what is ready to send.
pub struct ArchiveWriter {
    tar: tar::Builder<Vec<u8>>,
    exported_at: u64,
    part_bytes: usize,
    part: Vec<u8>,
    part_collection: Option<Collection>,
    part_records: u64,
    /// Parts so far of the current collection.
    part_seq: usize,
    parts: Vec<PartEntry>,
    records: u64,
}

impl ArchiveWriter {
    /// Parts are cut at about `part_bytes` ([`PART_BYTES`] in production).
    pub fn new(exported_at: u64, part_bytes: usize) -> Self {
        ArchiveWriter {
            tar: tar::Builder::new(Vec::new()),
            exported_at,
            part_bytes,
            part: Vec::new(),
            part_collection: None,
            part_records: 0,
            part_seq: 0,
            parts: Vec::new(),
            records: 0,
        }
    }

    /// Adds a record; records come in (collection, key) order, as a scan gives them.
    pub fn push(&mut self, record: &ScannedRecord) -> Result<()> {
        if self.part_collection.as_ref() != Some(&record.collection) {
            self.close_part()?;
            self.part_collection = Some(record.collection.clone());
            self.part_seq = 0;
        } else if self.part.len() >= self.part_bytes {
            self.close_part()?;
        }
        // A damaged value is carried repaired rather than cutting the archive off.
        let (text, _) = crate::json_text(&record.value);
        let text = text.as_ref();
        let raw: Box<RawValue> = RawValue::from_string(text.to_owned()).map_err(Error::internal)?;
        // Inline only what a JSON line carries byte for byte: no line break, no outer whitespace
        // (which `RawValue` trims).
        let inline = raw.get() == text && !text.contains(['\n', '\r']);
        let line = LineOut {
            key: record.key.as_str(),
            value: inline.then_some(raw.as_ref()),
            value_text: (!inline).then_some(text),
        };
        serde_json::to_writer(&mut self.part, &line).map_err(Error::internal)?;
        self.part.push(b'\n');
        self.part_records += 1;
        self.records += 1;
        Ok(())
    }

    /// Bytes of the archive ready to send (whole parts so far).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.tar.get_mut())
    }

    /// Closes the last part, writes the manifest and the end of the archive; the rest of the bytes.
    pub fn finish(mut self) -> Result<(Vec<u8>, Manifest)> {
        self.close_part()?;
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            exported_at: self.exported_at,
            records: self.records,
            parts: std::mem::take(&mut self.parts),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(Error::internal)?;
        self.append(MANIFEST_PATH, &json)?;
        let bytes = self.tar.into_inner().map_err(Error::internal)?;
        Ok((bytes, manifest))
    }

    fn close_part(&mut self) -> Result<()> {
        let Some(collection) = &self.part_collection else { return Ok(()) };
        if self.part_records == 0 {
            return Ok(());
        }
        self.part_seq += 1;
        let path = part_path(collection.as_str(), self.part_seq);
        let part = std::mem::take(&mut self.part);
        self.parts.push(PartEntry {
            path: path.clone(),
            collection: collection.to_string(),
            records: self.part_records,
            bytes: part.len() as u64,
            sha256: hex::encode(Sha256::digest(&part)),
        });
        self.part_records = 0;
        self.append(&path, &part)
    }

    fn append(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(self.exported_at);
        header.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(&mut header, path, data).map_err(Error::internal)
    }
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not a valid selfcloud export: {message}"))
}

/// The longest manifest read, in bytes (a part's entry is about 150 bytes).
const MAX_MANIFEST: u64 = 4 << 20;

/// What a pass over a part learned, to hold against the manifest at the end.
struct SeenPart {
    path: String,
    bytes: u64,
    sha256: String,
    records: u64,
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    last: Option<u8>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// The collection a part's path names (`records/<collection>/<6 digits>.jsonl`), if it is one.
fn part_collection(path: &str) -> Option<Collection> {
    let rest = path.strip_prefix("records/")?;
    let (collection, file) = rest.split_once('/')?;
    let seq = file.strip_suffix(".jsonl")?;
    (seq.len() == 6 && seq.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    Collection::parse_stored(collection).ok()
}

/// Reads an archive front to back, holding one line at a time: every record is checked (its
/// name, its value, that it comes after the one before in (collection, key) order, so none
/// appears twice) and handed to `on_record`; at the end the parts seen (their bytes, SHA-256 and
/// counts) are held against the manifest, which comes last. Any fault is an `invalid_request`
/// naming it. Run it once with a no-op to check an archive before anything is written, then
/// again to feed an import; memory stays at about one value whatever the archive's size.
pub fn walk(
    reader: impl Read,
    max_value_bytes: usize,
    mut on_record: impl FnMut(ImportRecord) -> Result<()>,
) -> Result<Manifest> {
    // A value travels as a JSON string at worst, where each byte may take six (`\u00XX`).
    let max_line = 6 * max_value_bytes as u64 + 1024;
    let mut tar = tar::Archive::new(reader);
    let (mut seen, mut names, mut manifest) = (Vec::<SeenPart>::new(), BTreeSet::new(), None::<Manifest>);
    let mut last: Option<(Collection, RecordKey)> = None;
    for entry in tar.entries().map_err(|e| bad(format!("not a tar archive ({e})")))? {
        let entry = entry.map_err(|e| bad(format!("damaged tar archive ({e})")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("it holds something other than plain files"));
        }
        let path = entry.path_bytes();
        let path = std::str::from_utf8(&path).map_err(|_| bad("a file name is not UTF-8"))?.to_owned();
        if !names.insert(path.clone()) {
            return Err(bad(format!("{path} appears twice")));
        }
        if manifest.is_some() {
            return Err(bad(format!("{path} comes after {MANIFEST_PATH}")));
        }
        if path == MANIFEST_PATH {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MANIFEST + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("damaged tar archive ({e})")))?;
            if bytes.len() as u64 > MAX_MANIFEST {
                return Err(bad(format!("{MANIFEST_PATH} is over {MAX_MANIFEST} bytes")));
            }
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("{MANIFEST_PATH}: {e}")))?;
            if m.format != FORMAT || m.version != VERSION {
                return Err(bad(format!(
                    "format {} version {} (this server reads {FORMAT} {VERSION})",
                    m.format, m.version
                )));
            }
            manifest = Some(m);
            continue;
        }
        // A valid manifest names only parts; anything else cannot be in it.
        let collection = part_collection(&path).ok_or_else(|| bad(format!("{path} is not in the manifest")))?;
        let mut data = Hashing { inner: entry, hash: Sha256::new(), bytes: 0, last: None };
        let records = walk_part(&path, &collection, &mut data, max_line, max_value_bytes, &mut last, &mut on_record)?;
        if data.last != Some(b'\n') {
            return Err(bad(format!("{path} does not end with a line break")));
        }
        seen.push(SeenPart { path, bytes: data.bytes, sha256: hex::encode(data.hash.finalize()), records });
    }
    let manifest = manifest.ok_or_else(|| bad("it has no manifest.json"))?;
    check_against(&manifest, seen)?;
    Ok(manifest)
}

/// Reads one part's lines, handing each record on; returns how many there were.
fn walk_part(
    path: &str,
    collection: &Collection,
    data: &mut impl Read,
    max_line: u64,
    max_value_bytes: usize,
    last: &mut Option<(Collection, RecordKey)>,
    on_record: &mut impl FnMut(ImportRecord) -> Result<()>,
) -> Result<u64> {
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, data);
    let (mut line, mut n) = (Vec::new(), 0u64);
    loop {
        line.clear();
        let read = std::io::BufRead::read_until(&mut (&mut reader).take(max_line + 1), b'\n', &mut line)
            .map_err(|e| bad(format!("damaged tar archive ({e})")))?;
        if read == 0 {
            return Ok(n);
        }
        n += 1;
        let at = || format!("{path} line {n}");
        if line.len() as u64 > max_line {
            return Err(bad(format!("{}: the line is over {max_line} bytes", at())));
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad(format!("{} is not UTF-8", at())))?;
        let record = read_line(text.strip_suffix('\n').unwrap_or(text), collection, max_value_bytes)
            .map_err(|e| bad(format!("{}: {e}", at())))?;
        let place = (record.collection.clone(), record.key.clone());
        if last.as_ref().is_some_and(|l| *l >= place) {
            return Err(bad(format!("{}: record {}/{} appears twice or out of order", at(), place.0, place.1)));
        }
        *last = Some(place);
        on_record(record)?;
    }
}

/// One line as a record, or what is wrong with it.
fn read_line(line: &str, collection: &Collection, max_value_bytes: usize) -> std::result::Result<ImportRecord, String> {
    let parsed: LineIn = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let key = RecordKey::parse(&parsed.key).map_err(|e| e.message)?;
    let value = match (parsed.value, parsed.value_text) {
        (Some(raw), None) => {
            check_value(raw.get()).map_err(|e| e.message)?;
            raw.get().as_bytes().to_vec()
        }
        (None, Some(text)) => {
            check_value(&text).map_err(|e| format!("value_text is not JSON: {}", e.message))?;
            text.into_bytes()
        }
        _ => return Err("a record has exactly one of value and value_text".into()),
    };
    if value.len() > max_value_bytes {
        return Err(format!("the value is over {max_value_bytes} bytes"));
    }
    Ok(ImportRecord { collection: collection.clone(), key, value })
}

/// The parts seen must be exactly the manifest's, in its order, with its sizes, hashes and counts.
fn check_against(manifest: &Manifest, seen: Vec<SeenPart>) -> Result<()> {
    let mut seen: BTreeMap<String, (usize, SeenPart)> =
        seen.into_iter().enumerate().map(|(i, p)| (p.path.clone(), (i, p))).collect();
    let mut seq_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order = 0;
    let mut total = 0;
    for part in &manifest.parts {
        let collection =
            Collection::parse_stored(&part.collection).map_err(|e| bad(format!("{}: {}", part.path, e.message)))?;
        let seq = seq_of.entry(&part.collection).or_default();
        *seq += 1;
        if part.path != part_path(collection.as_str(), *seq) {
            return Err(bad(format!("part {} is out of place", part.path)));
        }
        let (at, got) = seen.remove(&part.path).ok_or_else(|| bad(format!("{} is missing", part.path)))?;
        if got.bytes != part.bytes || got.sha256 != part.sha256 {
            return Err(bad(format!("{} does not match its SHA-256 in the manifest", part.path)));
        }
        if got.records != part.records {
            return Err(bad(format!(
                "{} holds {} records, the manifest says {}",
                part.path, got.records, part.records
            )));
        }
        if at != order {
            return Err(bad(format!("part {} is out of place", part.path)));
        }
        (order, total) = (order + 1, total + got.records);
    }
    if let Some(extra) = seen.keys().next() {
        return Err(bad(format!("{extra} is not in the manifest")));
    }
    if total != manifest.records {
        return Err(bad(format!("{total} records, the manifest says {}", manifest.records)));
    }
    Ok(())
}

/// Checks a whole archive held in memory and returns its records in (collection, key) order.
pub fn read(archive: &[u8], max_value_bytes: usize) -> Result<(Manifest, Vec<ImportRecord>)> {
    let mut records = Vec::new();
    let manifest = walk(archive, max_value_bytes, |r| {
        records.push(r);
        Ok(())
    })?;
    Ok((manifest, records))
}

#[cfg(test)]
mod tests;
