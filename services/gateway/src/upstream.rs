//! The instances of a service called over HTTP (microservices mode): which one a request goes
//! to, which ones are healthy, and when a failed request may go to the next one.
//!
//! - **Selection**: round-robin among the instances last seen healthy; when none is, among all
//!   of them. The instances taken out come after the healthy ones, as a last resort.
//! - **Health**: every `gateway.upstream_check_ms`, `GET <base>/readyz` per instance (at most
//!   [`CHECK_TIMEOUT`]); anything but a 200 in time takes the instance out until it answers 200
//!   again. A draining instance answers 503 (`ehr_http::Draining`) while it still serves, so the
//!   gateway stops sending to it before its listener closes. A failed connection takes it out at
//!   once.
//! - **Failover**: a request whose connection could not be made was not sent: it goes to the
//!   next instance whatever its method. Any other failure before a response (reset, closed
//!   connection) may come after the service received it: only idempotent methods (GET, HEAD,
//!   PUT, DELETE, OPTIONS; RFC 9110 §9.2.2) are sent again; a POST or PATCH is not, it is a 502.
//!   Nor is a GET with a side effect ([`has_side_effect`]): the bulk-data kick-off
//!   `GET …/$export` starts a job, and a second attempt could start a second one.
//!   A replayed `PUT` is idempotent only in its final state: without `If-Match`, a replayed
//!   update whose first attempt committed makes one more (identical) version, and a replayed
//!   conditional create (`PUT ?identifier=…`) may find the resource the first attempt created
//!   and update it; with `If-Match`, the replay answers 412 although the update was made.
//!   A timeout is never retried (the service is slow, not gone: another attempt would double
//!   the wait). A response, whatever its status, is the answer.
//!
//! In Kubernetes a Service name is one URL (kube-proxy balances, readiness gates the endpoints);
//! the list form is for deployments without such a balancer.

use crate::error::GatewayError;
use crate::settings::BaseUrls;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Longest wait for an instance's `/readyz`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A service's instances behind the gateway.
pub struct RemoteService {
    /// The service's name (`orders`), for logs.
    service: String,
    instances: Vec<Instance>,
    /// Round-robin position.
    next: AtomicUsize,
    client: reqwest::Client,
}

struct Instance {
    base: String,
    healthy: AtomicBool,
}

/// Whether a request to `path` that failed with `e` before any response may be sent to another
/// instance.
fn may_retry(method: &Method, path: &str, e: &reqwest::Error) -> bool {
    retry_rule(method, e.is_connect(), e.is_timeout(), e.is_builder())
        && (e.is_connect() || !has_side_effect(method, path))
}

/// Whether a request whose method is idempotent by RFC 9110 has a side effect all the same: a
/// `GET` whose path (before the query) has a `$export` segment — the bulk-data kick-off at the
/// system level, `Patient/` or `Group/{id}/`, which starts an export job. `$export-status` and
/// `$export-file` (reading a job's status, downloading a file) are other segments and do not
/// count; a percent-encoded `%24export` does.
fn has_side_effect(method: &Method, path: &str) -> bool {
    if *method != Method::GET {
        return false;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| segment == "$export" || segment.eq_ignore_ascii_case("%24export"))
}

/// [`may_retry`] on the classification of the failure: not connected (nothing was sent), timed
/// out, or a request that cannot be built (it would fail everywhere).
fn retry_rule(method: &Method, connect: bool, timeout: bool, builder: bool) -> bool {
    if builder {
        return false;
    }
    // A connect timeout is both: the connection never existed, so nothing was sent.
    if connect {
        return true;
    }
    !timeout && is_idempotent(method)
}

/// The methods that may be repeated without changing the outcome (RFC 9110 §9.2.2); TRACE is
/// not forwarded by the gateway's routes.
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
}

impl RemoteService {
    /// The instances at `urls` of `service`, all taken as healthy until checked; see
    /// [`spawn_health_checks`](Self::spawn_health_checks).
    pub fn new(service: &str, urls: &BaseUrls, client: reqwest::Client) -> Arc<Self> {
        let instances = urls
            .as_slice()
            .iter()
            .map(|base| Instance { base: base.clone(), healthy: AtomicBool::new(true) })
            .collect();
        Arc::new(Self { service: service.to_owned(), instances, next: AtomicUsize::new(0), client })
    }

    /// Checks every instance's `/readyz` every `every`, one task per instance, each ending
    /// once the service is no longer routed to (the router holding it was dropped).
    pub fn spawn_health_checks(self: &Arc<Self>, every: Duration) {
        for index in 0..self.instances.len() {
            let service: Weak<Self> = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(service) = service.upgrade() else { break };
                    service.check(index).await;
                }
            });
        }
    }

    /// The base URLs, in configured order.
    pub fn bases(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|i| i.base.as_str())
    }

    /// One health check of instance `index`.
    async fn check(&self, index: usize) {
        let Some(instance) = self.instances.get(index) else { return };
        let url = format!("{}/readyz", instance.base);
        match self.client.get(url).timeout(CHECK_TIMEOUT).send().await {
            Ok(resp) if resp.status() == StatusCode::OK => self.mark(index, true, "ready"),
            // `503 draining`, `503 not ready: database unreachable`: the status and the start of
            // the service's own reason (no patient data: the text of `ehr_http::health_router`).
            Ok(resp) => {
                let status = resp.status();
                let reason = resp.text().await.unwrap_or_default();
                let reason: String = reason.chars().take(80).filter(|c| !c.is_control()).collect();
                self.mark(index, false, format!("{} {}", status.as_str(), reason.trim()).trim());
            }
            Err(e) if e.is_timeout() => self.mark(index, false, "no answer in time"),
            Err(_) => self.mark(index, false, "unreachable"),
        }
    }

    /// Records whether instance `index` is healthy, logging a change.
    fn mark(&self, index: usize, healthy: bool, why: &str) {
        let Some(instance) = self.instances.get(index) else { return };
        if instance.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!(service = %self.service, instance = %instance.base, "upstream instance back in");
            } else {
                tracing::warn!(service = %self.service, instance = %instance.base, why, "upstream instance taken out");
            }
        }
    }

    /// The order in which a request tries the instances: the healthy ones, round-robin, then
    /// the others (when none is healthy, that is all of them, round-robin).
    fn order(&self) -> Vec<usize> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (healthy, down): (Vec<usize>, Vec<usize>) =
            (0..self.instances.len()).partition(|&i| self.instances[i].healthy.load(Ordering::Relaxed));
        let rotate = |mut list: Vec<usize>| {
            if !list.is_empty() {
                let by = turn % list.len();
                list.rotate_left(by);
            }
            list
        };
        let mut order = rotate(healthy);
        order.extend(rotate(down));
        order
    }

    /// Sends a request (`path` with its query; the body is already read, so it can be sent
    /// again) to an instance, failing over as the module documentation says.
    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, GatewayError> {
        let order = self.order();
        let attempts = order.len();
        for (attempt, index) in order.into_iter().enumerate() {
            let instance = &self.instances[index];
            let sent = self
                .client
                .request(method.clone(), format!("{}{path}", instance.base))
                .headers(headers.clone())
                .body(body.clone())
                .send()
                .await;
            let e = match sent {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            if e.is_connect() {
                self.mark(index, false, "connection failed");
            }
            let allowed = may_retry(method, path, &e);
            let retry = allowed && attempt + 1 < attempts;
            // Without the URL: its query string carries patient data.
            tracing::warn!(
                service = %self.service,
                instance = %instance.base,
                error = %e.without_url(),
                retry,
                "upstream request failed"
            );
            if !allowed {
                break;
            }
        }
        Err(GatewayError::Upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use std::sync::atomic::AtomicU16;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn urls(list: &[String]) -> BaseUrls {
        list.join(",").parse().unwrap()
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// An instance answering `GET /who` with `name`, `POST /who` with `name` too, and `/readyz`
    /// with the status in `ready`.
    async fn instance(name: &'static str, ready: Arc<AtomicU16>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router =
            Router::new().route("/who", get(move || async move { name }).post(move || async move { name })).route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move { StatusCode::from_u16(ready.load(Ordering::Relaxed)).unwrap() }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    /// An address nobody listens on: connecting fails.
    fn closed() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    }

    /// An instance that reads a request and closes the connection without answering: the
    /// request was received, and may have been acted on.
    async fn swallowing() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                if socket.read(&mut buf).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let _ = socket.shutdown().await;
            }
        });
        (url, seen)
    }

    async fn who(service: &RemoteService, method: Method) -> Result<String, GatewayError> {
        let resp = service.send(&method, "/who", &HeaderMap::new(), Bytes::from_static(b"{}")).await?;
        Ok(resp.text().await.unwrap())
    }

    fn ok() -> Arc<AtomicU16> {
        Arc::new(AtomicU16::new(200))
    }

    #[test]
    fn healthy_instances_take_turns_and_the_others_come_last() {
        let list: Vec<String> = (1..=3).map(|i| format!("http://i{i}:8080")).collect();
        let service = RemoteService::new("orders", &urls(&list), client());
        let firsts: Vec<usize> = (0..6).map(|_| service.order()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(service.order().len(), 3, "every instance is tried at most once");

        // One taken out: the two others alternate, evenly, and it is the last resort.
        service.mark(1, false, "test");
        let orders: Vec<Vec<usize>> = (0..4).map(|_| service.order()).collect();
        let (a, b) = (vec![0, 2, 1], vec![2, 0, 1]);
        assert!(
            orders == [a.clone(), b.clone(), a.clone(), b.clone()] || orders == [b.clone(), a.clone(), b, a],
            "{orders:?}"
        );

        // None healthy: all of them, still in turn.
        service.mark(0, false, "test");
        service.mark(2, false, "test");
        let firsts: Vec<usize> = (0..3).map(|_| service.order()[0]).collect();
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "{firsts:?}");
        service.mark(1, true, "test");
        assert_eq!(service.order()[0], 1);
    }

    #[test]
    fn only_what_was_not_sent_or_is_idempotent_is_sent_again() {
        for method in
            [Method::GET, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS, Method::POST, Method::PATCH]
        {
            // Not connected: nothing was sent, any method goes to the next instance (also when
            // the connection timed out).
            assert!(retry_rule(&method, true, false, false), "{method}");
            assert!(retry_rule(&method, true, true, false), "{method}");
            // Sent, then the connection failed: idempotent methods only.
            let idempotent = !matches!(method, Method::POST | Method::PATCH);
            assert_eq!(retry_rule(&method, false, false, false), idempotent, "{method}");
            // Timed out after sending, or a request that cannot be built: never.
            assert!(!retry_rule(&method, false, true, false), "{method}");
            assert!(!retry_rule(&method, false, false, true), "{method}");
        }
    }

    #[test]
    fn an_export_kick_off_is_not_sent_again() {
        for kick_off in [
            "/fhir/$export",
            "/fhir/$export?_type=Patient",
            "/fhir/Patient/$export",
            "/fhir/Patient/$export?_since=2024-01-01T00:00:00Z&_type=Observation",
            "/fhir/Group/g1/$export",
            "/fhir/Group/g1/%24export",
            "/fhir/Group/g1/%24EXPORT?_outputFormat=application/fhir%2Bndjson",
        ] {
            assert!(has_side_effect(&Method::GET, kick_off), "{kick_off}");
        }
        for read in [
            "/fhir/$export-status/job1",
            "/fhir/$export-file/job1/Patient-1.ndjson",
            "/fhir/Patient/p1",
            "/fhir/Patient?identifier=$export",
            "/fhir/Patient/p1/$everything",
            "/fhir/Patient/$exports",
        ] {
            assert!(!has_side_effect(&Method::GET, read), "{read}");
        }
        // The kick-off by POST is not idempotent anyway; a DELETE of a job is a cancel.
        assert!(!has_side_effect(&Method::DELETE, "/fhir/$export-status/job1"));
    }

    #[tokio::test]
    async fn an_export_kick_off_lost_after_sending_is_not_repeated() {
        let (swallow, seen) = swallowing().await;
        let up = instance("b", ok()).await;
        let service = RemoteService::new("data-export", &urls(&[swallow, up]), client());
        let mut answers = Vec::new();
        for path in ["/fhir/Patient/$export", "/fhir/Patient/$export"] {
            let resp = service.send(&Method::GET, path, &HeaderMap::new(), Bytes::new()).await;
            answers.push(resp.map(|r| r.status().as_u16()).ok());
        }
        answers.sort();
        // The swallowing instance's attempt is a 502, not a second kick-off at the other one
        // (which answers 404 here: it has no such route).
        assert_eq!(answers, [None, Some(404)], "a kick-off the service may have received is not repeated");
        assert_eq!(seen.load(Ordering::Relaxed), 1);
        // A refused connection still moves it on: nothing was sent.
        let up = instance("c", ok()).await;
        let service = RemoteService::new("data-export", &urls(&[closed(), up]), client());
        for _ in 0..2 {
            let resp = service.send(&Method::GET, "/fhir/$export", &HeaderMap::new(), Bytes::new()).await.unwrap();
            assert_eq!(resp.status(), 404);
        }
    }

    #[tokio::test]
    async fn a_connection_refused_goes_to_the_next_instance_whatever_the_method() {
        let up = instance("b", ok()).await;
        let service = RemoteService::new("orders", &urls(&[closed(), up]), client());
        for _ in 0..4 {
            assert_eq!(who(&service, Method::POST).await.unwrap(), "b");
        }
        // The refusing instance was taken out at the first failure: it is now tried last.
        assert_eq!(service.order(), [1, 0]);
        // Nothing listening anywhere: 502.
        let service = RemoteService::new("orders", &urls(&[closed(), closed()]), client());
        assert!(matches!(who(&service, Method::GET).await, Err(GatewayError::Upstream)));
    }

    #[tokio::test]
    async fn a_request_lost_after_sending_is_repeated_only_when_idempotent() {
        let (swallow, seen) = swallowing().await;
        let up = instance("b", ok()).await;
        let service = RemoteService::new("orders", &urls(&[swallow, up]), client());
        // Round-robin starts at the swallowing instance every other request.
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(who(&service, Method::GET).await.unwrap());
        }
        assert_eq!(got, ["b", "b"], "a GET is repeated on the next instance");
        let before = seen.load(Ordering::Relaxed);
        assert_eq!(before, 1);
        let mut posts = Vec::new();
        for _ in 0..2 {
            posts.push(who(&service, Method::POST).await.ok());
        }
        posts.sort();
        assert_eq!(posts, [None, Some("b".to_owned())], "a POST the service may have received is not repeated");
        assert_eq!(seen.load(Ordering::Relaxed), before + 1);
    }

    #[tokio::test]
    async fn an_instance_not_ready_is_taken_out_until_it_answers_200() {
        let ready_a = ok();
        let a = instance("a", ready_a.clone()).await;
        let b = instance("b", ok()).await;
        let service = RemoteService::new("orders", &urls(&[a, b]), client());
        service.spawn_health_checks(Duration::from_millis(20));
        let answers = |n| {
            let service = service.clone();
            async move {
                let mut got = Vec::new();
                for _ in 0..n {
                    got.push(who(&service, Method::GET).await.unwrap());
                }
                got.sort();
                got.dedup();
                got
            }
        };
        assert_eq!(answers(4).await, ["a", "b"]);

        // Draining (503): out at the next check, while it would still answer.
        ready_a.store(503, Ordering::Relaxed);
        wait_until(|| !service.instances[0].healthy.load(Ordering::Relaxed)).await;
        assert_eq!(answers(6).await, ["b"]);

        // Ready again: back in.
        ready_a.store(200, Ordering::Relaxed);
        wait_until(|| service.instances[0].healthy.load(Ordering::Relaxed)).await;
        assert_eq!(answers(4).await, ["a", "b"]);
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 5 s");
    }
}
