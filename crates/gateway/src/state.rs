//! What every handler shares.

use crate::audit::AuditSink;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use selfcloud_control::Control;
use selfcloud_core::config::Limits;
use std::sync::Arc;

pub struct AppState {
    pub control: Arc<Control>,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    pub rate: RateLimits,
    /// Failed password checks per username.
    pub log_ins: crate::throttle::LogInThrottle,
    pub metrics: Arc<Metrics>,
    pub audit: AuditSink,
    /// The public base URL (OAuth issuer), without a trailing slash.
    pub issuer: String,
    /// Whether the session cookie is marked `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
    /// Whether `POST /v1/admin/test-users` is served (development only).
    pub dev_test_users: bool,
}
