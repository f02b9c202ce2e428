//! The HTTP side of the harness: account, writers that record every answer in the model, and
//! reading the whole collection back.

use super::model::{State, Writer};
use anyhow::{bail, ensure, Context};
use rand::rngs::StdRng;
use rand::Rng;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

pub const COLLECTION: &str = "crash";
const USERNAME: &str = "crash";
const PASSWORD: &str = "crash harness password";
/// Share of writes that create a new key; of the rest, overwrites then deletes.
const NEW_KEY: f64 = 0.6;
const OVERWRITE: f64 = 0.85;
/// A few rejections are worth showing; more would flood the report.
const NOTES_KEPT: usize = 5;

/// One writer's answers during one cycle.
#[derive(Debug, Default)]
pub struct Tally {
    pub puts: u64,
    pub deletes: u64,
    /// Requests that got no answer: the server died under them.
    pub in_flight: u64,
    /// Answers other than 200/204 (none are expected: no preconditions, no quota, no limit).
    pub rejected: u64,
    pub notes: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.puts += other.puts;
        self.deletes += other.deletes;
        self.in_flight += other.in_flight;
        self.rejected += other.rejected;
        self.notes.extend(other.notes);
        self.notes.truncate(NOTES_KEPT);
    }
}

pub async fn sign_up(http: &Client, base: &str) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"username": USERNAME, "password": PASSWORD}))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::CREATED, "sign-up answered {}: {}", resp.status(), resp.text().await?);
    Ok(())
}

pub async fn log_in(http: &Client, base: &str) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"username": USERNAME, "password": PASSWORD}))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "log-in answered {}", resp.status());
    let body: Value = resp.json().await?;
    body["token"].as_str().map(str::to_owned).context("log-in answer has no token")
}

/// Writes until a request gets no answer (the server was killed), keeping the model exact: a
/// write is marked sent before the request leaves and acknowledged only on 200 (put) or 204
/// (delete). Returns the model to the caller with what happened.
pub async fn write_until_killed(
    http: Client,
    base: String,
    token: String,
    mut writer: Writer,
    cycle: usize,
    mut rng: StdRng,
) -> (Writer, Tally) {
    let mut tally = Tally::default();
    loop {
        let roll: f64 = rng.gen();
        let existing = (!writer.keys.is_empty()).then(|| rng.gen_range(0..writer.keys.len()));
        let (index, delete) = match existing {
            Some(i) if roll >= OVERWRITE && writer.keys[i].surely_present() => (i, true),
            Some(i) if roll >= NEW_KEY => (i, false),
            _ => (writer.new_key(), false),
        };
        let url = format!("{base}/v1/storage/{COLLECTION}/{}", writer.keys[index].name);
        let (request, expected) = if delete {
            writer.keys[index].send(State::Absent);
            (http.delete(url), StatusCode::NO_CONTENT)
        } else {
            let value = writer.new_value(cycle);
            writer.keys[index].send(State::Present(value.clone()));
            (http.put(url).json(&json!({ "v": value })), StatusCode::OK)
        };
        match request.bearer_auth(&token).send().await {
            Ok(resp) if resp.status() == expected => {
                writer.keys[index].ack();
                if delete {
                    tally.deletes += 1;
                } else {
                    tally.puts += 1;
                }
            }
            // The write may or may not have happened: it stays in doubt until the next check.
            Ok(resp) => {
                tally.rejected += 1;
                if tally.notes.len() < NOTES_KEPT {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    tally.notes.push(format!("{} answered {status}: {body}", writer.keys[index].name));
                }
            }
            Err(_) => {
                tally.in_flight += 1;
                return (writer, tally);
            }
        }
    }
}

/// Every record of the collection, `key -> "v"`, read page by page.
pub async fn read_all(http: &Client, base: &str, token: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(c) = cursor.take() {
            query.push(("cursor", c));
        }
        let resp = http.get(format!("{base}/v1/storage/{COLLECTION}")).query(&query).bearer_auth(token).send().await?;
        ensure!(resp.status().is_success(), "list answered {}", resp.status());
        let page: Value = resp.json().await?;
        for record in page["records"].as_array().context("list answer has no records")? {
            let (Some(key), Some(value)) = (record["key"].as_str(), record["value"]["v"].as_str()) else {
                bail!("unexpected record {record}");
            };
            out.insert(key.to_owned(), value.to_owned());
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// Point reads of a few keys must agree with the list (they take another path to the store).
pub async fn spot_check(
    http: &Client,
    base: &str,
    token: &str,
    keys: &[String],
    listed: &HashMap<String, String>,
) -> anyhow::Result<Vec<String>> {
    let mut disagree = Vec::new();
    for key in keys {
        let resp = http.get(format!("{base}/v1/storage/{COLLECTION}/{key}")).bearer_auth(token).send().await?;
        let got = match resp.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => resp.json::<Value>().await?["v"].as_str().map(str::to_owned),
            other => bail!("GET {key} answered {other}"),
        };
        if got.as_ref() != listed.get(key) {
            disagree.push(format!("{key}: GET {got:?}, list {:?}", listed.get(key)));
        }
    }
    Ok(disagree)
}
