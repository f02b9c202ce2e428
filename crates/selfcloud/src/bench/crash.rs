//! `selfcloud bench crash`: proves that an acknowledged write survives SIGKILL.
//!
//! Each cycle starts `selfcloud up` (this binary, in a child process) on one home, lets W writers
//! put, overwrite and delete records while recording every answer, SIGKILLs the server after a
//! random delay, runs `selfcloud verify` on the home, and at the next start reads everything
//! back: every acknowledged write must be there with its last acknowledged value (a write in
//! flight at the kill may or may not be). Every other cycle also SIGKILLs the user's instance
//! process half-way through the traffic (the writes in flight then get 503, the instance comes
//! back on the next one, and traffic goes on until the server is killed). The seed is printed
//! so a failing run can be repeated.

mod model;
mod server;
mod traffic;

use anyhow::{ensure, Context};
use model::Writer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use selfcloud_store::EngineKind;
use server::Server;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use traffic::Tally;

#[derive(clap::Args, Debug, Clone)]
pub struct CrashArgs {
    /// Times the server is SIGKILLed mid-write (each followed by verify, restart and a full check).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Store engine of the instance under test: sqlite or rocksdb.
    #[arg(long = "store", default_value = "sqlite")]
    pub store: EngineKind,
    /// Concurrent writers (each owns its keys, so the expected state of every key is exact).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Shortest traffic before a kill, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub min_ms: u64,
    /// Longest traffic before a kill, in milliseconds.
    #[arg(long, default_value_t = 400)]
    pub max_ms: u64,
    /// Seed of the delays and the mix of writes (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the data directory and server logs even when every check passes.
    #[arg(long)]
    pub keep: bool,
}

/// Point reads per check, to cross-check the list.
const SPOT_CHECKS: usize = 16;
/// Losses and surprises printed in full; the rest are counted.
const SHOWN: usize = 10;

#[derive(Default)]
struct Totals {
    tally: Tally,
    keys: u64,
    in_flight_applied: u64,
    in_flight_not_applied: u64,
    losses: u64,
    unexpected: u64,
    verify_failures: u64,
    instance_kills: u64,
    cycle_ms: Vec<u64>,
}

impl Totals {
    fn failed(&self) -> bool {
        self.losses + self.unexpected + self.verify_failures > 0
    }
}

fn progress(line: impl std::fmt::Display) {
    eprintln!("bench crash: {line}");
}

pub async fn run(args: CrashArgs) -> anyhow::Result<()> {
    ensure!(args.kills >= 1, "--kills must be at least 1");
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(args.min_ms <= args.max_ms, "--min-ms must not exceed --max-ms");
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let exe = std::env::current_exe().context("finding this binary")?;
    let dir = tempfile::Builder::new().prefix("selfcloud-crash-").tempdir()?;
    let home = dir.path().join("home");
    progress(format_args!(
        "store={} kills={} writers={} traffic={}..{} ms seed={seed} dir={}",
        args.store,
        args.kills,
        args.writers,
        args.min_ms,
        args.max_ms,
        dir.path().display()
    ));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut writers: Vec<Writer> = (0..args.writers).map(Writer::new).collect();
    let mut totals = Totals::default();
    let started = Instant::now();
    // Cycle `kills` only restarts and checks what the last kill left.
    for cycle in 0..=args.kills {
        let t0 = Instant::now();
        let log = server::log_path(dir.path(), cycle);
        let (e, h) = (exe.clone(), home.clone());
        let mut up = tokio::task::spawn_blocking(move || Server::start(&e, &h, args.store, &log)).await??;
        // A fresh client each cycle: pooled connections to the killed server are dead.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        if cycle == 0 {
            traffic::sign_up(&http, &up.base).await?;
        }
        let token = traffic::log_in(&http, &up.base).await?;
        if cycle > 0 {
            check(&http, &up.base, &token, &mut writers, &mut rng, &mut totals).await?;
        }
        if cycle == args.kills {
            tokio::task::spawn_blocking(move || up.stop(Duration::from_secs(10))).await??;
            verify(&exe, &home, &mut totals).await?;
            break;
        }

        let traffic_ms = rng.gen_range(args.min_ms..=args.max_ms);
        let tasks: Vec<_> = std::mem::take(&mut writers)
            .into_iter()
            .map(|w| {
                let rng = StdRng::seed_from_u64(rng.gen());
                tokio::spawn(traffic::write_until_killed(http.clone(), up.base.clone(), token.clone(), w, cycle, rng))
            })
            .collect();
        if cycle % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(traffic_ms / 2)).await;
            if kill_instance(&http, &up.base, &home).await? {
                totals.instance_kills += 1;
            }
            tokio::time::sleep(Duration::from_millis(traffic_ms - traffic_ms / 2)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(traffic_ms)).await;
        }
        tokio::task::spawn_blocking(move || up.kill()).await??;
        let mut tally = Tally::default();
        for task in tasks {
            let (w, t) = task.await?;
            writers.push(w);
            tally.add(t);
        }
        let verified = verify(&exe, &home, &mut totals).await?;
        let ms = t0.elapsed().as_millis() as u64;
        totals.cycle_ms.push(ms);
        progress(format_args!(
            "kill {}/{}: {traffic_ms} ms of traffic, {} puts + {} deletes acknowledged, {} in flight, verify {}, cycle {ms} ms",
            cycle + 1,
            args.kills,
            tally.puts,
            tally.deletes,
            tally.in_flight,
            if verified { "ok" } else { "FAILED" },
        ));
        for note in &tally.notes {
            progress(format_args!("  rejected: {note}"));
        }
        totals.tally.add(tally);
    }

    let t = &totals;
    let mean = t.cycle_ms.iter().sum::<u64>() / t.cycle_ms.len().max(1) as u64;
    let max = t.cycle_ms.iter().copied().max().unwrap_or(0);
    println!(
        "crash summary: store={} kills={} writers={} seed={seed} acknowledged={} puts={} deletes={} in_flight={} \
         in_flight_applied={} in_flight_not_applied={} rejected={} keys={} losses={} unexpected={} verify_failures={} \
         instance_kills={} cycle_ms_mean={mean} cycle_ms_max={max} total_s={:.1}",
        args.store,
        args.kills,
        args.writers,
        t.tally.puts + t.tally.deletes,
        t.tally.puts,
        t.tally.deletes,
        t.tally.in_flight,
        t.in_flight_applied,
        t.in_flight_not_applied,
        t.tally.rejected,
        t.keys,
        t.losses,
        t.unexpected,
        t.verify_failures,
        t.instance_kills,
        started.elapsed().as_secs_f64(),
    );
    if t.failed() || args.keep {
        let kept: PathBuf = dir.keep();
        progress(format_args!("data directory and server logs kept in {}", kept.display()));
    }
    ensure!(
        !t.failed(),
        "{} acknowledged writes lost, {} unexpected records, {} verify failures (seed {seed})",
        t.losses,
        t.unexpected,
        t.verify_failures
    );
    Ok(())
}

/// Reads the whole collection back and compares it with the model, then settles the model.
async fn check(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    writers: &mut [Writer],
    rng: &mut StdRng,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let stored = traffic::read_all(http, base, token).await?;
    let all: Vec<String> = writers.iter().flat_map(|w| w.keys.iter().map(|k| k.name.clone())).collect();
    let sample: Vec<String> = all.choose_multiple(rng, SPOT_CHECKS).cloned().collect();
    let disagree = traffic::spot_check(http, base, token, &sample, &stored).await?;
    let found = model::check_and_settle(writers, &stored);
    for line in found.lost.iter().chain(&disagree).take(SHOWN) {
        progress(format_args!("  LOST {line}"));
    }
    for key in found.unexpected.iter().take(SHOWN) {
        progress(format_args!("  UNEXPECTED record {key}"));
    }
    totals.losses += (found.lost.len() + disagree.len()) as u64;
    totals.unexpected += found.unexpected.len() as u64;
    totals.in_flight_applied += found.in_flight_applied;
    totals.in_flight_not_applied += found.in_flight_not_applied;
    totals.keys = found.keys;
    Ok(())
}

/// Runs `selfcloud verify` on the stopped server's home; a failure is counted and shown.
async fn verify(exe: &Path, home: &Path, totals: &mut Totals) -> anyhow::Result<bool> {
    let (e, h) = (exe.to_owned(), home.to_owned());
    let (ok, output) = tokio::task::spawn_blocking(move || server::verify(&e, &h)).await??;
    if !ok {
        totals.verify_failures += 1;
        progress(format_args!("  verify FAILED:\n{output}"));
    }
    Ok(ok)
}

/// SIGKILLs the running instance process (found through the operator's API); false when the
/// server runs its instances in process.
async fn kill_instance(http: &reqwest::Client, base: &str, home: &Path) -> anyhow::Result<bool> {
    let token = std::fs::read_to_string(home.join(selfcloud_control::OPERATOR_TOKEN_FILE))?;
    let list: serde_json::Value =
        http.get(format!("{base}/v1/admin/instances")).bearer_auth(token.trim()).send().await?.json().await?;
    let pids: Vec<u64> = list["instances"].as_array().into_iter().flatten().filter_map(|i| i["pid"].as_u64()).collect();
    for pid in &pids {
        // SAFETY: a signal to a process id the server just named as an instance's.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    Ok(!pids.is_empty())
}
