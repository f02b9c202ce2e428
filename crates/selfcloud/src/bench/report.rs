//! The table at the end of a run, and its JSON twin.

use super::load::{LoadResult, SqliteResult};
use super::{BenchArgs, Stats, VALUE_BYTES, WARMUP};
use selfcloud_core::config::KdfParams;
use serde_json::json;
use std::time::Duration;

/// Targets the figures are held against.
const SIGNUP_P50_MS: f64 = 20.0;
const GATEWAY_VS_BARE: f64 = 0.5;
const GATEWAY_PER_SEC: f64 = 20_000.0;

pub struct Figures {
    pub args: BenchArgs,
    pub signup: Stats,
    pub kdf: Stats,
    pub gateway: LoadResult,
    /// Stopping the gateway after its phase, which includes writing the rest of the audit queue.
    pub gateway_shutdown: Duration,
    pub bare: LoadResult,
    pub sqlite: SqliteResult,
}

struct Target {
    name: &'static str,
    met: bool,
    measured: String,
}

impl Figures {
    fn gateway_vs_bare(&self) -> f64 {
        self.gateway.per_sec() / self.bare.per_sec()
    }

    fn gateway_vs_sqlite(&self) -> f64 {
        self.gateway.per_sec() / self.sqlite.per_sec()
    }

    fn kdf_share(&self) -> f64 {
        self.kdf.p50_ms / self.signup.p50_ms
    }

    fn targets(&self) -> [Target; 3] {
        [
            Target {
                name: "sign-up p50 < 20 ms",
                met: self.signup.p50_ms < SIGNUP_P50_MS,
                measured: format!("{:.1} ms", self.signup.p50_ms),
            },
            Target {
                name: "gateway >= 0.5x bare handler",
                met: self.gateway_vs_bare() >= GATEWAY_VS_BARE,
                measured: format!("{:.2}x", self.gateway_vs_bare()),
            },
            Target {
                name: "gateway >= 20,000 GET/s",
                met: self.gateway.per_sec() >= GATEWAY_PER_SEC,
                measured: format!("{:.0}/s", self.gateway.per_sec()),
            },
        ]
    }
}

fn latency_row(name: &str, s: &Stats, per_sec: Option<f64>) {
    let rate = per_sec.map_or("-".to_owned(), |r| format!("{r:.0}"));
    println!("  {name:<44} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>12}", s.count, s.p50_ms, s.p99_ms, s.mean_ms, rate);
}

pub fn print(f: &Figures) {
    let a = &f.args;
    let kdf = KdfParams::default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) { "DEBUG build: figures are not representative" } else { "release build" };
    println!();
    println!("selfcloud bench ({build}; {cpus} CPUs; loopback; load generator and servers share this process)");
    println!(
        "  {} sign-ups; {} records of {VALUE_BYTES} B; {} connections; {} s measured per phase after {} s warm-up",
        a.signups,
        a.records,
        a.concurrency,
        a.seconds,
        WARMUP.as_secs()
    );
    println!("  KDF Argon2id m={} KiB t={} p={} (production default)", kdf.m_cost, kdf.t_cost, kdf.p_cost);
    println!();
    println!(
        "  {:<44} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "measure", "count", "p50 ms", "p99 ms", "mean ms", "per second"
    );
    latency_row("sign-up to ready instance (HTTP)", &f.signup, None);
    latency_row("  bare Argon2id derivation, same cost", &f.kdf, None);
    latency_row("gateway GET 1 KiB (app token, audit on)", &f.gateway.latency, Some(f.gateway.per_sec()));
    latency_row("floor A: bare axum handler GET 1 KiB", &f.bare.latency, Some(f.bare.per_sec()));
    let sqlite_name = format!("floor B: raw SQLite point read ({} threads)", f.sqlite.threads);
    println!("  {sqlite_name:<44} {:>8} {:>8} {:>8} {:>8} {:>12.0}", f.sqlite.reads, "-", "-", "-", f.sqlite.per_sec());
    println!();
    println!("  errors (non-200 or wrong body): gateway {}, bare handler {}", f.gateway.errors, f.bare.errors);
    for (name, r) in [("gateway", &f.gateway), ("bare handler", &f.bare)] {
        if let Some(e) = &r.first_error {
            println!("    first {name} error: {e}");
        }
    }
    println!(
        "  gateway shutdown after its phase (drains the audit queue): {:.0} ms",
        f.gateway_shutdown.as_secs_f64() * 1e3
    );
    println!();
    println!("  ratios");
    println!("    KDF p50 / sign-up p50          {:>6.2}  (the deliberate password-hashing cost)", f.kdf_share());
    println!("    gateway / bare handler         {:>6.2}x", f.gateway_vs_bare());
    println!("    gateway / raw SQLite           {:>6.2}x", f.gateway_vs_sqlite());
    println!();
    println!("  targets");
    let targets = f.targets();
    for t in &targets {
        let verdict = if t.met { "MET    " } else { "NOT MET" };
        println!("    [{verdict}] {:<32} measured {}", t.name, t.measured);
    }
    let met = targets.iter().filter(|t| t.met).count();
    println!("  targets met: {met} of {}", targets.len());
}

fn load_json(r: &LoadResult) -> serde_json::Value {
    json!({
        "per_sec": r.per_sec(),
        "ok": r.ok,
        "errors": r.errors,
        "p50_ms": r.latency.p50_ms,
        "p99_ms": r.latency.p99_ms,
        "mean_ms": r.latency.mean_ms,
        "max_ms": r.latency.max_ms,
    })
}

pub fn json(f: &Figures) -> String {
    let targets: serde_json::Map<String, serde_json::Value> =
        f.targets().iter().map(|t| (t.name.to_owned(), json!(t.met))).collect();
    json!({
        "release": !cfg!(debug_assertions),
        "signups": f.args.signups,
        "records": f.args.records,
        "seconds": f.args.seconds,
        "concurrency": f.args.concurrency,
        "signup": {
            "p50_ms": f.signup.p50_ms,
            "p99_ms": f.signup.p99_ms,
            "mean_ms": f.signup.mean_ms,
            "max_ms": f.signup.max_ms,
        },
        "kdf": { "runs": f.kdf.count, "p50_ms": f.kdf.p50_ms, "p99_ms": f.kdf.p99_ms },
        "gateway_get": load_json(&f.gateway),
        "gateway_shutdown_ms": f.gateway_shutdown.as_secs_f64() * 1e3,
        "bare_get": load_json(&f.bare),
        "sqlite_read": { "per_sec": f.sqlite.per_sec(), "reads": f.sqlite.reads, "threads": f.sqlite.threads },
        "ratios": {
            "kdf_over_signup_p50": f.kdf_share(),
            "gateway_over_bare": f.gateway_vs_bare(),
            "gateway_over_sqlite": f.gateway_vs_sqlite(),
        },
        "targets": targets,
    })
    .to_string()
}
