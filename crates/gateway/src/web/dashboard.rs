//! The dashboard: the instance at a glance, the apps holding access (revoke, budget), and the
//! access log with filters.

use super::layout::{bytes, count, csrf_field, error_page, page, when_ms};
use super::session::{Empty, Posted};
use super::{call_json, WebSession};
use crate::routes::{accounts, apps};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use maud::{html, Markup};
use selfcloud_core::{Error, Scope};
use selfcloud_instance::protocol::Actor;
use selfcloud_instance::AuditRecord;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// A scope as its plain words (an unreadable one as itself: it was stored by an older version).
pub fn described(scope: &str) -> String {
    scope.parse::<Scope>().map_or_else(|_| scope.to_owned(), |s| s.describe())
}

/// How many of the newest access-log entries the overview reads for each app's last use.
const LAST_USE_WINDOW: u64 = 1000;

pub async fn overview(State(s): State<Arc<AppState>>, session: WebSession) -> Response {
    let caller = session.caller.clone();
    let me = match accounts::me(State(s.clone()), caller.clone()).await {
        Ok(Json(me)) => me,
        Err(e) => return error_page(&e.0),
    };
    let grants = match apps::list_grants(State(s.clone()), caller.clone()).await {
        Ok(Json(g)) => g.grants,
        Err(e) => return error_page(&e.0),
    };
    // Spending and last use are shown when they can be read; the page stands without them.
    let spent: HashMap<String, u64> = call_json(&s, &caller, Method::GET, "/v1/llm/usage", None)
        .await
        .map(|u| {
            u["apps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| Some((a["grant_id"].as_str()?.to_owned(), a["tokens"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    // Last use as the newest page of the access log shows it. When the log holds more than that
    // page, an app not on it is "not used lately", not "never".
    let recent = call_json(&s, &caller, Method::GET, &format!("/v1/audit?limit={LAST_USE_WINDOW}"), None).await.ok();
    // Unread (the log did not answer), nothing is said of last use.
    let last_use_known = recent.is_some();
    let whole_log_read = recent.as_ref().is_some_and(|page| page["next_before"].is_null());
    let last_used: HashMap<String, u64> = recent
        .and_then(|page| serde_json::from_value::<Vec<AuditRecord>>(page["entries"].clone()).ok())
        .map(|entries| {
            let mut last = HashMap::new();
            for e in entries {
                if let Actor::App { grant_id, .. } = &e.entry.actor {
                    last.entry(grant_id.clone()).or_insert(e.entry.at_ms); // newest first
                }
            }
            last
        })
        .unwrap_or_default();
    let storage = me.storage.as_ref();
    let instance = me.instance.as_ref();
    let body = html! {
        h1 { "Your instance" }
        section aria-labelledby="instance" {
            h2 #instance { "At a glance" }
            dl.facts {
                dt { "State" } dd #instance-state { (instance.map_or("?", |i| i.state.as_str())) }
                dt { "Runs as" } dd { (runtime_words(instance.map_or("", |i| i.runtime.as_str()))) }
                dt { "Tier" } dd { (me.tier.as_deref().unwrap_or("?")) }
                @if let Some(st) = storage {
                    dt { "Storage" }
                    dd {
                        meter #storage min="0" max=(st.quota_bytes) value=(st.bytes) {}
                        " " (bytes(st.bytes)) " of " (bytes(st.quota_bytes)) " in " (count(st.records)) " records"
                    }
                }
            }
        }
        section aria-labelledby="apps" {
            h2 #apps { "Apps with access" }
            @if grants.is_empty() {
                p { "No app can reach your instance. Apps ask for access through a consent page; you choose what they may do." }
            }
            @for g in &grants {
                article.app data-grant=(g.id) {
                    h3 { (g.app_name) }
                    ul.scopes { @for sc in &g.scopes { li { (described(sc)) " " small { code { (sc) } } } } }
                    p.meta {
                        "Allowed " (when_ms(g.created_at * 1000)) ", "
                        @match g.expires_at {
                            Some(at) => { "until " (when_ms(at * 1000)) ". " }
                            None => { "until you revoke it. " }
                        }
                        @match last_used.get(&g.id) {
                            Some(at) => { "Last used " (when_ms(*at)) ". " }
                            None if !last_use_known => {}
                            None if whole_log_read => { "Not used yet. " }
                            None => { "Not used in your last " (count(LAST_USE_WINDOW)) " requests. " }
                        }
                        @if g.scopes.iter().any(|sc| sc == "llm:chat" || sc == "llm:embed") {
                            (count(spent.get(&g.id).copied().unwrap_or(0))) " of " (count(g.tokens_per_day)) " assistant tokens used today."
                        }
                    }
                    div.row {
                        @if g.scopes.iter().any(|sc| sc == "llm:chat" || sc == "llm:embed") {
                            form.inline method="post" action={ "/me/apps/" (g.id) "/budget" } {
                                (csrf_field(&session))
                                label { "Tokens a day " input type="number" name="token_budget" min="0" value=[g.token_budget] placeholder=(g.tokens_per_day); }
                                button type="submit" { "Save" }
                            }
                        }
                        form.inline method="post" action={ "/me/apps/" (g.id) "/revoke" } {
                            (csrf_field(&session))
                            button.danger type="submit" aria-label={ "Revoke " (g.app_name) } { "Revoke access" }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, "Dashboard", Some(&session), body)
}

fn runtime_words(runtime: &str) -> &'static str {
    match runtime {
        "process" => "its own sandboxed process",
        "inproc" => "inside the server process (development)",
        _ => "unknown",
    }
}

pub async fn revoke(
    State(s): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Posted { session, .. }: Posted<Empty>,
) -> Response {
    match apps::revoke_grant(State(s), session.caller, crate::error::ApiPath(grant)).await {
        Ok(_) => Redirect::to("/me").into_response(),
        Err(e) => error_page(&e.0),
    }
}

#[derive(Deserialize)]
pub struct BudgetForm {
    token_budget: Option<String>,
}

pub async fn budget(
    State(s): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Posted { session, form: f }: Posted<BudgetForm>,
) -> Response {
    let token_budget = match f.token_budget.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return error_page(&Error::invalid("the budget is a whole number of tokens a day")),
        },
    };
    let change = apps::GrantChange { token_budget };
    match apps::change_grant(State(s), session.caller, crate::error::ApiPath(grant), crate::error::ApiJson(change))
        .await
    {
        Ok(_) => Redirect::to("/me").into_response(),
        Err(e) => error_page(&e.0),
    }
}

/// Which entries of the access log to show.
#[derive(Deserialize, Default, Clone)]
pub struct LogFilter {
    /// `owner`, or an app's client id (names are the developer's to choose: an app named "You"
    /// must not pass for the owner, nor two apps of one name for one).
    who: Option<String>,
    /// `ok` (2xx/3xx) or `refused` (4xx/5xx).
    outcome: Option<String>,
    /// Text the path contains.
    path: Option<String>,
    /// Entries older than this sequence number.
    before: Option<u64>,
}

impl LogFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.entry;
        let who = match self.who.as_deref().map(str::trim) {
            None | Some("") => true,
            Some("owner") => e.actor == Actor::Owner,
            Some(client) => matches!(&e.actor, Actor::App { client_id, .. } if client_id == client),
        };
        let outcome = match self.outcome.as_deref() {
            Some("ok") => e.status < 400,
            Some("refused") => e.status >= 400,
            _ => true,
        };
        let path = self.path.as_deref().map(str::trim).is_none_or(|p| e.path.contains(p));
        who && outcome && path
    }
}

/// Entries the log page reads for one page of matches, at most.
const LOG_SCAN: usize = 1000;
const LOG_SHOWN: usize = 100;

pub async fn log(
    State(s): State<Arc<AppState>>,
    session: WebSession,
    filter: Result<Query<LogFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let filter = filter.map(|Query(f)| f).unwrap_or_default();
    // The read of the log writes what is queued first (its route `reads_access_log`).
    let mut uri = format!("/v1/audit?limit={LOG_SCAN}");
    if let Some(before) = filter.before {
        uri.push_str(&format!("&before={before}"));
    }
    let page_json = match call_json(&s, &session.caller, Method::GET, &uri, None).await {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let entries: Vec<AuditRecord> = serde_json::from_value(page_json["entries"].clone()).unwrap_or_default();
    let shown: Vec<&AuditRecord> = entries.iter().filter(|r| filter.matches(r)).take(LOG_SHOWN).collect();
    let older = match shown.len() == LOG_SHOWN {
        true => shown.last().map(|r| r.seq),
        false => page_json["next_before"].as_u64(),
    };
    let mut apps: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|r| match &r.entry.actor {
            Actor::App { client_id, name, .. } => Some((client_id.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    apps.sort_unstable();
    apps.dedup_by_key(|(client, _)| *client);
    let who = filter.who.clone().unwrap_or_default();
    let outcome = filter.outcome.clone().unwrap_or_default();
    let body = html! {
        h1 { "Access log" }
        p { "Every request that reached your instance: who made it, what it did, with which permission, and the answer." }
        form.filters method="get" action="/me/log" {
            label { "Who "
                select name="who" {
                    option value="" selected[who.is_empty()] { "Anyone" }
                    option value="owner" selected[who == "owner"] { "You" }
                    @for (client, name) in &apps { option value=(client) selected[who == *client] { (name) " (app " (short(client)) ")" } }
                }
            }
            label { "Outcome "
                select name="outcome" {
                    option value="" selected[outcome.is_empty()] { "Any" }
                    option value="ok" selected[outcome == "ok"] { "Allowed" }
                    option value="refused" selected[outcome == "refused"] { "Refused" }
                }
            }
            label { "Path contains " input type="text" name="path" value=[filter.path.as_deref()]; }
            button type="submit" { "Filter" }
        }
        (log_table(&shown))
        @if let Some(before) = older {
            p { a href=(older_link(&filter, before)) { "Older entries" } }
        }
    };
    page(StatusCode::OK, "Access log", Some(&session), body)
}

/// The first hex digits of a client id: enough to tell two apps of one name apart.
fn short(client_id: &str) -> &str {
    let hex = client_id.strip_prefix("app_").unwrap_or(client_id);
    hex.get(..6).unwrap_or(hex)
}

fn older_link(f: &LogFilter, before: u64) -> String {
    let pairs = [
        ("who", f.who.clone().unwrap_or_default()),
        ("outcome", f.outcome.clone().unwrap_or_default()),
        ("path", f.path.clone().unwrap_or_default()),
        ("before", before.to_string()),
    ];
    format!("/me/log?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

fn log_table(entries: &[&AuditRecord]) -> Markup {
    html! {
        @if entries.is_empty() { p #log-empty { "Nothing matches." } }
        @else {
            table #log {
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Request" } th scope="col" { "Permission" } th scope="col" { "Answer" } } }
                tbody {
                    @for r in entries {
                        tr.refused[r.entry.status >= 400] {
                            td { (when_ms(r.entry.at_ms)) }
                            td { @match &r.entry.actor {
                                Actor::Owner => strong { "You" },
                                Actor::App { name, client_id, .. } => { (name) " " small.tag { "app " (short(client_id)) } },
                                Actor::System => "selfcloud",
                            } }
                            td { code { (r.entry.method) " " (r.entry.path) } }
                            td { @if let Some(sc) = &r.entry.scope { (described(sc)) } @else { "\u{2014}" } }
                            td { (r.entry.status) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_instance::AuditEntry;

    fn record(actor: Actor, path: &str, status: u16) -> AuditRecord {
        let entry = AuditEntry {
            at_ms: 0,
            actor,
            method: "GET".into(),
            path: path.into(),
            scope: None,
            status,
            request_id: None,
        };
        AuditRecord { seq: 1, entry }
    }

    #[test]
    fn the_log_filters_by_who_outcome_and_path() {
        let app = Actor::App { client_id: "app_1".into(), name: "Notes".into(), grant_id: "g".into() };
        let rows = [
            record(Actor::Owner, "/v1/me", 200),
            record(app.clone(), "/v1/storage/notes/a", 200),
            record(app, "/v1/storage/diary/x", 403),
        ];
        let keep = |f: LogFilter| rows.iter().filter(|r| f.matches(r)).count();
        assert_eq!(keep(LogFilter::default()), 3);
        assert_eq!(keep(LogFilter { who: Some("owner".into()), ..Default::default() }), 1);
        assert_eq!(keep(LogFilter { who: Some("app_1".into()), ..Default::default() }), 2);
        assert_eq!(keep(LogFilter { who: Some("Notes".into()), ..Default::default() }), 0, "by client id, not by name");
        let you = Actor::App { client_id: "app_2".into(), name: "You".into(), grant_id: "h".into() };
        let owner = LogFilter { who: Some("owner".into()), ..Default::default() };
        assert!(!owner.matches(&record(you, "/v1/me", 200)), "an app named You is not the owner");
        assert_eq!(keep(LogFilter { outcome: Some("refused".into()), ..Default::default() }), 1);
        assert_eq!(
            keep(LogFilter { outcome: Some("ok".into()), path: Some("storage".into()), ..Default::default() }),
            1
        );
    }
}
