//! The closed-loop HTTP load generator, floor A (a bare axum handler) and floor B (raw SQLite).

use super::{record_key, Stats};
use anyhow::{ensure, Context};
use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use reqwest::StatusCode;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// SplitMix64: a small, fast, seedable generator for picking keys.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

pub struct LoadConfig {
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub records: usize,
    /// Every answer must carry exactly this many body bytes.
    pub expected_len: usize,
}

/// What one closed-loop phase measured. Only answers completed inside the measured window
/// count; errors count over warm-up too.
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    pub latency: Stats,
}

impl LoadResult {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    micros: Vec<u64>,
}

/// `concurrency` tasks, each sending `GET {base}/v1/storage/bench/<random key>` with the bearer
/// token and waiting for the whole answer before sending the next, over one shared keep-alive
/// client.
pub async fn closed_loop(config: &LoadConfig, base: &str, token: &str) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(config.concurrency)
        .build()?;
    let urls = (0..config.records)
        .map(|i| format!("{base}/v1/storage/bench/{}", record_key(i)).parse())
        .collect::<Result<Vec<reqwest::Url>, _>>()?;
    let urls = Arc::new(urls);
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))?;
    auth.set_sensitive(true);
    let measure_from = Instant::now() + config.warmup;
    let until = measure_from + config.measure;

    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..config.concurrency as u64 {
        let (client, urls, auth) = (client.clone(), urls.clone(), auth.clone());
        let expected_len = config.expected_len;
        tasks.spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF);
            let mut tally = Tally::default();
            loop {
                let url = urls[rng.below(urls.len())].clone();
                let sent = Instant::now();
                let outcome = one_get(&client, url, &auth, expected_len).await;
                let done = Instant::now();
                if done >= until {
                    return tally;
                }
                match outcome {
                    Ok(()) if done >= measure_from => {
                        tally.ok += 1;
                        tally.micros.push((done - sent).as_micros() as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
        });
    }
    let mut all = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        all.ok += tally.ok;
        all.errors += tally.errors;
        all.first_error = all.first_error.or(tally.first_error);
        all.micros.extend(tally.micros);
    }
    Ok(LoadResult {
        ok: all.ok,
        errors: all.errors,
        first_error: all.first_error,
        window: config.measure,
        latency: Stats::from_micros(all.micros),
    })
}

/// One read; anything but a 200 carrying the whole record is an error.
async fn one_get(
    client: &reqwest::Client,
    url: reqwest::Url,
    auth: &HeaderValue,
    expected_len: usize,
) -> Result<(), String> {
    let response = client
        .get(url)
        .header(header::AUTHORIZATION, auth.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("body failed: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if body.len() != expected_len {
        return Err(format!("answered {} bytes, not {expected_len}", body.len()));
    }
    Ok(())
}

/// Floor A: one route at the gateway's path answering the record's bytes from memory.
pub struct BareServer {
    pub base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl BareServer {
    pub async fn start(value: Bytes) -> anyhow::Result<BareServer> {
        Self::start_on("127.0.0.1:0".parse()?, value).await
    }

    pub async fn start_on(addr: std::net::SocketAddr, value: Bytes) -> anyhow::Result<BareServer> {
        let app = Router::new().route(
            "/v1/storage/bench/{key}",
            get(move |UrlPath(_key): UrlPath<String>| {
                let value = value.clone();
                async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], value) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task =
            tokio::spawn(
                async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await },
            );
        Ok(BareServer { base, shutdown, task })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// What floor B measured.
pub struct SqliteResult {
    pub reads: u64,
    pub threads: usize,
    pub elapsed: Duration,
}

impl SqliteResult {
    pub fn per_sec(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64()
    }
}

/// Floor B: the same records, unencrypted, in a plain WAL-mode SQLite table; random point reads
/// on `threads` OS threads, one connection each, for `duration`.
pub fn sqlite_floor(
    path: &Path,
    records: usize,
    value: &[u8],
    threads: usize,
    duration: Duration,
) -> anyhow::Result<SqliteResult> {
    let keys: Vec<String> = (0..records).map(record_key).collect();
    let mut conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "journal mode is {mode}");
    // The store's own table shape (a rowid table, a unique index on the name), plaintext values.
    conn.execute_batch("CREATE TABLE kv(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, value BLOB NOT NULL);")?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO kv(key, value) VALUES (?1, ?2)")?;
        for key in &keys {
            insert.execute(rusqlite::params![key, value])?;
        }
    }
    tx.commit()?;
    drop(conn);

    let start = Barrier::new(threads + 1);
    let (reads, elapsed) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads as u64)
            .map(|seed| {
                let (keys, start) = (&keys, &start);
                scope.spawn(move || sqlite_reader(path, keys, value.len(), seed, start, duration))
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut reads = 0;
        let mut failure = None;
        for reader in readers {
            match reader.join() {
                Ok(Ok(n)) => reads += n,
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(anyhow::anyhow!("a SQLite reader panicked")),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok((reads, began.elapsed())),
        }
    })?;
    Ok(SqliteResult { reads, threads, elapsed })
}

fn sqlite_reader(
    path: &Path,
    keys: &[String],
    expected_len: usize,
    seed: u64,
    start: &Barrier,
    duration: Duration,
) -> anyhow::Result<u64> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let opened = Connection::open_with_flags(path, flags);
    start.wait(); // even on failure, so the others are not left waiting
    let conn = opened?;
    let mut select = conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xC0FFEE);
    let until = Instant::now() + duration;
    let mut reads = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            let key = &keys[rng.below(keys.len())];
            let got: Vec<u8> = select.query_row([key], |row| row.get(0)).with_context(|| format!("reading {key}"))?;
            ensure!(got.len() == expected_len, "{key} holds {} bytes", got.len());
            reads += 1;
        }
    }
    Ok(reads)
}
