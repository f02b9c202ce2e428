//! `selfcloud bench store`: the record store's API beside the bare engine under it.
//!
//! Per engine, on the same data (N records of 1 KiB in one collection): random point reads,
//! random overwrites (durable on both sides: SQLite WAL with `synchronous=FULL`, RocksDB synced
//! batches) and lists of 100 records, each through `selfcloud_store::Store` (validation,
//! encryption, counters, quota) and through plain rusqlite / rocksdb with plaintext values. The
//! two sides take turns for several rounds and each figure is the median, so drift on a shared
//! machine falls on both alike. Both sides have the same table shape (SQLite) or options
//! (RocksDB); both are reopened after loading, so each reads from its files; a read hands the
//! value back in memory the caller owns on both sides; and every overwrite writes different
//! bytes (an engine may skip a write that changes nothing, which would flatter the bare side).
//! A third figure, one open of a sealed 1 KiB value with the store's own cipher, is the floor
//! that encryption at rest alone sets under a read.

use super::load::Rng;
use super::{record_key, record_value};
use anyhow::ensure;
use rusqlite::{params, Connection, OptionalExtension};
use selfcloud_core::{Collection, RecordKey};
use selfcloud_store::{DataKey, EngineKind, Precondition, Sealer, Store, StoreOptions};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct StoreBenchArgs {
    /// Records of 1 KiB written before measuring.
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Measured seconds of each phase, per side and round.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Rounds in which the two sides take turns; each figure is the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Only this engine (default: both).
    #[arg(long = "store")]
    pub store: Option<EngineKind>,
}

const COLLECTION: &str = "bench";
/// Keys are `k00000`…: a four-character prefix `kXYZ` matches exactly 100 records.
const LIST_LEN: usize = 100;

/// One side of the comparison: the same three operations.
trait Side {
    /// The record's value, in memory the caller owns (empty if absent): what a reader needs.
    fn get(&mut self, key: &str) -> anyhow::Result<Vec<u8>>;
    fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()>;
    /// Records whose key starts with `prefix`, at most `LIST_LEN`; returns how many.
    fn list(&mut self, prefix: &str) -> anyhow::Result<usize>;
}

struct Ours(Store);

impl Side for Ours {
    fn get(&mut self, key: &str) -> anyhow::Result<Vec<u8>> {
        let record = self.0.get(&Collection::parse(COLLECTION)?, &RecordKey::parse(key)?)?;
        Ok(record.map(|r| r.value).unwrap_or_default())
    }
    fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.0.put(&Collection::parse(COLLECTION)?, &RecordKey::parse(key)?, value, Precondition::None)?;
        Ok(())
    }
    fn list(&mut self, prefix: &str) -> anyhow::Result<usize> {
        Ok(self.0.list(&Collection::parse(COLLECTION)?, prefix, LIST_LEN, usize::MAX, None)?.records.len())
    }
}

/// rusqlite alone: the same table shape, plaintext values, the same durability.
struct BareSqlite(Connection);

impl BareSqlite {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, collection TEXT NOT NULL,
                 key TEXT NOT NULL, value BLOB NOT NULL, UNIQUE (collection, key));",
        )?;
        Ok(BareSqlite(conn))
    }
}

impl Side for BareSqlite {
    fn get(&mut self, key: &str) -> anyhow::Result<Vec<u8>> {
        let mut stmt = self.0.prepare_cached("SELECT value FROM records WHERE collection = ?1 AND key = ?2")?;
        let value: Option<Vec<u8>> = stmt.query_row(params![COLLECTION, key], |r| r.get(0)).optional()?;
        Ok(value.unwrap_or_default())
    }
    fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO records (collection, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![COLLECTION, key, value])?;
        Ok(())
    }
    fn list(&mut self, prefix: &str) -> anyhow::Result<usize> {
        let mut stmt = self.0.prepare_cached(
            "SELECT key, value FROM records WHERE collection = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
        )?;
        let upper = format!("{prefix}\u{7f}");
        let rows = stmt.query_map(params![COLLECTION, prefix, upper, LIST_LEN as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        Ok(rows.count())
    }
}

/// rocksdb alone: `collection\0key` -> plaintext value, synced writes.
struct BareRocks(rocksdb::DB);

impl BareRocks {
    fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(BareRocks(rocksdb::DB::open(&selfcloud_store::rocksdb_options(), path)?))
    }
    fn key(key: &str) -> Vec<u8> {
        [COLLECTION.as_bytes(), b"\0", key.as_bytes()].concat()
    }
}

impl Side for BareRocks {
    fn get(&mut self, key: &str) -> anyhow::Result<Vec<u8>> {
        // Pinned, then copied once into the caller's memory (as rusqlite hands back a value).
        Ok(self.0.get_pinned(Self::key(key))?.map(|v| v.to_vec()).unwrap_or_default())
    }
    fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        Ok(self.0.put_opt(Self::key(key), value, &opts)?)
    }
    fn list(&mut self, prefix: &str) -> anyhow::Result<usize> {
        let (lower, mut upper) = (Self::key(prefix), Self::key(prefix));
        upper.push(0x7f);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        let mut n = 0;
        for item in self.0.iterator_opt(rocksdb::IteratorMode::From(&lower, rocksdb::Direction::Forward), opts) {
            let (_k, v) = item?;
            std::hint::black_box(v.len());
            n += 1;
            if n == LIST_LEN {
                break;
            }
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    List,
}

impl Op {
    const ALL: [Op; 3] = [Op::Read, Op::Write, Op::List];
    fn name(self) -> &'static str {
        match self {
            Op::Read => "random 1 KiB reads",
            Op::Write => "random 1 KiB overwrites",
            Op::List => "lists of 100",
        }
    }
}

/// Operations per second of `op` on `side` for `duration`, checking every answer.
fn measure(side: &mut dyn Side, op: Op, keys: &[String], value: &[u8], duration: Duration) -> anyhow::Result<f64> {
    let mut rng = Rng(0x5EED);
    let mut written = value.to_vec();
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        // A batch between clock reads keeps the clock out of the figure.
        for _ in 0..16 {
            match op {
                Op::Read => {
                    let got = side.get(&keys[rng.below(keys.len())])?;
                    ensure!(got.len() == value.len() && got[0] == value[0], "a read returned {} bytes", got.len());
                }
                Op::Write => {
                    // A new number inside the JSON string each time: every write changes the record.
                    written[9..25].copy_from_slice(format!("{n:016}").as_bytes());
                    side.put(&keys[rng.below(keys.len())], &written)?
                }
                Op::List => {
                    // `k` and the first three of five digits: the 100 keys of one group.
                    let prefix = &keys[rng.below(keys.len() / LIST_LEN) * LIST_LEN][..4];
                    let got = side.list(prefix)?;
                    ensure!(got == LIST_LEN, "a list of {prefix} returned {got} records");
                }
            }
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Opens of one sealed 1 KiB value per second with the store's own [`Sealer`], the value bound
/// to its name as the store binds it. Each open starts from a fresh copy of the sealed bytes, as
/// a read does from what the engine hands back.
fn aead_opens_per_sec(value: &[u8], duration: Duration) -> anyhow::Result<f64> {
    let sealer = Sealer::new(&DataKey::generate());
    let aad = b"rec\0bench\0k00000";
    let sealed = sealer.seal(aad, value)?;
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        for _ in 0..16 {
            let plain = sealer.open(aad, sealed.clone())?;
            ensure!(plain.len() == value.len(), "an open returned {} bytes", plain.len());
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct EngineFigures {
    engine: EngineKind,
    /// (op, ours per second, bare per second)
    rows: Vec<(Op, f64, f64)>,
}

fn bench_engine(engine: EngineKind, args: &StoreBenchArgs, dir: &Path) -> anyhow::Result<EngineFigures> {
    let keys: Vec<String> = (0..args.records).map(record_key).collect();
    let value = record_value();
    let ours_dir = dir.join(format!("ours-{engine}"));
    std::fs::create_dir_all(&ours_dir)?;
    let key = DataKey::generate();
    let options = StoreOptions { quota_bytes: u64::MAX };
    let mut ours = Ours(Store::create(engine, &ours_dir, &key, options)?);
    let open_bare = || -> anyhow::Result<Box<dyn Side>> {
        Ok(match engine {
            EngineKind::Sqlite => Box::new(BareSqlite::open(&dir.join("bare.db"))?),
            EngineKind::Rocksdb => Box::new(BareRocks::open(&dir.join("bare.rocksdb"))?),
        })
    };
    let mut bare = open_bare()?;
    super::progress(format_args!("store {engine}: writing {} records to each side", keys.len()));
    for key in &keys {
        ours.put(key, &value)?;
        bare.put(key, &value)?;
    }
    // Both sides start from their files, as after a restart: where a write history left records
    // (RocksDB's memtable, which our counters fill sooner) would otherwise decide the read figures.
    drop((ours, bare));
    let mut ours = Ours(Store::open(engine, &ours_dir, &key, options)?);
    let mut bare = open_bare()?;
    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for op in Op::ALL {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            // Alternate who goes first, so neither always gets the warmer cache.
            if round % 2 == 0 {
                a.push(measure(&mut ours, op, &keys, &value, duration)?);
                b.push(measure(bare.as_mut(), op, &keys, &value, duration)?);
            } else {
                b.push(measure(bare.as_mut(), op, &keys, &value, duration)?);
                a.push(measure(&mut ours, op, &keys, &value, duration)?);
            }
        }
        let (ours_rate, bare_rate) = (median(a), median(b));
        super::progress(format_args!("store {engine}: {}: {ours_rate:.0}/s ours, {bare_rate:.0}/s bare", op.name()));
        rows.push((op, ours_rate, bare_rate));
    }
    Ok(EngineFigures { engine, rows })
}

pub fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    ensure!((LIST_LEN * 10..100_000).contains(&args.records), "--records must be 1000 to 99900");
    ensure!(args.records.is_multiple_of(LIST_LEN), "--records must be a multiple of {LIST_LEN}");
    ensure!(args.seconds >= 1 && args.rounds >= 1, "--seconds and --rounds must be at least 1");
    let dir = tempfile::Builder::new().prefix("selfcloud-bench-store-").tempdir()?;
    let engines = match args.store {
        Some(e) => vec![e],
        None => EngineKind::ALL.to_vec(),
    };
    let figures =
        engines.into_iter().map(|e| bench_engine(e, &args, dir.path())).collect::<anyhow::Result<Vec<_>>>()?;
    let duration = Duration::from_secs(args.seconds);
    let aead =
        median((0..args.rounds).map(|_| aead_opens_per_sec(&record_value(), duration)).collect::<anyhow::Result<_>>()?);

    println!();
    println!(
        "store API beside the bare engine: {} records of 1 KiB, median of {} rounds of {} s, one thread",
        args.records, args.rounds, args.seconds
    );
    println!("{:<8} {:<24} {:>12} {:>12} {:>7}", "engine", "operation", "ours/s", "bare/s", "ratio");
    let mut json = Vec::new();
    for f in &figures {
        for (op, ours, bare) in &f.rows {
            println!("{:<8} {:<24} {:>12.0} {:>12.0} {:>6.2}x", f.engine.as_str(), op.name(), ours, bare, ours / bare);
            json.push(serde_json::json!({"engine": f.engine.as_str(), "op": op.name(), "ours_per_s": ours, "bare_per_s": bare, "ratio": ours / bare}));
        }
    }
    println!();
    println!("XAES-256-GCM open of 1 KiB alone (the store's cipher): {aead:.0}/s");
    for f in &figures {
        if let Some((_, ours, bare)) = f.rows.iter().find(|(op, ..)| *op == Op::Read) {
            // A read that must also open its value can go no faster than both costs added up.
            let floor = 1.0 / (1.0 / bare + 1.0 / aead);
            println!(
                "{:<8} reads: bare read + one open = {floor:.0}/s; ours is {:.2}x of that, {:.2}x of the bare read",
                f.engine.as_str(),
                ours / floor,
                ours / bare
            );
            json.push(serde_json::json!({"engine": f.engine.as_str(), "op": "bare read + AEAD open", "per_s": floor, "ours_ratio": ours / floor}));
        }
    }
    let reads_met = figures.iter().all(|f| f.rows.iter().any(|(op, o, b)| *op == Op::Read && o / b >= 0.7));
    println!(
        "target: reads through the store API >= 0.7x the bare engine: {}",
        if reads_met { "met" } else { "MISSED" }
    );
    println!("{}", serde_json::json!({"store_bench": json, "aead_open_per_s": aead}));
    Ok(())
}
