//! The export archive: a whole instance as one tar file a user can take anywhere.
//!
//! ```text
//! records/<collection>/000001.jsonl   one record a line: {"key":"…","value":<the JSON as stored>}
//! records/<collection>/000002.jsonl   (a collection is cut into parts of about PART_BYTES)
//! manifest.json                       last: counts and the SHA-256 of every part
//! ```
//!
//! The manifest comes last so the archive streams: each part is written as soon as it is full,
//! and nothing but the current part is held in memory. Reading is the opposite: the whole archive
//! is checked (every part present, its hash, its counts, every name and value) before a single
//! record is handed back, so a damaged or tampered archive imports nothing.
//!
//! A value is kept byte for byte. JSON whitespace may include line breaks, which a JSON line
//! cannot hold; such a value travels as a string in `value_text` instead of `value`.

use crate::{ImportRecord, ScannedRecord};
use selfcloud_core::{Collection, Error, RecordKey, Result};
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
        let text = std::str::from_utf8(&record.value).map_err(|_| Error::internal("stored value is not UTF-8"))?;
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

/// Checks a whole archive and returns its records in (collection, key) order, ready to import.
/// Any fault (not a tar, a part missing, extra or altered, a count, name or value wrong, a
/// value over `max_value_bytes`) is an `invalid_request` naming it, and no record is returned.
pub fn read(archive: &[u8], max_value_bytes: usize) -> Result<(Manifest, Vec<ImportRecord>)> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(|e| bad(format!("not a tar archive ({e})")))? {
        let mut entry = entry.map_err(|e| bad(format!("damaged tar archive ({e})")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("it holds something other than plain files"));
        }
        let path = entry.path_bytes();
        let path = std::str::from_utf8(&path).map_err(|_| bad("a file name is not UTF-8"))?.to_owned();
        let mut data = Vec::with_capacity(entry.size().min(archive.len() as u64) as usize);
        entry.read_to_end(&mut data).map_err(|e| bad(format!("damaged tar archive ({e})")))?;
        if files.insert(path.clone(), data).is_some() {
            return Err(bad(format!("{path} appears twice")));
        }
    }
    let manifest_bytes = files.remove(MANIFEST_PATH).ok_or_else(|| bad("it has no manifest.json"))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest.json: {e}")))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(bad(format!(
            "format {} version {} (this server reads {FORMAT} {VERSION})",
            manifest.format, manifest.version
        )));
    }

    let mut records = Vec::new();
    let mut seq_of: BTreeMap<&str, usize> = BTreeMap::new();
    for part in &manifest.parts {
        let collection =
            Collection::parse(&part.collection).map_err(|e| bad(format!("{}: {}", part.path, e.message)))?;
        let seq = seq_of.entry(&part.collection).or_default();
        *seq += 1;
        if part.path != part_path(collection.as_str(), *seq) {
            return Err(bad(format!("part {} is out of place", part.path)));
        }
        let data = files.remove(&part.path).ok_or_else(|| bad(format!("{} is missing", part.path)))?;
        if data.len() as u64 != part.bytes || hex::encode(Sha256::digest(&data)) != part.sha256 {
            return Err(bad(format!("{} does not match its SHA-256 in the manifest", part.path)));
        }
        let before = records.len();
        read_part(&part.path, &collection, &data, max_value_bytes, &mut records)?;
        if (records.len() - before) as u64 != part.records {
            return Err(bad(format!(
                "{} holds {} records, the manifest says {}",
                part.path,
                records.len() - before,
                part.records
            )));
        }
    }
    if let Some(extra) = files.keys().next() {
        return Err(bad(format!("{extra} is not in the manifest")));
    }
    if records.len() as u64 != manifest.records {
        return Err(bad(format!("{} records, the manifest says {}", records.len(), manifest.records)));
    }
    records.sort_by(|a, b| (&a.collection, &a.key).cmp(&(&b.collection, &b.key)));
    let mut seen = BTreeSet::new();
    for r in &records {
        if !seen.insert((&r.collection, &r.key)) {
            return Err(bad(format!("record {}/{} appears twice", r.collection, r.key)));
        }
    }
    Ok((manifest, records))
}

fn read_part(
    path: &str,
    collection: &Collection,
    data: &[u8],
    max_value_bytes: usize,
    out: &mut Vec<ImportRecord>,
) -> Result<()> {
    let text = std::str::from_utf8(data).map_err(|_| bad(format!("{path} is not UTF-8")))?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(bad(format!("{path} does not end with a line break")));
    };
    for (n, line) in body.split('\n').enumerate() {
        let at = || format!("{path} line {}", n + 1);
        let parsed: LineIn = serde_json::from_str(line).map_err(|e| bad(format!("{}: {e}", at())))?;
        let key = RecordKey::parse(&parsed.key).map_err(|e| bad(format!("{}: {}", at(), e.message)))?;
        let value = match (parsed.value, parsed.value_text) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(text)) => {
                serde_json::from_str::<serde::de::IgnoredAny>(&text)
                    .map_err(|e| bad(format!("{}: value_text is not JSON: {e}", at())))?;
                text.into_bytes()
            }
            _ => return Err(bad(format!("{}: a record has exactly one of value and value_text", at()))),
        };
        if value.len() > max_value_bytes {
            return Err(bad(format!("{}: the value is over {max_value_bytes} bytes", at())));
        }
        out.push(ImportRecord { collection: collection.clone(), key, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
