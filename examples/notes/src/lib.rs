//! Notes, an example third-party app. It is not part of selfcloud: it runs on its own port, is
//! registered like any app, and reaches a user's instance only through the SDK, with the
//! scopes the user allowed. It asks for `storage:read:notes storage:write:notes llm:chat`.
//!
//! Its state is a map from its own session cookie to the SDK client holding that visitor's
//! tokens; a real app would keep the refresh token in its database. What any OAuth client owes
//! its users, it does: a connection finishes only in the browser that started it (the `state`
//! is also in that browser's cookie, so nobody can hand a victim a callback that connects the
//! victim's Notes to the attacker's instance), and its forms carry the visitor's token. On plain
//! HTTP over loopback, as here, cookies are shared by every port of the host, so a program on
//! another port could read or plant them; a deployed app has its own HTTPS origin.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
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
/// The `state` of the connection this browser started, for the callback to match.
const CONNECTING: &str = "notes_connecting";

/// A connected visitor: their selfcloud tokens (in the SDK client) and their forms' token.
struct Visitor {
    client: Arc<Client>,
    csrf: String,
}

#[derive(Default)]
struct Visitors {
    /// Authorization requests on their way, by `state`.
    pending: HashMap<String, AuthorizationRequest>,
    /// Connected visitors, by session id.
    connected: HashMap<String, Visitor>,
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

fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == wanted).then(|| value.to_owned())
    })
}

fn random_id() -> String {
    (0..24).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect()
}

impl App {
    /// The connected visitor's client and form token.
    fn visitor(&self, headers: &HeaderMap) -> Option<(Arc<Client>, String)> {
        let id = cookie(headers, COOKIE)?;
        self.visitors.lock().unwrap().connected.get(&id).map(|v| (v.client.clone(), v.csrf.clone()))
    }

    /// The visitor's client, for a form that carried their token.
    fn posted(&self, headers: &HeaderMap, csrf: &str) -> Option<Arc<Client>> {
        self.visitor(headers).filter(|(_, token)| token == csrf).map(|(client, _)| client)
    }
}

#[derive(Deserialize)]
struct Posted {
    csrf: String,
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
    let Some((client, csrf)) = app.visitor(&headers) else {
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
                input type="hidden" name="csrf" value=(csrf);
                label { "New note " input type="text" name="text" required; }
                button type="submit" { "Save" }
            }
            form method="post" action="/summarize" {
                input type="hidden" name="csrf" value=(csrf);
                button #summarize type="submit" { "Summarize with my assistant" }
            }
        },
    )
}

async fn connect(State(app): State<App>) -> Response {
    let request = AuthorizationRequest::new(&app.config, &SCOPES);
    let url = request.url().to_string();
    let state = request.state().to_owned();
    app.visitors.lock().unwrap().pending.insert(state.clone(), request);
    let cookie = format!("{CONNECTING}={state}; Path=/callback; HttpOnly; SameSite=Lax; Max-Age=600");
    ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
}

#[derive(Deserialize)]
struct Callback {
    state: Option<String>,
}

async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
    uri: axum::http::Uri,
) -> Response {
    // Only the browser that started this connection may finish it.
    let started_here = q.state.is_some() && q.state == cookie(&headers, CONNECTING);
    let request = q.state.filter(|_| started_here).and_then(|s| app.visitors.lock().unwrap().pending.remove(&s));
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
    let id = random_id();
    app.visitors.lock().unwrap().connected.insert(id.clone(), Visitor { client: Arc::new(client), csrf: random_id() });
    let session = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
    let spent = format!("{CONNECTING}=; Path=/callback; HttpOnly; SameSite=Lax; Max-Age=0");
    (AppendHeaders([(header::SET_COOKIE, session), (header::SET_COOKIE, spent)]), Redirect::to("/")).into_response()
}

/// A form posted without its visitor's token (from another site's page, or another port of
/// this host, which a `SameSite` cookie does not tell apart, and which cannot read this page
/// for the token): refused.
fn refused_form() -> Response {
    (StatusCode::FORBIDDEN, "this form was not sent from Notes' own page").into_response()
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
    csrf: String,
}

async fn add_note(State(app): State<App>, headers: HeaderMap, Form(note): Form<NewNote>) -> Response {
    let Some(client) = app.posted(&headers, &note.csrf) else { return refused_form() };
    let key = format!("{:x}", rand::random::<u64>());
    match client.storage().put("notes", &key, &json!({"text": note.text})).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => page("Not saved", html! { p #error { (refusal(&e)) } p { a href="/" { "Back" } } }),
    }
}

async fn summarize(State(app): State<App>, headers: HeaderMap, Form(form): Form<Posted>) -> Response {
    let Some(client) = app.posted(&headers, &form.csrf) else { return refused_form() };
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
