//! A second stop signal: `ehr serve` stops at once, whatever step of the graceful stop it is in,
//! and exits 128 + the signal's number (143 after SIGTERM, 130 after SIGINT), the gateway after a
//! bounded flush of its audit queue.

use super::{Cluster, free_port};
use std::time::{Duration, Instant};

/// Long enough that only the second signal can end the stop within the test's bounds.
const DRAIN_SECS: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_with_128_plus_the_signal() {
    let cluster = Cluster::new().await;
    let shutdown = format!("[shutdown]\ndrain_secs = {DRAIN_SECS}\nworkers_timeout_secs = 60\n");
    let gw_port = free_port();
    let gw_url = format!("http://127.0.0.1:{gw_port}");
    let pr_port = free_port();
    let gateway_extra = format!("{shutdown}[gateway.upstreams]\npatient-record = \"http://127.0.0.1:{pr_port}\"\n");
    let mut gateway =
        cluster.start("gateway", "gateway", gw_port, &cluster.config("gateway", gw_port, "", &gateway_extra)).await;
    let mut service = cluster
        .start(
            "patient-record",
            "patient-record",
            pr_port,
            &cluster.config("patient-record", pr_port, &gw_url, &shutdown),
        )
        .await;

    let within = Duration::from_secs(20);
    for (node, signal, code) in [(&mut service, "TERM", 143), (&mut gateway, "INT", 130)] {
        node.signal(signal);
        node.wait_log("shutting down: /readyz answers 503 (draining), still serving", within).await;
        // Draining, and still serving.
        let ready = reqwest::get(format!("{}/readyz", node.url)).await.unwrap();
        assert_eq!(ready.status(), 503, "{}", node.name);
        let started = Instant::now();
        node.signal(signal);
        let status = node.wait_exit(within).await;
        assert_eq!(status.code(), Some(code), "{} after a second SIG{signal}; log:\n{}", node.name, node.log_tail());
        assert!(started.elapsed() < Duration::from_secs(10), "{}: {:?}", node.name, started.elapsed());
        let log = node.log();
        assert!(log.contains("second signal: stopping at once"), "{}", node.log_tail());
        assert!(!log.contains("shutting down: listener closed"), "the drain was not waited out: {}", node.log_tail());
    }
    // The gateway wrote its audit queue (bounded) before exiting.
    assert!(gateway.log().contains("audit trail flushed"), "{}", gateway.log_tail());
}
