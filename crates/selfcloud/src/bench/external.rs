//! The hot path measured from outside: the server under test runs in its own process (the real
//! `selfcloud up`, as operators run it), the bare floor in another (`bench floor`), and the load
//! generator in a third (`bench http`, on one thread), so generating load slows neither side.
//! Rounds alternate between gateway and floor, so drift on the machine falls on both alike.

use super::{gateway, load, progress, record_value};
use anyhow::ensure;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Address to serve the bare handler on.
    #[arg(long, default_value = "127.0.0.1:8422")]
    pub addr: std::net::SocketAddr,
}

#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Base URL of a running `selfcloud up` with rate limits raised past the load (see README).
    #[arg(long, default_value = "http://127.0.0.1:8421")]
    pub gateway: String,
    /// Base URL of a running `selfcloud bench floor`.
    #[arg(long, default_value = "http://127.0.0.1:8422")]
    pub floor: String,
    /// Records of 1 KiB the reads pick from at random.
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds of each round (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds per side, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// `bench floor`: serves the bare handler (floor A) until SIGTERM or Ctrl-C.
pub async fn floor(args: FloorArgs) -> anyhow::Result<()> {
    let bare = load::BareServer::start_on(args.addr, record_value()).await?;
    println!("bench floor listening on {}", bare.base);
    let _ = tokio::signal::ctrl_c().await;
    bare.stop().await
}

/// `bench http`: prepares a reader on the gateway over HTTP, then alternates closed-loop rounds.
pub async fn http(args: HttpArgs) -> anyhow::Result<()> {
    ensure!(args.rounds >= 1 && args.seconds >= 1 && args.concurrency >= 1, "rounds, seconds, concurrency >= 1");
    let value = record_value();
    progress(format_args!("reader, app token and {} records on {}", args.records, args.gateway));
    let token = gateway::prepare_reader(&args.gateway, args.records, &value).await?;
    let config = load::LoadConfig {
        concurrency: args.concurrency,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(args.seconds),
        records: args.records,
        expected_len: value.len(),
    };
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for (name, base, out) in [("gateway", &args.gateway, &mut ours), ("floor", &args.floor, &mut bare)] {
            let r = load::closed_loop(&config, base, &token).await?;
            ensure!(r.errors == 0, "{name}: {} errors, first: {:?}", r.errors, r.first_error);
            progress(format_args!(
                "round {round} {name}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                r.per_sec(),
                r.latency.p50_ms,
                r.latency.p99_ms
            ));
            out.push(r);
        }
    }
    let best = |v: &[load::LoadResult]| v.iter().map(|r| r.per_sec()).fold(0.0, f64::max);
    let median = |v: &[load::LoadResult]| {
        let mut rates: Vec<f64> = v.iter().map(|r| r.per_sec()).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let worst_p99 = |v: &[load::LoadResult]| v.iter().map(|r| r.latency.p99_ms).fold(0.0, f64::max);
    let p50 = |v: &[load::LoadResult]| {
        let mut p: Vec<f64> = v.iter().map(|r| r.latency.p50_ms).collect();
        p.sort_by(f64::total_cmp);
        p[p.len() / 2]
    };
    println!("| side | median req/s | best req/s | median p50 ms | worst p99 ms |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, v) in [("gateway (1 KiB GET, app token, audit on)", &ours), ("bare axum handler", &bare)] {
        println!("| {name} | {:.0} | {:.0} | {:.2} | {:.2} |", median(v), best(v), p50(v), worst_p99(v));
    }
    println!("ratio gateway / floor (medians): {:.2}x", median(&ours) / median(&bare));
    Ok(())
}
