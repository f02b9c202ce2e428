//! `selfcloud backup ls|verify|restore`: a user's (or an operator's) hands on a backup target
//! with nothing but the target and the passphrase (or recovery key): no server, no home.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use selfcloud_backup::{DirTarget, Manifest, Progress, Repo, Secret, Target};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

/// Where the backup is and how to open it.
#[derive(clap::Args, Debug, Clone)]
pub struct Opening {
    /// The directory target: an instance's subdirectory of the server's `--backup-dir-root`.
    #[arg(long)]
    pub dir: PathBuf,
    /// The recovery key shown when backup was set up, instead of the passphrase.
    #[arg(long, env = "SELFCLOUD_BACKUP_RECOVERY_KEY", hide_env_values = true)]
    pub recovery_key: Option<String>,
    /// The backup passphrase; read from standard input when neither it nor a recovery key is given.
    #[arg(long, env = "SELFCLOUD_BACKUP_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BackupCommand {
    /// List the snapshots a target holds.
    Ls(Opening),
    /// Read every chunk of a snapshot (the newest by default) and check its seal, id and length.
    Verify {
        #[command(flatten)]
        opening: Opening,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Write a snapshot's files (the newest by default) into a new directory, checked.
    Restore {
        #[command(flatten)]
        opening: Opening,
        #[arg(long)]
        snapshot: Option<String>,
        /// A directory that does not exist yet, or is empty.
        #[arg(long)]
        into: PathBuf,
    },
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        BackupCommand::Ls(opening) => {
            let repo = open(&opening).await?;
            for m in repo.snapshots().await.map_err(err)? {
                println!("{}  {}  {} bytes  {} files", m.id, when(m.taken_at_ms), m.bytes(), m.files.len());
            }
        }
        BackupCommand::Verify { opening, snapshot } => {
            let repo = open(&opening).await?;
            let manifest = chosen(&repo, snapshot).await?;
            let progress = Arc::new(Progress::default());
            watch("verify", &progress, repo.verify(&manifest, progress.clone())).await.map_err(err)?;
            println!("snapshot {} verified: {} files, {} bytes", manifest.id, manifest.files.len(), manifest.bytes());
        }
        BackupCommand::Restore { opening, snapshot, into } => {
            let repo = open(&opening).await?;
            let manifest = chosen(&repo, snapshot).await?;
            let progress = Arc::new(Progress::default());
            watch("restore", &progress, repo.restore(&manifest, &into, progress.clone())).await.map_err(err)?;
            println!("snapshot {} restored into {}", manifest.id, into.display());
        }
    }
    Ok(())
}

fn err(e: selfcloud_core::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

async fn open(opening: &Opening) -> anyhow::Result<Repo> {
    if !opening.dir.is_dir() {
        bail!("{} is not a directory", opening.dir.display());
    }
    let secret = match (&opening.recovery_key, &opening.passphrase) {
        (Some(key), _) => Secret::RecoveryKey(key.parse().map_err(err)?),
        (None, Some(passphrase)) => Secret::passphrase(passphrase),
        (None, None) => {
            eprint!("backup passphrase: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the passphrase")?;
            Secret::passphrase(line.trim_end_matches(['\r', '\n']))
        }
    };
    let target: Arc<dyn Target> = Arc::new(DirTarget::new(&opening.dir));
    Repo::open(target, &secret).await.map_err(err)
}

async fn chosen(repo: &Repo, id: Option<String>) -> anyhow::Result<Manifest> {
    match id {
        Some(id) => repo.manifest(&id).await.map_err(err),
        None => repo.snapshots().await.map_err(err)?.pop().context("the target holds no snapshot"),
    }
}

/// Runs `work` with a progress bar over `progress`.
async fn watch<T>(what: &str, progress: &Progress, work: impl std::future::Future<Output = T>) -> T {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                bar.set_length(progress.total());
                bar.set_position(progress.done());
            }
        }
    };
    bar.set_length(progress.total());
    bar.set_position(progress.done());
    bar.finish_and_clear();
    out
}

fn when(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}
