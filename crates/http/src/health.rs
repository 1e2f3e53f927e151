//! Liveness and readiness endpoints.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A readiness check (database reachable, …); `Err` carries a short, non-sensitive reason.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Whether the process is stopping: set at SIGTERM, after which `/readyz` answers 503 `draining`
/// while requests are still served, so that load balancers (a Kubernetes Service, the gateway's
/// upstream health checks) stop sending new ones before the listener closes. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Marks the process as draining (for good: a stop is not called off).
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`start`](Self::start) was called.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/livez` (the process runs) and `/readyz` (not draining, and every dependency answers).
pub fn health_router(checks: Vec<Readiness>, draining: Draining) -> Router {
    let checks = Arc::new(checks);
    Router::new().route("/livez", get(|| async { (StatusCode::OK, "ok") })).route(
        "/readyz",
        get(move || {
            let checks = checks.clone();
            let draining = draining.clone();
            async move {
                if draining.is_draining() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned());
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn readyz(router: &Router) -> (StatusCode, String) {
        let resp = router.clone().oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_draining_process_is_not_ready_but_alive() {
        let draining = Draining::default();
        let router = health_router(Vec::new(), draining.clone());
        assert_eq!(readyz(&router).await, (StatusCode::OK, "ready".to_owned()));
        draining.start();
        assert_eq!(readyz(&router).await, (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned()));
        let live = router.oneshot(Request::get("/livez").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
    }
}
