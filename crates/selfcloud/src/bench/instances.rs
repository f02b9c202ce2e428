//! `selfcloud bench instances`: both runtimes side by side in one run, phase by phase.
//! 1. provision: sign-up over HTTP at the production KDF cost (beside the KDF alone), then the
//!    first call of each new instance (its wake);
//! 2. wake from hibernation: the next call of each instance once it has hibernated;
//! 3. authorized 1 KiB GETs through the gateway (OAuth app token, audit on);
//! 4. disk per idle instance; memory of `--awake` instances awake at once;
//! 5. the server's RSS with `--hibernated` provisioned, hibernated instances (a cheap KDF here:
//!    this phase counts memory, not sign-up time).

use super::{gateway, load, progress, record_value, Stats, WARMUP};
use anyhow::{ensure, Context};
use selfcloud_control::{Control, ControlConfig, RunState, RuntimeConfig};
use selfcloud_core::config::KdfParams;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct InstancesArgs {
    /// Instances provisioned (and woken) per runtime for the latency figures.
    #[arg(long, default_value_t = 100)]
    pub signups: usize,
    /// Instances held awake at once for the memory figure.
    #[arg(long, default_value_t = 100)]
    pub awake: usize,
    /// Hibernated instances provisioned for the idle-memory figure (0 skips the phase).
    #[arg(long, default_value_t = 10_000)]
    pub hibernated: usize,
    /// Records of 1 KiB the throughput phase reads at random.
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Measured seconds of each throughput phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also print the figures as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct Figures {
    runtime: &'static str,
    signup_p50_ms: f64,
    signup_p99_ms: f64,
    first_call_p50_ms: f64,
    provision_p50_ms: f64,
    provision_p99_ms: f64,
    wake_p50_ms: f64,
    wake_p99_ms: f64,
    get_per_sec: f64,
    get_p99_ms: f64,
    get_errors: u64,
    disk_per_instance_bytes: u64,
    awake_instances: usize,
    memory_per_awake_instance_bytes: u64,
    hibernated_instances: usize,
    gateway_rss_per_hibernated_instance_bytes: i64,
}

fn runtime_config(process: bool) -> anyhow::Result<RuntimeConfig> {
    if !process {
        return Ok(RuntimeConfig::Inproc);
    }
    let layers = selfcloud_sandbox::probe();
    let has = |name: &str| layers.iter().any(|l| l.name == name && l.available);
    let mut config = selfcloud_control::runtime::ProcessConfig::new(std::env::current_exe()?);
    (config.sandbox, config.cgroups) = (has("namespaces"), has("cgroups"));
    if !config.sandbox {
        progress("no namespaces here: process instances run without the sandbox");
    }
    Ok(RuntimeConfig::Process(config))
}

/// A field of `/proc/<pid>/<file>` in kB, as bytes.
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    let kib = text.lines().find_map(|l| l.strip_prefix(field)?.trim().trim_end_matches(" kB").parse::<u64>().ok());
    kib.map_or(0, |kib| kib * 1024)
}

fn rss_of(pid: u32) -> u64 {
    proc_kb(pid, "status", "VmRSS:")
}

/// An instance process's memory: its reaper and the instance it reaps (pid 1 of its namespace),
/// as PSS: pages shared with the other instances (the binary's, mapped by all) count a share each.
fn instance_pss(reaper: u32) -> u64 {
    let pss = |pid| proc_kb(pid, "smaps_rollup", "Pss:");
    let children = std::fs::read_to_string(format!("/proc/{reaper}/task/{reaper}/children")).unwrap_or_default();
    pss(reaper) + children.split_whitespace().filter_map(|p| p.parse().ok()).map(pss).sum::<u64>()
}

fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += disk_usage(&e.path()),
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

async fn timed_get(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let resp = http.get(format!("{base}/v1/me")).bearer_auth(token).send().await?;
    ensure!(resp.status().is_success(), "first call answered {}", resp.status());
    resp.bytes().await?;
    Ok(started.elapsed())
}

async fn wait_hibernated(control: &Control, ids: &[selfcloud_core::InstanceId]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| control.run_status(*id).state != RunState::Hibernated) {
        ensure!(Instant::now() < deadline, "instances did not hibernate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn one_runtime(args: &InstancesArgs, process: bool, kdf: &Stats) -> anyhow::Result<Figures> {
    let name = if process { "process" } else { "inproc" };
    let mut f = Figures { runtime: name, ..Figures::default() };
    let dir = tempfile::TempDir::new()?;
    let home = dir.path().join("home");
    let runtime = runtime_config(process)?;
    let http = reqwest::Client::new();

    // 1, 2: provision and wake, with a short idle time so instances hibernate between phases.
    let rt = runtime.clone();
    let gw = gateway::start_with(home.clone(), move |c: &mut ControlConfig| {
        c.runtime = rt;
        c.hibernate_after = Duration::from_millis(500);
    })
    .await?;
    progress(format_args!("{name}: {} sign-ups, then each instance's first call", args.signups));
    let signups = gateway::sign_ups_named(&gw.base, "u", args.signups).await?;
    let mut sessions = Vec::new();
    for i in 0..args.signups {
        sessions.push(gateway::log_in(&gw.base, &format!("u{i:05}")).await?);
    }
    let control = gw.running.state.control.clone();
    let ids: Vec<_> = control.list_instances().await.map_err(super::core_error)?.into_iter().map(|i| i.id).collect();
    // The log-ins woke nothing: a session is control's, not the instance's.
    wait_hibernated(&control, &ids).await?;
    let mut first = Vec::new();
    for token in &sessions {
        first.push(timed_get(&http, &gw.base, token).await?);
    }
    let provision: Vec<Duration> = signups.iter().zip(&first).map(|(a, b)| *a + *b).collect();
    progress(format_args!("{name}: waking each hibernated instance"));
    wait_hibernated(&control, &ids).await?;
    let mut wakes = Vec::new();
    for token in &sessions {
        wakes.push(timed_get(&http, &gw.base, token).await?);
    }
    let (s, p, w, fc) = (
        Stats::from_durations(&signups),
        Stats::from_durations(&provision),
        Stats::from_durations(&wakes),
        Stats::from_durations(&first),
    );
    (f.signup_p50_ms, f.signup_p99_ms, f.first_call_p50_ms) = (s.p50_ms, s.p99_ms, fc.p50_ms);
    (f.provision_p50_ms, f.provision_p99_ms, f.wake_p50_ms, f.wake_p99_ms) = (p.p50_ms, p.p99_ms, w.p50_ms, w.p99_ms);
    let _ = kdf;
    wait_hibernated(&control, &ids).await?;
    f.disk_per_instance_bytes = disk_usage(&home.join(selfcloud_control::INSTANCES_DIR)) / ids.len().max(1) as u64;
    drop(control);
    gw.stop().await?;

    // 3, 4: throughput and awake memory, with instances kept awake.
    let rt = runtime.clone();
    let gw = gateway::start_with(home.clone(), move |c: &mut ControlConfig| {
        c.runtime = rt;
        c.hibernate_after = Duration::from_secs(3600);
    })
    .await?;
    let value = record_value();
    let token = gateway::prepare_reader(&gw.base, args.records, &value).await?;
    progress(format_args!("{name}: authorized GETs, {} connections, {} s", args.concurrency, args.seconds));
    let config = load::LoadConfig {
        concurrency: args.concurrency,
        warmup: WARMUP,
        measure: Duration::from_secs(args.seconds),
        records: args.records,
        expected_len: value.len(),
    };
    let get = load::closed_loop(&config, &gw.base, &token).await?;
    (f.get_per_sec, f.get_p99_ms, f.get_errors) = (get.per_sec(), get.latency.p99_ms, get.errors);

    let control = gw.running.state.control.clone();
    let awake = args.awake.min(sessions.len());
    progress(format_args!("{name}: {awake} instances awake at once"));
    let before = rss_of(std::process::id());
    let mut sessions_now = Vec::new();
    for i in 0..awake {
        sessions_now.push(gateway::log_in(&gw.base, &format!("u{i:05}")).await?);
    }
    for t in &sessions_now {
        timed_get(&http, &gw.base, t).await?;
    }
    let mut total = rss_of(std::process::id()).saturating_sub(before);
    for id in &ids[..awake] {
        if let Some(pid) = control.run_status(*id).pid {
            total += instance_pss(pid);
        }
    }
    (f.awake_instances, f.memory_per_awake_instance_bytes) = (awake, total / awake.max(1) as u64);
    drop(control);
    gw.stop().await?;

    // 5: many hibernated instances: only registry rows (and a tier each) in the server's memory.
    if args.hibernated > 0 {
        progress(format_args!("{name}: provisioning {} hibernated instances (cheap KDF)", args.hibernated));
        let rt = runtime.clone();
        let gw = gateway::start_with(dir.path().join("many"), move |c: &mut ControlConfig| {
            c.runtime = rt;
            c.kdf = KdfParams::INSECURE_FOR_TESTS;
        })
        .await?;
        // One sign-up first, so what is measured is what each further instance adds.
        gw.running.state.control.sign_up("h-first", "bench-password-0123456789", 1).await.map_err(super::core_error)?;
        let before = rss_of(std::process::id());
        let control = gw.running.state.control.clone();
        let started = Instant::now();
        for i in 0..args.hibernated {
            control.sign_up(&format!("h{i:05}"), "bench-password-0123456789", 1).await.map_err(super::core_error)?;
            if i % 1000 == 999 {
                progress(format_args!("{name}: {} provisioned ({:.0} s)", i + 1, started.elapsed().as_secs_f64()));
            }
        }
        let summary = control.runtime_summary();
        let running = summary.by_state.iter().find(|(s, _)| *s == RunState::Running).map_or(0, |(_, n)| *n);
        ensure!(running == 0, "{running} instances awake after provisioning");
        let grown = rss_of(std::process::id()) as i64 - before as i64;
        (f.hibernated_instances, f.gateway_rss_per_hibernated_instance_bytes) =
            (args.hibernated, grown / args.hibernated as i64);
        drop(control);
        gw.stop().await?;
    }
    Ok(f)
}

pub async fn run(args: InstancesArgs) -> anyhow::Result<()> {
    ensure!(args.signups >= 1 && args.awake >= 1, "--signups and --awake must be at least 1");
    let runs = (args.signups / 10).max(1);
    progress(format_args!("{runs} bare Argon2 derivations at the production cost"));
    let kdf = Stats::from_durations(&gateway::kdf_baseline(runs).await?);
    let inproc = one_runtime(&args, false, &kdf).await.context("inproc")?;
    let process = one_runtime(&args, true, &kdf).await.context("process")?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("selfcloud bench instances (both runtimes in this run; KDF alone p50 {:.1} ms)", kdf.p50_ms);
    println!("{:<44} {:>14} {:>14}", "", "inproc", "process");
    let row = |label: &str, a: String, b: String| println!("{label:<44} {a:>14} {b:>14}");
    row(
        "sign-up p50 / p99 (ms)",
        format!("{:.1} / {:.1}", inproc.signup_p50_ms, inproc.signup_p99_ms),
        format!("{:.1} / {:.1}", process.signup_p50_ms, process.signup_p99_ms),
    );
    row(
        "provision: sign-up + first call p50 / p99",
        format!("{:.1} / {:.1}", inproc.provision_p50_ms, inproc.provision_p99_ms),
        format!("{:.1} / {:.1}", process.provision_p50_ms, process.provision_p99_ms),
    );
    row(
        "wake from hibernation p50 / p99 (ms)",
        format!("{:.1} / {:.1}", inproc.wake_p50_ms, inproc.wake_p99_ms),
        format!("{:.1} / {:.1}", process.wake_p50_ms, process.wake_p99_ms),
    );
    row("authorized 1 KiB GET /s", format!("{:.0}", inproc.get_per_sec), format!("{:.0}", process.get_per_sec));
    row("GET p99 (ms)", format!("{:.2}", inproc.get_p99_ms), format!("{:.2}", process.get_p99_ms));
    row(
        "disk per idle instance (KiB)",
        format!("{:.0}", inproc.disk_per_instance_bytes as f64 / 1024.0),
        format!("{:.0}", process.disk_per_instance_bytes as f64 / 1024.0),
    );
    row(
        &format!("memory per awake instance ({} awake, PSS MiB)", process.awake_instances),
        format!("{:.2}", mib(inproc.memory_per_awake_instance_bytes)),
        format!("{:.2}", mib(process.memory_per_awake_instance_bytes)),
    );
    row(
        &format!("server RSS per hibernated instance ({}, B)", process.hibernated_instances),
        inproc.gateway_rss_per_hibernated_instance_bytes.to_string(),
        process.gateway_rss_per_hibernated_instance_bytes.to_string(),
    );
    let ratio = process.get_per_sec / inproc.get_per_sec.max(1.0);
    println!("GET throughput process / inproc: {ratio:.2}x (target at least 0.5x)");
    if args.json {
        println!(
            "{}",
            serde_json::json!({"kdf_p50_ms": kdf.p50_ms, "inproc": inproc, "process": process, "get_ratio": ratio})
        );
    }
    ensure!(inproc.get_errors + process.get_errors == 0, "some GETs failed; the figures are not valid");
    Ok(())
}
