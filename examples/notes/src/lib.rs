//! Notes, an example third-party app. It is not part of selfcloud: it runs on its own port, is
//! registered like any app, and reaches a user's instance only through the SDK, with the
//! scopes the user allowed. It asks for `storage:read:notes storage:write:notes llm:chat`.
//!
//! Its state is a map from its own session cookie to the SDK client holding that visitor's
//! tokens; a real app would keep the refresh token in its database.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use selfcloud_sdk::{AppConfig, AuthorizationRequest, Client, Error, Method};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The scopes Notes asks for: its own collection, and the user's assistant.
pub const SCOPES: [&str; 3] = ["storage:read:notes", "storage:write:notes", "llm:chat"];
const COOKIE: &str = "notes_session";

#[derive(Default)]
struct Visitors {
    /// Authorization requests on their way, by `state`.
    pending: HashMap<String, AuthorizationRequest>,
    /// Connected visitors, by session id.
    connected: HashMap<String, Arc<Client>>,
}

#[derive(Clone)]
struct App {
    config: AppConfig,
    visitors: Arc<Mutex<Visitors>>,
}

/// The app's routes, for the selfcloud at `config.base_url`.
pub fn router(config: AppConfig) -> Router {
    let app = App { config, visitors: Arc::default() };
    Router::new()
        .route("/", get(home))
        .route("/connect", get(connect))
        .route("/callback", get(callback))
        .route("/notes", post(add_note))
        .route("/summarize", post(summarize))
        .with_state(app)
}

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { (title) " \u{2013} Notes" } }
            body { h1 { "Notes" } (body) } }
    };
    let mut resp = Html(markup.into_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'".parse().unwrap(),
    );
    resp
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == COOKIE).then(|| value.to_owned())
    })
}

impl App {
    fn client(&self, headers: &HeaderMap) -> Option<Arc<Client>> {
        let id = session_of(headers)?;
        self.visitors.lock().unwrap().connected.get(&id).cloned()
    }
}

/// What a failed call tells the visitor: the SDK keeps the server's error code.
fn refusal(e: &Error) -> String {
    match e {
        Error::Api { code, message, .. } if code == "forbidden" => format!("selfcloud refused: {message}"),
        Error::Api { status: 401, .. } => "Your selfcloud no longer lets Notes in. Connect again.".into(),
        other => format!("selfcloud: {other}"),
    }
}

async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(client) = app.client(&headers) else {
        return page(
            "Connect",
            html! {
                p { "Notes keeps your notes in your own selfcloud instance, not here." }
                p { a #connect href="/connect" { "Connect your selfcloud" } }
            },
        );
    };
    let listed = client.storage().list("notes", None, Some(100), None).await;
    page(
        "Your notes",
        html! {
            @match &listed {
                Ok(p) => ul #notes { @for r in &p.records { li { (r.value["text"].as_str().unwrap_or_default()) } } },
                Err(e) => p #error { (refusal(e)) },
            }
            form method="post" action="/notes" {
                label { "New note " input type="text" name="text" required; }
                button type="submit" { "Save" }
            }
            form method="post" action="/summarize" { button #summarize type="submit" { "Summarize with my assistant" } }
        },
    )
}

async fn connect(State(app): State<App>) -> Response {
    let request = AuthorizationRequest::new(&app.config, &SCOPES);
    let url = request.url().to_string();
    app.visitors.lock().unwrap().pending.insert(request.state().to_owned(), request);
    Redirect::to(&url).into_response()
}

#[derive(Deserialize)]
struct Callback {
    state: Option<String>,
}

async fn callback(State(app): State<App>, Query(q): Query<Callback>, uri: axum::http::Uri) -> Response {
    let request = q.state.and_then(|s| app.visitors.lock().unwrap().pending.remove(&s));
    let Some(request) = request else { return (StatusCode::BAD_REQUEST, "unknown or spent state").into_response() };
    let location = format!("{}?{}", app.config.redirect_uri, uri.query().unwrap_or_default());
    let code = match request.finish(&location) {
        Ok(code) => code,
        Err(e) => return page("Not connected", html! { p #error { "Not connected: " (e.to_string()) } }),
    };
    let client = Client::new(app.config.clone());
    if let Err(e) = client.exchange_code(&request, &code).await {
        return page("Not connected", html! { p #error { (refusal(&e)) } });
    }
    let id: String = (0..24).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
    app.visitors.lock().unwrap().connected.insert(id.clone(), Arc::new(client));
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn add_note(State(app): State<App>, headers: HeaderMap, Form(note): Form<NewNote>) -> Response {
    let Some(client) = app.client(&headers) else { return Redirect::to("/").into_response() };
    let key = format!("{:x}", rand::random::<u64>());
    match client.storage().put("notes", &key, &json!({"text": note.text})).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => page("Not saved", html! { p #error { (refusal(&e)) } p { a href="/" { "Back" } } }),
    }
}

async fn summarize(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(client) = app.client(&headers) else { return Redirect::to("/").into_response() };
    let notes = match client.storage().list("notes", None, Some(100), None).await {
        Ok(p) => p.records.iter().filter_map(|r| r.value["text"].as_str().map(str::to_owned)).collect::<Vec<_>>(),
        Err(e) => return page("No summary", html! { p #error { (refusal(&e)) } }),
    };
    let ask = json!({"messages": [
        {"role": "system", "content": "Summarize the user's notes in one short sentence."},
        {"role": "user", "content": notes.join("\n")},
    ], "max_tokens": 48});
    match client.send_json(Method::POST, "/v1/llm/chat/completions", Some(&ask)).await {
        Ok(answer) => page(
            "Summary",
            html! {
                p #summary { (answer["choices"][0]["message"]["content"].as_str().unwrap_or_default()) }
                p { a href="/" { "Back" } }
            },
        ),
        Err(e) => page("No summary", html! { p #error { (refusal(&e)) } p { a href="/" { "Back" } } }),
    }
}
