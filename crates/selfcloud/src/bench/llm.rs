//! `bench llm`: the private assistant's chat beside llama.cpp's own `llama-server`, through the
//! path an OpenAI client takes (HTTP, SSE, `stream_options.include_usage`), on the same model,
//! prompts and thread count. Rounds alternate between the two, so drift falls on both alike.
//!
//! Per request: time to first token (TTFT, from sending to the first text), decode tokens/s
//! (tokens after the first over the time after the first) and prefill tokens/s (as each server
//! reports it in `timings`). Then `--users` chats at once: one instance per user on our side, one
//! server with that many slots on the other (`llama-server -np N`), as aggregate tokens/s.

use super::{gateway, progress};
use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct LlmBenchArgs {
    /// Base URL of a running `selfcloud up` (its instances given the same threads as the peer).
    #[arg(long, default_value = "http://127.0.0.1:8420")]
    pub gateway: String,
    /// OpenAI base URL of the peer, e.g. `llama-server -m MODEL -t 2 -np 8 --port 8080`.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub peer: String,
    /// Requests per side per round, one after another.
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// Rounds per side, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Tokens each answer may have.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Users chatting at once in the concurrent phase (0 skips it).
    #[arg(long, default_value_t = 8)]
    pub users: usize,
}

/// One streamed answer, measured from the client.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
    completion_tokens: u64,
    prompt_per_second: f64,
}

impl Sample {
    fn decode_per_second(&self) -> f64 {
        let after_first = (self.total - self.ttft).as_secs_f64();
        (self.completion_tokens.saturating_sub(1)) as f64 / after_first.max(1e-9)
    }
}

/// A different opening per request, so neither server answers the prompt from its cache.
fn question(n: usize) -> Value {
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": format!("Request {n}. Write a long story about a robot who learns to paint.")},
    ])
}

async fn chat(http: &reqwest::Client, base: &str, token: &str, n: usize, max_tokens: u32) -> anyhow::Result<Sample> {
    let body = json!({
        "model": "smollm2", "messages": question(n), "temperature": 0, "max_tokens": max_tokens,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let response = http.post(format!("{base}/chat/completions")).bearer_auth(token).json(&body).send().await?;
    ensure!(response.status().is_success(), "{base} answered {}: {}", response.status(), response.text().await?);
    let (mut ttft, mut tokens, mut prompt_per_second) = (None, None, 0.0);
    let mut pending = String::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        pending.push_str(std::str::from_utf8(&piece?)?);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                let ttft = ttft.context("no text before [DONE]")?;
                let completion_tokens = tokens.context("no usage before [DONE]")?;
                return Ok(Sample { ttft, total: started.elapsed(), completion_tokens, prompt_per_second });
            }
            let chunk: Value = serde_json::from_str(data).with_context(|| format!("an event: {data}"))?;
            if let Some(e) = chunk.get("error") {
                bail!("{base}: {e}");
            }
            let text = chunk["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if ttft.is_none() && !text.is_empty() {
                ttft = Some(started.elapsed());
            }
            if let Some(rate) = chunk["timings"]["prompt_per_second"].as_f64() {
                prompt_per_second = rate;
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n);
            }
        }
    }
    bail!("{base}: the stream ended without [DONE]")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(args: LlmBenchArgs) -> anyhow::Result<()> {
    ensure!(args.rounds >= 1 && args.requests >= 1, "rounds and requests >= 1");
    let http = reqwest::Client::new();
    let ours = format!("{}/v1/llm", args.gateway.trim_end_matches('/'));
    let peer = args.peer.trim_end_matches('/').to_owned();
    progress(format_args!("a user and an app with llm:chat on {}", args.gateway));
    let (_, token) = gateway::app_token(&args.gateway, "benchllm", &["llm:chat"]).await?;
    // Warm both: our instance loads the model on its first call.
    chat(&http, &ours, &token, 0, 8).await?;
    chat(&http, &peer, "none", 0, 8).await?;

    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    let mut n = 1;
    for round in 1..=args.rounds {
        for (name, base, key, out) in
            [("selfcloud", &ours, token.as_str(), &mut mine), ("llama-server", &peer, "none", &mut theirs)]
        {
            for _ in 0..args.requests {
                let s = chat(&http, base, key, n, args.max_tokens).await?;
                n += 1;
                out.push(s);
            }
            let last = out[out.len() - args.requests..].to_vec();
            progress(format_args!(
                "round {round} {name}: decode {:.1} tok/s, TTFT {:.0} ms, prefill {:.0} tok/s",
                median(last.iter().map(Sample::decode_per_second).collect()),
                median(last.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect()),
                median(last.iter().map(|s| s.prompt_per_second).collect()),
            ));
        }
    }
    let summary = |v: &[Sample]| {
        (
            median(v.iter().map(Sample::decode_per_second).collect()),
            median(v.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect()),
            median(v.iter().map(|s| s.prompt_per_second).collect()),
            median(v.iter().map(|s| s.completion_tokens as f64).collect()),
        )
    };
    let (a, b) = (summary(&mine), summary(&theirs));
    println!("| one chat at a time (medians) | decode tok/s | TTFT ms | prefill tok/s | tokens |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| selfcloud (gateway, app token, sandboxed instance) | {:.1} | {:.0} | {:.0} | {:.0} |",
        a.0, a.1, a.2, a.3
    );
    println!("| llama-server | {:.1} | {:.0} | {:.0} | {:.0} |", b.0, b.1, b.2, b.3);
    println!("ratios selfcloud / llama-server: decode {:.2}x, TTFT {:.2}x", a.0 / b.0, a.1 / b.1);

    if args.users > 0 {
        let mut tokens = Vec::new();
        for user in 0..args.users {
            tokens.push(gateway::app_token(&args.gateway, &format!("benchllm{user}"), &["llm:chat"]).await?.1);
        }
        for t in &tokens {
            chat(&http, &ours, t, 0, 4).await?; // each instance loads its model first
        }
        let ours_rate = at_once(&http, &ours, &tokens, args.max_tokens).await?;
        let peer_tokens = vec!["none".to_owned(); args.users];
        let peer_rate = at_once(&http, &peer, &peer_tokens, args.max_tokens).await?;
        println!(
            "{} users at once, aggregate decode: selfcloud {:.1} tok/s ({} instances), llama-server {:.1} tok/s; ratio {:.2}x",
            args.users,
            ours_rate,
            args.users,
            peer_rate,
            ours_rate / peer_rate
        );
    }
    Ok(())
}

/// Every token chats at once; completion tokens of all over the wall time.
async fn at_once(http: &reqwest::Client, base: &str, tokens: &[String], max_tokens: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let chats = tokens.iter().enumerate().map(|(i, t)| chat(http, base, t, 1000 + i, max_tokens));
    let samples = futures_util::future::try_join_all(chats).await?;
    Ok(samples.iter().map(|s| s.completion_tokens).sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}
