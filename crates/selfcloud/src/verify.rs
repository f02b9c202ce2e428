//! `selfcloud verify`: prints control's integrity check of a home directory, one line per
//! instance, and fails if any check did.

use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Directory holding the registry, keys and every instance (the server must be stopped).
    #[arg(long, env = "SELFCLOUD_HOME", default_value = "./selfcloud-data")]
    pub home: PathBuf,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::new("warn");
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    // Opening control creates a missing home; a typo in --home must not pass as an empty home.
    if !args.home.join("control.db").is_file() {
        bail!("{} is not a selfcloud home (no control.db)", args.home.display());
    }
    // One open instance at a time: each is closed as the next is checked.
    let mut config =
        selfcloud_control::ControlConfig { open_instances: 1, ..selfcloud_control::ControlConfig::new(&args.home) };
    // Instances with disks of their own are opened where only they can be: in their own process,
    // which mounts its image. No image is made here.
    if args.home.join(selfcloud_control::disk::IMAGES_DIR).is_dir() {
        let mut process = selfcloud_control::runtime::ProcessConfig::new(std::env::current_exe()?);
        process.sandbox = selfcloud_sandbox::namespaces_available(&selfcloud_sandbox::probe());
        process.cgroups = false;
        process.disk_images = false;
        config.runtime = selfcloud_control::RuntimeConfig::Process(process);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let control = selfcloud_control::Control::open(config, now)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.message, e.detail.unwrap_or_default()))
        .with_context(|| format!("opening home directory {}", args.home.display()))?;
    let report =
        control.verify_home().await.map_err(|e| anyhow::anyhow!("{}: {}", e.message, e.detail.unwrap_or_default()))?;

    match &report.registry {
        Ok(()) => println!("registry ok"),
        Err(why) => println!("registry FAILED {why}"),
    }
    for check in &report.instances {
        match &check.outcome {
            Ok(r) => println!("{} {:<7} records={} bytes={} ok", check.id, r.engine, r.records, r.bytes),
            Err(why) => println!("{} {:<7} FAILED {why}", check.id, "-"),
        }
    }
    for id in &report.unreferenced {
        println!("{id} unreferenced directory (a sign-up that did not finish; safe to remove)");
    }
    let failures = report.failures();
    let bad = report.instances.iter().filter(|c| c.outcome.is_err()).count();
    let registry = if report.registry.is_ok() { "ok" } else { "FAILED" };
    println!(
        "verified {} instances: {} ok, {bad} failed; registry {registry}",
        report.instances.len(),
        report.instances.len() - bad
    );
    if failures > 0 {
        bail!("{failures} integrity checks failed");
    }
    Ok(())
}
