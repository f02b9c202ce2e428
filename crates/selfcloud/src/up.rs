//! `selfcloud up`: one process serving everything, until SIGTERM or Ctrl-C.

use crate::cli::{LogFormat, UpArgs};
use anyhow::Context;
use selfcloud_gateway::clock::{Clock, SystemClock};
use selfcloud_gateway::GatewayConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the line that tells where the server listens.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = args.settings.control_config(args.home.clone());
    config.llm = crate::model::resolve(&args.llm, &args.home).await?;
    config.runtime = args.settings.runtime()?;
    if let selfcloud_control::RuntimeConfig::Process(process) = &mut config.runtime {
        process.engine_memory_bytes = args.llm.llm_engine_memory_mib.max(64) << 20;
    }
    if let (selfcloud_control::RuntimeConfig::Process(process), Some(llm)) = (&mut config.runtime, &config.llm) {
        // The sandbox shows each instance the model files, read-only, and nothing else outside its
        // own directory: the files, not their directory, which `model pull` keeps private (an
        // instance running as an unprivileged uid of its own could not enter it). In shared mode
        // the chat model is the engine's alone.
        let chat = llm.shared.is_none().then_some(&llm.engine.path);
        let embedding = llm.embedding.iter().map(|e| &e.path);
        for file in chat.into_iter().chain(embedding) {
            if !process.read_only.iter().any(|f| f == file) {
                process.read_only.push(file.to_owned());
            }
        }
    }
    if let Some(llm) = &config.llm {
        tracing::info!(model = %llm.engine.name, path = %llm.engine.path.display(), "the assistant's model");
        if let Some(e) = &llm.embedding {
            tracing::info!(model = %e.name, path = %e.path.display(), "the embedding model");
        }
    }
    let control = selfcloud_control::Control::open(config, clock.now())
        .map_err(|e| anyhow::anyhow!("{}: {}", e.message, e.detail.unwrap_or_default()))
        .with_context(|| format!("opening home directory {}", args.home.display()))?;
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("listening on {}", args.addr))?;
    let shutdown = CancellationToken::new();
    let gateway = GatewayConfig {
        public_url: args.public_url.clone(),
        connections: args.connection_limits(),
        dev_test_users: args.dev_test_users,
        ..GatewayConfig::default()
    };
    let running = selfcloud_gateway::serve(listener, control, clock, gateway, shutdown.clone()).await?;
    tracing::info!(
        home = %args.home.display(),
        operator_token = %args.home.join(selfcloud_control::OPERATOR_TOKEN_FILE).display(),
        "selfcloud is up"
    );
    println!("selfcloud listening on {}", running.state.issuer);

    wait_for_signal().await;
    tracing::info!("shutting down: draining requests and the audit queue");
    shutdown.cancel();
    running.wait().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
