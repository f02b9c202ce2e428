//! The gateway: the only way into an instance. It authenticates every request, checks its scope,
//! rate-limits it, audits it, and hands it to the caller's instance through control. It never
//! opens a store itself.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod throttle;
pub mod untrusted;
pub mod web;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use axum::Router;
use clock::Clock;
use oauth::handlers as oauth_http;
use routes::{accounts, admin, apps};
use selfcloud_control::Control;
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Settings of the HTTP face.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Public base URL (the OAuth issuer). Defaults to `http://<listen address>`.
    pub public_url: Option<String>,
    /// Entries the audit queue holds before requests wait for the writer.
    pub audit_queue: usize,
    pub connections: server::ConnectionLimits,
    /// Serve the development endpoint that makes test users (`POST /v1/admin/test-users`).
    pub dev_test_users: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            public_url: None,
            audit_queue: 65_536,
            connections: server::ConnectionLimits::default(),
            dev_test_users: false,
        }
    }
}

/// A running gateway: its address, and a handle to wait for its clean end.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
    audit_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the server has drained after `shutdown` was cancelled and the audit queue is
    /// written.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?;
        let control = self.state.control.clone();
        drop(self.state); // the last audit sink goes with it, so the writer can finish
        let _ = self.audit_task.await;
        // Then every instance drains and stops (its audit is written by now).
        control.stop_all().await;
        Ok(())
    }
}

/// Builds the router over a shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_value_bytes + 64 * 1024;

    // Routes that reach an instance: authenticated and audited. The parts' routes come from
    // their declarations (`routes::forward::routes`); `/v1/me` is the gateway's own.
    let instance_api = routes::forward::routes()
        .route("/v1/me", get(accounts::me))
        .route_layer(from_fn_with_state(state.clone(), auth::audited));

    // Routes that need a token but are not instance data (the owner's and developer's APIs):
    // audited too, so every change to the account, its apps and its grants is in its log.
    let authenticated = Router::new()
        .route("/v1/accounts/me", axum::routing::delete(accounts::delete_account))
        .route("/v1/accounts/me/password", put(accounts::change_password))
        .route("/v1/sessions", axum::routing::delete(accounts::delete_session))
        .route("/v1/apps", post(apps::register).get(apps::list))
        .route("/v1/apps/{id}", axum::routing::delete(apps::delete))
        .route("/v1/grants", get(apps::list_grants))
        .route("/v1/grants/{id}", axum::routing::delete(apps::revoke_grant).patch(apps::change_grant))
        .route_layer(from_fn_with_state(state.clone(), auth::audited))
        .merge(instance_api)
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));

    let operator = Router::new()
        .route("/v1/admin/instances", get(admin::list_instances))
        .route("/v1/admin/instances/{id}/tier", put(admin::set_tier))
        .route("/v1/admin/test-users", post(admin::test_user))
        .route_layer(from_fn_with_state(state.clone(), admin::operator_only));

    let public = Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_endpoint))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/accounts", post(accounts::create_account))
        .route("/v1/sessions", post(accounts::create_session))
        .route("/v1/accounts/recover", post(accounts::recover))
        .route("/oauth/authorize", get(oauth_http::authorize_page).post(oauth_http::authorize_decision))
        .route("/oauth/login", post(oauth_http::login))
        .route("/.well-known/oauth-authorization-server", get(oauth_http::metadata))
        .route("/oauth/token", post(oauth_http::token))
        .route("/oauth/revoke", post(oauth_http::revoke));

    public
        .merge(web::router())
        .merge(authenticated)
        .merge(operator)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(api_cors())
        .layer(from_fn_with_state(state.metrics.clone(), metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panicked))
        .layer(from_fn_with_state(Arc::new(edge::RequestIds::new()), edge::edge))
        .with_state(state)
}

/// Whether a path is one an app running in a browser may call from its own origin: the bearer
/// API, and the OAuth endpoints an app posts to. None of them reads a cookie.
pub fn open_to_other_origins(path: &str) -> bool {
    path.starts_with("/v1/")
        || matches!(path, "/oauth/token" | "/oauth/revoke" | "/.well-known/oauth-authorization-server")
}

/// Cross-origin access for apps running in a browser (a single-page app on its own origin, with
/// the TypeScript SDK), without credentials, on [`open_to_other_origins`] paths only. Safe
/// because those take a bearer token or a form, never a cookie: another site's page can do
/// nothing there a script of its own could not. The Super-App's pages and the consent flow,
/// which the cookie opens, answer no other origin.
fn api_cors() -> tower_http::cors::CorsLayer {
    use axum::http::{header as h, Method};
    let open = tower_http::cors::AllowOrigin::predicate(|_, request: &axum::http::request::Parts| {
        open_to_other_origins(request.uri.path())
    });
    tower_http::cors::CorsLayer::new()
        .allow_origin(open)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([h::AUTHORIZATION, h::CONTENT_TYPE, h::IF_MATCH, h::IF_NONE_MATCH])
        .expose_headers([h::ETAG, h::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

async fn metrics_endpoint(axum::extract::State(s): axum::extract::State<Arc<AppState>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = s.metrics.render(s.control.instances_provisioned(), &s.control.runtime_summary());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// Binds nothing itself: serves on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    clock: Arc<dyn Clock>,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let limits = control.config().limits;
    let audit_failures = prometheus_client::metrics::counter::Counter::default();
    let metrics = Arc::new(metrics::Metrics::new(audit_failures.clone()));
    let (audit, audit_task) =
        audit::AuditSink::start(control.clone(), audit_failures, config.audit_queue, limits.audit_retention);
    let issuer = config.public_url.unwrap_or_else(|| format!("http://{addr}")).trim_end_matches('/').to_owned();
    let state = Arc::new(AppState {
        rate: ratelimit::RateLimits::new(&limits),
        log_ins: throttle::LogInThrottle::new(&limits),
        secure_cookies: issuer.starts_with("https://"),
        dev_test_users: config.dev_test_users,
        control,
        clock,
        limits,
        metrics,
        audit,
        issuer,
    });
    let wakes = state.metrics.wakes.clone();
    state.control.observe_wakes(Box::new(move |took| wakes.observe(took.as_secs_f64())));
    spawn_sweeper(state.clone(), shutdown.clone());
    spawn_hibernator(state.control.clone(), shutdown.clone());
    let task = tokio::spawn(server::run(listener, router(state.clone()), config.connections, shutdown));
    Ok(Running { addr, state, task, audit_task })
}

/// Puts idle instances to sleep, checking a few times per idle period.
fn spawn_hibernator(control: Arc<Control>, shutdown: CancellationToken) {
    let every = (control.config().hibernate_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let weak = Arc::downgrade(&control);
    drop(control);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(control) = weak.upgrade() else { return };
            control.hibernate_idle().await;
        }
    });
}

/// Periodic housekeeping: expired tokens and idle rate-limit buckets leave memory.
fn spawn_sweeper(state: Arc<AppState>, shutdown: CancellationToken) {
    let weak = Arc::downgrade(&state);
    drop(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(state) = weak.upgrade() else { return };
            if let Err(e) = state.control.sweep_tokens(state.clock.now()).await {
                tracing::warn!(error = %e, detail = ?e.detail, "sweeping expired tokens failed");
            }
            state.rate.sweep();
        }
    });
}
