//! Liveness and readiness endpoints.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A readiness check (database reachable, …); `Err` carries a short, non-sensitive reason.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// `/livez` (the process runs) and `/readyz` (every dependency answers).
pub fn health_router(checks: Vec<Readiness>) -> Router {
    let checks = Arc::new(checks);
    Router::new().route("/livez", get(|| async { (StatusCode::OK, "ok") })).route(
        "/readyz",
        get(move || {
            let checks = checks.clone();
            async move {
                for check in checks.iter() {
                    if let Err(reason) = check().await {
                        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}"));
                    }
                }
                (StatusCode::OK, "ready".to_owned())
            }
        }),
    )
}
