//! The `selfcloud` binary: parses the command line and wires the crates together. No business
//! logic lives here.

mod backup;
mod bench;
mod cli;
mod model;
mod up;
mod verify;

use clap::Parser;

// Requests allocate and free small buffers on every worker thread; mimalloc's per-thread heaps
// keep that off glibc's shared arena locks (measured: see the README's benchmark section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Files and directories created from here on are readable by this user only (umask 077).
pub fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // Every file any command creates (the server, `verify` opening stores, the benches) is its
    // user's alone, including those libraries create with their own modes (RocksDB's); control
    // makes the home 0700 as well.
    private_files();
    if let cli::Command::Instance(cli::InstanceCommand::Run { dir }) = &cli.command {
        // Before any thread exists: the sandbox needs a single-threaded caller.
        return instance_run(dir);
    }
    if let cli::Command::Engine(cli::EngineCommand::Run { dir }) = &cli.command {
        log_to_stderr();
        return selfcloud_engine::run(dir).map_err(|e| anyhow::anyhow!("the shared engine: {e}"));
    }
    // The external load generator keeps to one thread, leaving the other cores to the servers.
    let one_thread = matches!(&cli.command, cli::Command::Bench(b) if b.is_load_generator());
    let runtime = match one_thread {
        true => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        false => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    match cli.command {
        cli::Command::Up(args) => runtime.block_on(up::run(*args)),
        cli::Command::Bench(args) => runtime.block_on(bench::run(args)),
        cli::Command::Verify(args) => runtime.block_on(verify::run(args)),
        cli::Command::Model(args) => runtime.block_on(model::run(args)),
        cli::Command::Backup(args) => runtime.block_on(backup::run(args)),
        cli::Command::Instance(_) | cli::Command::Engine(_) => unreachable!("handled above"),
    }
}

/// One instance process; logs to its stderr, a pipe the server reads, cleans, tags and rate limits
/// (`control::runtime::stderr`), quietly unless RUST_LOG asks.
fn instance_run(dir: &std::path::Path) -> anyhow::Result<()> {
    log_to_stderr();
    selfcloud_instance::process::run(dir).map_err(|e| anyhow::anyhow!("instance {}: {e}", dir.display()))
}

/// A process the server started logs to its stderr, a pipe the server reads.
fn log_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    match std::env::var("SELFCLOUD_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        _ => builder.init(),
    }
}
