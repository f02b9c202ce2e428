//! `selfcloud bench`: sign-up latency and authorized read throughput, each beside a bare floor.
//! `bench store` and `bench crash` are the store's own figures and its crash harness.
//!
//! Everything runs in this one process, on loopback, one phase after another:
//! 1. sign-up to ready instance over HTTP, at the production KDF cost, beside a bare Argon2
//!    derivation of the same cost;
//! 2. authorized 1 KiB record reads through the gateway (OAuth app token, audit on);
//! 3. floor A: the same reads from a bare axum handler answering the bytes from memory;
//! 4. floor B: the same records read straight from a plain (unencrypted) SQLite table.

mod backup;
mod crash;
mod external;
mod gateway;
mod instances;
mod llm;
mod load;
mod report;
mod store;

use anyhow::ensure;
use bytes::Bytes;
pub(crate) use gateway::core_error;
use std::time::Duration;

/// What to measure and for how long.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A sub-bench instead of the default sign-up and read figures.
    #[command(subcommand)]
    pub bench: Option<BenchCommand>,
    /// Accounts created one after another to time sign-up (each pays the production KDF cost).
    #[arg(long, default_value_t = 200)]
    pub signups: usize,
    /// Records of 1 KiB written to the collection the read phases pick from at random.
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Measured seconds of each throughput phase (each HTTP phase also warms up for 1 s first).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent connections of the closed-loop load generator (same for gateway and bare).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also print the figures as one JSON line after the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// SIGKILL a server mid-write again and again; every acknowledged write must survive.
    Crash(crash::CrashArgs),
    /// The record store's reads, writes and lists per engine, beside the bare engine.
    Store(store::StoreBenchArgs),
    /// Serve the bare axum handler (the floor of `bench http`) in its own process.
    Floor(external::FloorArgs),
    /// Load a running `selfcloud up` and `bench floor` from this separate process, alternating.
    Http(external::HttpArgs),
    /// Both instance runtimes side by side: provision, wake, GET throughput, disk and memory.
    Instances(instances::InstancesArgs),
    /// Streamed chat through the gateway beside llama.cpp's `llama-server` on the same model.
    Llm(llm::LlmBenchArgs),
    /// Backups of one instance's store beside restic on the same files: first snapshot, a 1 %
    /// scattered change, a 1 % append, and a restore.
    Backup(backup::BackupBenchArgs),
}

impl BenchArgs {
    /// `bench http` generates load for servers in other processes.
    pub fn is_load_generator(&self) -> bool {
        matches!(self.bench, Some(BenchCommand::Http(_) | BenchCommand::Llm(_)))
    }
}

/// Bytes of every record value, serialized.
pub const VALUE_BYTES: usize = 1024;
/// Warm-up of each HTTP throughput phase, not counted.
const WARMUP: Duration = Duration::from_secs(1);
/// OS threads (one SQLite connection each) of floor B.
const SQLITE_THREADS: usize = 2;

/// Latency summary of a set of samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Nearest-rank percentiles of samples in microseconds.
    pub fn from_micros(mut samples: Vec<u64>) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
        Stats {
            count: n,
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            mean_ms: samples.iter().sum::<u64>() as f64 / n as f64 / 1e3,
            max_ms: samples[n - 1] as f64 / 1e3,
        }
    }

    pub fn from_durations(samples: &[Duration]) -> Stats {
        Stats::from_micros(samples.iter().map(|d| d.as_micros() as u64).collect())
    }
}

/// The record value: `{"data":"…"}`, exactly [`VALUE_BYTES`] bytes serialized.
pub fn record_value() -> Bytes {
    let filler_len = VALUE_BYTES - r#"{"data":""}"#.len();
    let filler: String = (0..filler_len).map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])).collect();
    let value = serde_json::to_vec(&serde_json::json!({ "data": filler })).expect("a JSON object always serializes");
    assert_eq!(value.len(), VALUE_BYTES);
    Bytes::from(value)
}

/// Key of record `i`: `k00000`, `k00001`, …
pub fn record_key(i: usize) -> String {
    format!("k{i:05}")
}

/// Only warnings and errors are logged, so logging does not weigh on the figures.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::new("warn");
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn progress(line: impl std::fmt::Display) {
    eprintln!("bench: {line}");
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.bench {
        Some(BenchCommand::Crash(crash)) => return crash::run(crash).await,
        Some(BenchCommand::Floor(floor)) => return external::floor(floor).await,
        Some(BenchCommand::Http(http)) => {
            init_logging();
            return external::http(http).await;
        }
        Some(BenchCommand::Llm(a)) => {
            init_logging();
            return llm::run(a).await;
        }
        Some(BenchCommand::Instances(a)) => {
            init_logging();
            return instances::run(a).await;
        }
        Some(BenchCommand::Backup(a)) => {
            init_logging();
            return backup::run(a).await;
        }
        Some(BenchCommand::Store(store)) => {
            init_logging();
            return tokio::task::spawn_blocking(move || store::run(store)).await?;
        }
        None => {}
    }
    ensure!(args.signups >= 1, "--signups must be at least 1");
    ensure!((1..=100_000).contains(&args.records), "--records must be 1 to 100000");
    ensure!(args.seconds >= 1, "--seconds must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    init_logging();

    let dir = tempfile::TempDir::new()?;
    let value = record_value();
    let measure = Duration::from_secs(args.seconds);
    let load_config = load::LoadConfig {
        concurrency: args.concurrency,
        warmup: WARMUP,
        measure,
        records: args.records,
        expected_len: value.len(),
    };

    // 1. Sign-up, then the bare KDF of the same cost.
    let gw = gateway::start(dir.path().join("home")).await?;
    progress(format_args!("gateway on {}; {} sign-ups at the production KDF cost", gw.base, args.signups));
    let signup = gateway::sign_ups(&gw.base, args.signups).await?;
    let kdf_runs = (args.signups / 10).max(1);
    progress(format_args!("{kdf_runs} bare Argon2 derivations"));
    let kdf = gateway::kdf_baseline(kdf_runs).await?;

    // 2. Authorized reads through the gateway.
    progress(format_args!("OAuth app token; writing {} records of {} bytes", args.records, value.len()));
    let token = gateway::prepare_reader(&gw.base, args.records, &value).await?;
    progress(format_args!(
        "gateway GETs: {} connections, {} s warm-up + {} s",
        args.concurrency,
        WARMUP.as_secs(),
        args.seconds
    ));
    let gateway_load = load::closed_loop(&load_config, &gw.base, &token).await?;
    let shutdown = gw.stop().await?;

    // 3. Floor A: a bare handler, same client and load.
    let bare = load::BareServer::start(value.clone()).await?;
    progress(format_args!("bare handler GETs on {}", bare.base));
    let bare_load = load::closed_loop(&load_config, &bare.base, &token).await?;
    bare.stop().await?;

    // 4. Floor B: raw SQLite point reads.
    progress(format_args!("raw SQLite point reads on {SQLITE_THREADS} threads for {} s", args.seconds));
    let db = dir.path().join("floor.db");
    let (records, floor_value) = (args.records, value.clone());
    let sqlite =
        tokio::task::spawn_blocking(move || load::sqlite_floor(&db, records, &floor_value, SQLITE_THREADS, measure))
            .await??;

    let figures = report::Figures {
        args: args.clone(),
        signup: Stats::from_durations(&signup),
        kdf: Stats::from_durations(&kdf),
        gateway: gateway_load,
        gateway_shutdown: shutdown,
        bare: bare_load,
        sqlite,
    };
    report::print(&figures);
    if args.json {
        println!("{}", report::json(&figures));
    }
    let errors = figures.gateway.errors + figures.bare.errors;
    ensure!(errors == 0, "{errors} requests did not answer 200 with the record; the figures above are not valid");
    Ok(())
}
