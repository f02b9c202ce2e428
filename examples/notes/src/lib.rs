//! Notes, an example third-party app. It is not part of selfcloud: it runs on its own port, is
//! registered like any app, and reaches a user's instance only through the SDK, with the
//! scopes the user allowed. It asks for `storage:read:notes storage:write:notes llm:chat`.
//!
//! It is built on the SDK's `App` (the connection URL, the callback) and `Session`. Its state is a
//! map from its own session cookie to that visitor's session; a real app would keep the refresh
//! token in its database. What any OAuth client owes
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
use selfcloud_sdk::{AppConfig, Error, Method, Session};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The scopes Notes asks for: its own collection, and the user's assistant.
pub const SCOPES: [&str; 3] = ["storage:read:notes", "storage:write:notes", "llm:chat"];
const COOKIE: &str = "notes_session";
/// The `state` of the connection this browser started, for the callback to match.
const CONNECTING: &str = "notes_connecting";

/// A connected visitor: their selfcloud session and their forms' token.
struct Visitor {
    session: Arc<Session>,
    csrf: String,
}

#[derive(Clone)]
struct App {
    /// The SDK's app: it keeps the connections on their way (bounded) and checks each callback.
    sdk: Arc<selfcloud_sdk::App>,
    /// Connected visitors, by session id.
    visitors: Arc<Mutex<HashMap<String, Visitor>>>,
}

/// The app's routes, for the selfcloud at `config.base_url`.
pub fn router(config: AppConfig) -> Router {
    let sdk = selfcloud_sdk::App::new(&config.client_id, config.base_url.as_str(), &config.redirect_uri)
        .expect("an AppConfig's base URL is a URL");
    let app = App { sdk: Arc::new(sdk), visitors: Arc::default() };
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
    /// The connected visitor's session and form token.
    fn visitor(&self, headers: &HeaderMap) -> Option<(Arc<Session>, String)> {
        let id = cookie(headers, COOKIE)?;
        self.visitors.lock().unwrap().get(&id).map(|v| (v.session.clone(), v.csrf.clone()))
    }

    /// The visitor's session, for a form that carried their token.
    fn posted(&self, headers: &HeaderMap, csrf: &str) -> Option<Arc<Session>> {
        self.visitor(headers).filter(|(_, token)| token == csrf).map(|(session, _)| session)
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
    let Some((session, csrf)) = app.visitor(&headers) else {
        return page(
            "Connect",
            html! {
                p { "Notes keeps your notes in your own selfcloud instance, not here." }
                p { a #connect href="/connect" { "Connect your selfcloud" } }
            },
        );
    };
    let listed = session.client().storage().list("notes", None, Some(100), None).await;
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
    let url = app.sdk.create_connection_url(&SCOPES);
    let state = state_of(&url).unwrap_or_default();
    let cookie = format!("{CONNECTING}={state}; Path=/callback; HttpOnly; SameSite=Lax; Max-Age=600");
    ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
}

/// The `state` a connection URL carries.
fn state_of(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "state").map(|(_, v)| v.into_owned())
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
    if q.state.is_none() || q.state != cookie(&headers, CONNECTING) {
        return (StatusCode::BAD_REQUEST, "this browser did not start that connection").into_response();
    }
    let session = match app.sdk.handle_callback(uri.query().unwrap_or_default()).await {
        Ok(session) => session,
        Err(e @ Error::Api { .. }) => return page("Not connected", html! { p #error { (refusal(&e)) } }),
        Err(e) => return page("Not connected", html! { p #error { "Not connected: " (e.to_string()) } }),
    };
    let id = random_id();
    app.visitors.lock().unwrap().insert(id.clone(), Visitor { session: Arc::new(session), csrf: random_id() });
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
    let Some(session) = app.posted(&headers, &note.csrf) else { return refused_form() };
    let key = format!("{:x}", rand::random::<u64>());
    match session.client().storage().put("notes", &key, &json!({"text": note.text})).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => page("Not saved", html! { p #error { (refusal(&e)) } p { a href="/" { "Back" } } }),
    }
}

async fn summarize(State(app): State<App>, headers: HeaderMap, Form(form): Form<Posted>) -> Response {
    let Some(session) = app.posted(&headers, &form.csrf) else { return refused_form() };
    let notes = match session.client().storage().list("notes", None, Some(100), None).await {
        Ok(p) => p.records.iter().filter_map(|r| r.value["text"].as_str().map(str::to_owned)).collect::<Vec<_>>(),
        Err(e) => return page("No summary", html! { p #error { (refusal(&e)) } }),
    };
    let ask = json!({"messages": [
        {"role": "system", "content": "Summarize the user's notes in one short sentence."},
        {"role": "user", "content": notes.join("\n")},
    ], "max_tokens": 48});
    match session.client().send_json(Method::POST, "/v1/llm/chat/completions", Some(&ask)).await {
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
