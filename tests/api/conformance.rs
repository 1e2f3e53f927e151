//! The conformance kit (`tests/conformance`, `ehr conformance`) against our own server: every
//! check passes; and against deliberately broken servers — a proxy in front of the real app
//! that breaks one property — exactly the checks of that property fail.

use ehr_conformance::{Credentials, KitClock, Options, Principal, report::Report};
use ehr_testkit::{PASSWORD, TestApp};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The kit's TOTP clock is the app's: waiting for the next step moves the app's clock forward
/// instead of sleeping.
struct AppClock(Arc<TestApp>);

impl KitClock for AppClock {
    fn now_unix(&self) -> i64 {
        self.0.now()
    }

    fn wait_until(&self, unix: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let ahead = unix - self.0.now();
        if ahead > 0 {
            self.0.advance(ahead);
        }
        Box::pin(async {})
    }
}

/// The app with a second tenant; returns the app, the second tenant and its client id.
async fn two_tenants() -> (Arc<TestApp>, String, String) {
    let app = TestApp::spawn().await;
    app.bootstrap().await;
    let second = format!("u-{}", &app.tenant[2..]);
    let tenant = ehr_core::TenantId::parse(&second).unwrap();
    let done = ehr_gateway::ops::bootstrap_tenant(
        &app.gateway.store,
        &app.gateway.settings,
        app.now(),
        &tenant,
        "Second Test Hospital",
        None,
    )
    .await
    .unwrap();
    (Arc::new(app), second, done.client_id)
}

fn failed_report(report: &Report) -> String {
    report.to_text()
}

#[tokio::test]
async fn our_server_passes_every_check_with_logins_and_mfa() {
    let (app, second, second_client) = two_tenants().await;
    let client = format!("{}-cli", app.tenant);
    // The main user is enrolled beforehand (the kit gets the secret, as a vendor's would); the
    // auditor and the second tenant's user are enrolled by the kit's own first login.
    let mut clinician = app.account("conf-clinician", &["physician", "clerk"]).await;
    app.login(&client, &mut clinician, "openid user/*.cruds").await;
    app.advance(30);
    let auditor = app.account("conf-auditor", &["tenant-admin"]).await;
    let other = app.account_in(&second, "conf-other", &["physician", "clerk"]).await;

    let mut opts = Options::new(&app.address);
    opts.user = Some(Credentials {
        client: client.clone(),
        username: clinician.username.clone(),
        password: PASSWORD.into(),
        totp_secret: clinician.secret.clone(),
    });
    // The FHIR checks run with a token that may also delete (no job type may).
    opts.token = Some(app.token(ehr_testkit::ALL_SCOPES));
    opts.auditor = Some(Principal::Login(Credentials {
        client,
        username: auditor.username.clone(),
        password: PASSWORD.into(),
        totp_secret: None,
    }));
    opts.second_tenant = Some(Principal::Login(Credentials {
        client: second_client,
        username: other.username.clone(),
        password: PASSWORD.into(),
        totp_secret: None,
    }));
    opts.clock = Arc::new(AppClock(app.clone()));
    let secrets = std::env::temp_dir().join(format!("conformance-secrets-{}", app.tenant));
    opts.enrolled_secrets_file = Some(secrets.clone());

    let report = ehr_conformance::run(opts).await.unwrap();
    assert!(report.failed().is_empty() && report.skipped().is_empty(), "{}", failed_report(&report));
    assert_eq!(report.passed().len(), ehr_conformance::CHECKS.len());
    // The kit enrolled the two accounts without a secret, says so and kept their secrets.
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    let kept = std::fs::read_to_string(&secrets).unwrap();
    let _ = std::fs::remove_file(&secrets);
    let users: Vec<&str> = kept.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(users, ["conf-auditor", "conf-other"]);
    let junit = report.to_junit();
    assert!(junit.contains(&format!("tests=\"{}\" failures=\"0\" skipped=\"0\"", ehr_conformance::CHECKS.len())));
    assert!(junit.contains("docs/conformance.md#req-tenancy"));
}

/// What the broken proxy does.
#[derive(Clone)]
enum Breakage {
    /// Requests with the second tenant's token are sent with the first tenant's: tenant
    /// filtering is off for the second tenant.
    TenantLeak { from: String, to: String },
    /// Error answers under `/fhir` lose their OperationOutcome: plain text instead.
    PlainTextErrors,
    /// Searches of the audit trail find nothing: reads are not audited, as far as anyone can see.
    HiddenAudit,
    /// Patients are answered without their identifiers, which JP_Patient requires.
    PatientsWithoutIdentifier,
}

/// Removes `identifier` from every Patient in a JSON document (Bundles included).
fn strip_identifiers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("resourceType").and_then(|t| t.as_str()) == Some("Patient") {
                map.remove("identifier");
            }
            map.values_mut().for_each(strip_identifiers);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_identifiers),
        _ => {}
    }
}

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    breakage: Breakage,
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<Arc<Proxy>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    if let Breakage::TenantLeak { from, to } = &proxy.breakage
        && headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {from}").as_str())
    {
        headers.insert("authorization", format!("Bearer {to}").parse().unwrap());
    }
    let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
    // The Host header is kept: the server builds its absolute URLs (links, Location,
    // Content-Location, the SMART endpoints) from it, so they name the proxy.
    let resp = proxy
        .client
        .request(method, format!("{}{path}", proxy.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let mut out_headers = resp.headers().clone();
    let mut bytes = resp.bytes().await.unwrap().to_vec();
    if matches!(proxy.breakage, Breakage::PlainTextErrors) && path.starts_with("/fhir") && status.as_u16() >= 400 {
        bytes = format!("error {}\n", status.as_u16()).into_bytes();
        out_headers.insert("content-type", "text/plain".parse().unwrap());
    }
    if matches!(proxy.breakage, Breakage::HiddenAudit) && path.starts_with("/fhir/AuditEvent") && status.as_u16() == 200
    {
        bytes = serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": 0}).to_string().into_bytes();
    }
    let json = out_headers.get("content-type").and_then(|c| c.to_str().ok()).is_some_and(|c| c.contains("json"));
    if matches!(proxy.breakage, Breakage::PatientsWithoutIdentifier)
        && json
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        strip_identifiers(&mut v);
        bytes = v.to_string().into_bytes();
    }
    for h in ["content-length", "transfer-encoding", "connection"] {
        out_headers.remove(h);
    }
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

/// Starts the broken proxy in front of the app; returns its base URL.
async fn broken_proxy(app: &TestApp, breakage: Breakage) -> String {
    let proxy = Arc::new(Proxy {
        upstream: app.address.clone(),
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        breakage,
    });
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    address
}

/// Options with tokens only (the login checks are skipped: they are not what breaks here).
fn token_options(app: &Arc<TestApp>, base: &str, main: &str, second: &str) -> Options {
    let mut opts = Options::new(base);
    opts.token = Some(main.to_owned());
    opts.auditor = Some(Principal::Token(app.token("user/AuditEvent.rs")));
    opts.second_tenant = Some(Principal::Token(second.to_owned()));
    opts.clock = Arc::new(AppClock(app.clone()));
    opts
}

const LOGIN_CHECKS: [&str; 4] = ["CONF-AUTH-002", "CONF-AUTH-003", "CONF-AUTH-004", "CONF-AUTH-005"];

#[tokio::test]
async fn a_server_leaking_another_tenants_data_fails_exactly_the_tenant_isolation_checks() {
    let (app, second, _) = two_tenants().await;
    let main = app.token(ehr_testkit::ALL_SCOPES);
    let other = app.token_for(&second, ehr_testkit::ALL_SCOPES);

    // Straight at the server: with tokens only, everything but the login checks passes.
    let report = ehr_conformance::run(token_options(&app, &app.address, &main, &other)).await.unwrap();
    assert!(report.failed().is_empty(), "{}", failed_report(&report));
    assert_eq!(report.skipped(), LOGIN_CHECKS, "{}", failed_report(&report));

    let base = broken_proxy(&app, Breakage::TenantLeak { from: other.clone(), to: main.clone() }).await;
    let report = ehr_conformance::run(token_options(&app, &base, &main, &other)).await.unwrap();
    assert_eq!(
        report.failed(),
        ["CONF-TEN-001", "CONF-TEN-002", "CONF-TEN-003", "CONF-TEN-004", "CONF-TEN-005"],
        "{}",
        failed_report(&report)
    );
    assert_eq!(report.skipped(), LOGIN_CHECKS, "{}", failed_report(&report));
}

#[tokio::test]
async fn a_server_answering_errors_in_plain_text_fails_exactly_the_error_shape_checks() {
    let (app, second, _) = two_tenants().await;
    let main = app.token(ehr_testkit::ALL_SCOPES);
    let other = app.token_for(&second, ehr_testkit::ALL_SCOPES);
    let base = broken_proxy(&app, Breakage::PlainTextErrors).await;
    let report = ehr_conformance::run(token_options(&app, &base, &main, &other)).await.unwrap();
    assert_eq!(
        report.failed(),
        ["CONF-ERR-001", "CONF-ERR-002", "CONF-ERR-003", "CONF-ERR-004", "CONF-ERR-005", "CONF-ERR-006"],
        "{}",
        failed_report(&report)
    );
    assert_eq!(report.skipped(), LOGIN_CHECKS, "{}", failed_report(&report));
}

#[tokio::test]
async fn a_server_hiding_its_audit_trail_or_answering_invalid_jp_core_fails_exactly_those_checks() {
    let (app, second, _) = two_tenants().await;
    let main = app.token(ehr_testkit::ALL_SCOPES);
    let other = app.token_for(&second, ehr_testkit::ALL_SCOPES);

    let base = broken_proxy(&app, Breakage::HiddenAudit).await;
    let report = ehr_conformance::run(token_options(&app, &base, &main, &other)).await.unwrap();
    assert_eq!(report.failed(), ["CONF-AUDIT-001"], "{}", failed_report(&report));

    let base = broken_proxy(&app, Breakage::PatientsWithoutIdentifier).await;
    let report = ehr_conformance::run(token_options(&app, &base, &main, &other)).await.unwrap();
    assert_eq!(report.failed(), ["CONF-PROF-001"], "{}", failed_report(&report));
    assert_eq!(report.skipped(), LOGIN_CHECKS, "{}", failed_report(&report));
}
