//! The owner's assistant on the dashboard: ask (the answer streams with the page's script, and
//! arrives whole without it), the memories it keeps, and which collections it reads.

use super::layout::{self, csrf_field, error_page};
use super::session::{Empty, Posted};
use super::{call, call_json, json_of, WebSession};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use selfcloud_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The longest answer the dashboard asks for (a chat, not an essay).
const ANSWER_TOKENS: u32 = 400;

/// What the page shows after a question asked without the script: the question and its answer.
struct Answered {
    question: String,
    answer: Value,
}

async fn render(s: &AppState, session: &WebSession, answered: Option<Answered>) -> Response {
    let caller = &session.caller;
    let memories = match call_json(s, caller, Method::GET, "/v1/assistant/memories", None).await {
        Ok(m) => m["memories"].as_array().cloned().unwrap_or_default(),
        Err(e) => return error_page(&e),
    };
    let settings = match call_json(s, caller, Method::GET, "/v1/assistant/settings", None).await {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let reads: String = settings["collections"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let body = html! {
        h1 { "Your assistant" }
        p { "It answers from your own records and the memories below. Your questions and its answers stay in your instance." }
        form #ask method="post" action="/me/assistant" data-stream="/me/assistant/stream" {
            (csrf_field(session))
            @if let Some(a) = &answered { @if let Some(c) = a.answer["conversation"].as_str() { input type="hidden" name="conversation" value=(c); } }
            label { "Ask" textarea name="message" rows="3" required maxlength="4096" {} }
            button type="submit" { "Ask" }
        }
        section #conversation aria-live="polite" {
            @if let Some(a) = &answered { (exchange(&a.question, &a.answer)) }
        }
        section aria-labelledby="memories" {
            h2 #memories { "What it remembers" }
            @if memories.is_empty() { p { "Nothing yet." } }
            ul.memories {
                @for m in &memories {
                    li {
                        span { (m["text"].as_str().unwrap_or_default()) }
                        form.inline method="post" action={ "/me/assistant/memories/" (m["id"].as_str().unwrap_or_default()) "/forget" } {
                            (csrf_field(session))
                            button.link type="submit" { "Forget" }
                        }
                    }
                }
            }
            form method="post" action="/me/assistant/memories" {
                (csrf_field(session))
                label { "Something it should remember" input type="text" name="text" required maxlength="2000"; }
                button type="submit" { "Remember" }
            }
        }
        section aria-labelledby="reads" {
            h2 #reads { "What it may read" }
            form method="post" action="/me/assistant/settings" {
                (csrf_field(session))
                label { "Collections, separated by commas (empty: all of them)" input type="text" name="collections" value=(reads); }
                button type="submit" { "Save" }
            }
        }
    };
    layout::page(StatusCode::OK, "Assistant", Some(session), body)
}

/// One question and its answer, with the records it was given.
fn exchange(question: &str, answer: &Value) -> Markup {
    html! {
        div.turn.user { (question) }
        div.turn.assistant { (answer["answer"].as_str().unwrap_or_default()) }
        @if let Some(cites) = answer["citations"].as_array() {
            @if !cites.is_empty() {
                p.sources { "From: "
                    @for c in cites { code { (c["collection"].as_str().unwrap_or_default()) "/" (c["key"].as_str().unwrap_or_default()) } " " }
                }
            }
        }
    }
}

pub async fn page(State(s): State<Arc<AppState>>, session: WebSession) -> Response {
    render(&s, &session, None).await
}

#[derive(Deserialize)]
pub struct AskForm {
    message: String,
    conversation: Option<String>,
}

/// A question from the page's script: JSON, the token in `x-csrf-token` (a header no other
/// origin's page can set); the answer streams back as the instance sends it.
pub async fn ask_streaming(
    State(s): State<Arc<AppState>>,
    session: WebSession,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if let Err(e) = session.check_csrf(sent) {
        return ApiError(e).into_response();
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        let e = Error::new(selfcloud_core::ErrorCode::UnsupportedMediaType, "send the question as JSON");
        return ApiError(e).into_response();
    }
    let Ok(mut question) = serde_json::from_slice::<Value>(&body) else {
        return ApiError(Error::invalid("the question is not JSON")).into_response();
    };
    let Some(fields) = question.as_object_mut() else {
        return ApiError(Error::invalid("the question is a JSON object")).into_response();
    };
    fields.retain(|k, _| matches!(k.as_str(), "message" | "conversation"));
    fields.insert("stream".into(), json!(true));
    fields.insert("max_tokens".into(), json!(ANSWER_TOKENS));
    match call(&s, &session.caller, Method::POST, "/v1/assistant/chat", Some(question)).await {
        Ok(resp) => resp,
        Err(e) => ApiError(e).into_response(),
    }
}

/// A question from the plain form (no script): the answer comes whole, on the page.
pub async fn ask(State(s): State<Arc<AppState>>, Posted { session, form: f }: Posted<AskForm>) -> Response {
    let mut question = json!({"message": f.message, "max_tokens": ANSWER_TOKENS});
    if let Some(c) = f.conversation.filter(|c| !c.is_empty()) {
        question["conversation"] = json!(c);
    }
    let answer = match call(&s, &session.caller, Method::POST, "/v1/assistant/chat", Some(question)).await {
        Ok(resp) => json_of(resp).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => render(&s, &session, Some(Answered { question: f.message, answer })).await,
        Err(e) => error_page(&e),
    }
}

#[derive(Deserialize)]
pub struct MemoryForm {
    text: String,
}

pub async fn remember(State(s): State<Arc<AppState>>, Posted { session, form: f }: Posted<MemoryForm>) -> Response {
    done(call_json(&s, &session.caller, Method::POST, "/v1/assistant/memories", Some(json!({"text": f.text}))).await)
}

pub async fn forget(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Empty>,
) -> Response {
    let uri =
        format!("/v1/assistant/memories/{}", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>());
    done(call_json(&s, &session.caller, Method::DELETE, &uri, None).await)
}

#[derive(Deserialize)]
pub struct SettingsForm {
    collections: String,
}

pub async fn settings(State(s): State<Arc<AppState>>, Posted { session, form: f }: Posted<SettingsForm>) -> Response {
    let names: Vec<&str> = f.collections.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    let collections = if names.is_empty() { Value::Null } else { json!(names) };
    done(
        call_json(
            &s,
            &session.caller,
            Method::PUT,
            "/v1/assistant/settings",
            Some(json!({"collections": collections})),
        )
        .await,
    )
}

fn done(result: Result<Value, Error>) -> Response {
    match result {
        Ok(_) => Redirect::to("/me/assistant").into_response(),
        Err(e) => error_page(&e),
    }
}
