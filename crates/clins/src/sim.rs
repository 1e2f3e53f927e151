//! A simulator of the EHR information-sharing service, for tests and demos.
//!
//! - Web API: `POST /clins/v1/requests` (envelope in, result out; see [`crate::envelope`]).
//! - File drop: every `<file_root>/<institution>/req/<name>.json.enc` is decrypted, processed
//!   and answered as `<file_root>/<institution>/res/<name>.json.enc` (the request file is then
//!   removed); the folder's institution must be the envelope's (1003 otherwise).
//! - Every Bundle is checked with `FullValidator` (errors and fatals reject, each with its rule
//!   as [`rules::reported_rule`] names it, and its location); the envelope must agree with the
//!   Bundle ([`rules::claimed`]).
//! - A registry per institution keyed by bundle identifier: register (2003 if already held),
//!   cancel, change (= cancel + register in one request, same bundle identifier), retrieve by
//!   the patient's insurance keys.
//! - A repeated request id with the same request gets the first answer again: nothing is
//!   registered twice; the same id with another request is refused (1002).
//! - Knobs for tests: down (connections refused, or HTTP 503) and a delay before answering;
//!   [`Simulator::received`] shows what arrived.

use crate::common::instant;
use crate::crypto::{self, Password};
use crate::envelope::{self, Finding, Held, MemberKeys, Operation, Request, Response, Status, codes};
use crate::rules::{self, Claimed};
use crate::transport::write_atomic;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use ehr_core::{Clock, Severity, SystemClock};
use ehr_validation::FullValidator;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How `ehr sim clins` runs the simulator.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Where the Web API listens (`127.0.0.1:9301`).
    pub listen: String,
    /// The terminal file-drop root (`<root>/<institution>/req|res`), when the file method is served.
    pub file_root: Option<PathBuf>,
    /// The file-drop encryption password.
    pub password: Option<String>,
}

/// Runs the simulator until Ctrl-C.
pub async fn run(options: SimOptions) -> Result<(), String> {
    let (addr, handle) = Simulator::start(&options).await?;
    tracing::info!(%addr, files = options.file_root.is_some(), "CLINS simulator listening");
    tokio::signal::ctrl_c().await.map_err(|_| "cannot wait for Ctrl-C".to_owned())?;
    drop(handle);
    Ok(())
}

/// How the simulator is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Down {
    #[default]
    Up,
    /// The listener is closed: connections are refused (and the file drop is not served).
    Refuse,
    /// HTTP 503 to every request (and the file drop is not served).
    Unavailable,
}

/// What one request was, as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub request_id: String,
    pub operation: Operation,
    pub institution: String,
    pub information_type: String,
    pub bundle_identifier: Option<String>,
    pub result_code: String,
    /// The request id was seen before (answered from the first answer).
    pub repeated: bool,
    /// `web-api` or `file`.
    pub via: &'static str,
}

#[derive(Debug, Clone)]
struct Registration {
    information_type: String,
    member: Option<MemberKeys>,
    resource_identifiers: Vec<String>,
    document_id: Option<String>,
    cancelled: bool,
    registered_at: String,
    version: u32,
    bundle: Value,
}

#[derive(Default)]
struct SimState {
    /// institution → bundle identifier → registration.
    registry: HashMap<String, BTreeMap<String, Registration>>,
    /// (institution, request id) → the first request and its answer.
    answers: HashMap<(String, String), (Request, Response)>,
    received: Vec<Received>,
}

struct Inner {
    validator: FullValidator,
    clock: SystemClock,
    state: Mutex<SimState>,
    down: Mutex<Down>,
    delay: Mutex<Duration>,
    password: Option<Password>,
    file_root: Option<PathBuf>,
    listen: Mutex<Option<SocketAddr>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The simulator: cheap to clone; stops when its [`SimHandle`] is dropped.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// Keeps the simulator's tasks alive; dropping it stops them.
pub struct SimHandle {
    pub simulator: Simulator,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if let Ok(mut s) = self.simulator.inner.server.lock()
            && let Some(task) = s.take()
        {
            task.abort();
        }
    }
}

impl std::ops::Deref for SimHandle {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.simulator
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Simulator {
    /// A simulator with no listener (for [`Simulator::process`] in unit tests).
    pub fn new(password: Option<&str>, file_root: Option<PathBuf>) -> Result<Self, String> {
        let validator = FullValidator::builtin().map_err(|_| "the terminology could not be loaded".to_owned())?;
        let password = password.map(Password::new).transpose().map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                validator,
                clock: SystemClock,
                state: Mutex::default(),
                down: Mutex::default(),
                delay: Mutex::default(),
                password,
                file_root,
                listen: Mutex::default(),
                server: Mutex::default(),
            }),
        })
    }

    /// Starts the Web API on `options.listen` (port 0 for tests) and, with a file root and a
    /// password, the file-drop watcher. Returns the bound address.
    pub async fn start(options: &SimOptions) -> Result<(SocketAddr, SimHandle), String> {
        if options.file_root.is_some() && options.password.is_none() {
            return Err("the file drop needs a password".into());
        }
        let sim = Self::new(options.password.as_deref(), options.file_root.clone())?;
        let listen = if options.listen.is_empty() { "127.0.0.1:0" } else { options.listen.as_str() };
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        *lock(&sim.inner.listen) = Some(addr);
        sim.serve(listener);
        let watcher = sim.inner.file_root.is_some().then(|| {
            let me = sim.clone();
            tokio::spawn(async move {
                loop {
                    me.poll_files().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        Ok((addr, SimHandle { simulator: sim, watcher }))
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new().route(crate::transport::REQUESTS_PATH, post(web_request)).with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        if let Some(old) = lock(&self.inner.server).replace(task) {
            old.abort();
        }
    }

    /// Takes the service down (`Refuse`: the listener closes; `Unavailable`: 503) or brings it
    /// back up (the listener reopens on the same address).
    pub async fn set_down(&self, down: Down) -> Result<(), String> {
        let before = std::mem::replace(&mut *lock(&self.inner.down), down);
        if down == Down::Refuse
            && before != Down::Refuse
            && let Some(task) = lock(&self.inner.server).take()
        {
            task.abort();
        }
        if down != Down::Refuse && before == Down::Refuse {
            let addr = (*lock(&self.inner.listen)).ok_or("the simulator has no listener")?;
            // The port was just released: a few tries while the kernel lets go of it.
            let mut last = String::new();
            for _ in 0..50 {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        self.serve(l);
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err(format!("cannot listen again on {addr}: {last}"));
        }
        Ok(())
    }

    /// Waits this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.inner.delay) = delay;
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner.state).received.clone()
    }

    /// How many registrations (not repeated requests) of `bundle_identifier` were accepted.
    pub fn registrations_of(&self, bundle_identifier: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| {
                !r.repeated
                    && r.operation == Operation::Register
                    && r.result_code == codes::ACCEPTED
                    && r.bundle_identifier.as_deref() == Some(bundle_identifier)
            })
            .count()
    }

    /// The Bundle held under `bundle_identifier` and whether it is cancelled.
    pub fn held(&self, institution: &str, bundle_identifier: &str) -> Option<(Value, bool, u32)> {
        let s = lock(&self.inner.state);
        s.registry.get(institution)?.get(bundle_identifier).map(|r| (r.bundle.clone(), r.cancelled, r.version))
    }

    fn now(&self) -> String {
        instant(self.inner.clock.now())
    }

    fn answer(&self, request_id: &str, status: Status, code: &str, message: &str, errors: Vec<Finding>) -> Response {
        Response {
            request_id: request_id.to_owned(),
            status,
            result_code: code.to_owned(),
            message: message.to_owned(),
            errors,
            held: None,
            processed_at: self.now(),
        }
    }

    /// Processes one request as the service would (`folder`: the institution whose file-drop
    /// folder it came from).
    pub fn process(&self, request: &Request, folder: Option<&str>, via: &'static str) -> Response {
        let key = (request.institution.clone(), request.request_id.clone());
        let mut state = lock(&self.inner.state);
        if let Some((first, answer)) = state.answers.get(&key).cloned() {
            // A retry carries exactly the first request; a request id reused for something else
            // is refused (and not remembered), never answered with another request's answer.
            let answer = if first == *request {
                answer
            } else {
                self.reject(request, codes::INVALID_ENVELOPE, "this request id was used for another request")
            };
            state.received.push(received(request, &answer, true, via));
            return answer;
        }
        let answer = self.decide(&mut state, request, folder);
        if envelope::is_request_id(&request.request_id) {
            state.answers.insert(key, (request.clone(), answer.clone()));
        }
        state.received.push(received(request, &answer, false, via));
        answer
    }

    fn reject(&self, request: &Request, code: &str, message: &str) -> Response {
        self.answer(&request.request_id, Status::Rejected, code, message, Vec::new())
    }

    fn decide(&self, state: &mut SimState, request: &Request, folder: Option<&str>) -> Response {
        if request.version != envelope::VERSION || !envelope::is_request_id(&request.request_id) {
            return self.reject(
                request,
                codes::INVALID_ENVELOPE,
                "unsupported envelope version or malformed request id",
            );
        }
        if crate::common::Institution::new(&request.institution).is_err() {
            return self.reject(
                request,
                codes::INVALID_ENVELOPE,
                "the institution must be a 10-digit institution number",
            );
        }
        if folder.is_some_and(|f| f != request.institution) {
            return self.reject(
                request,
                codes::WRONG_INSTITUTION,
                "the request came through another institution's folder",
            );
        }
        match request.operation {
            Operation::Register | Operation::Change => self.register(state, request),
            Operation::Cancel => self.cancel(state, request),
            Operation::Retrieve => self.retrieve(state, request),
        }
    }

    fn findings(&self, bundle: &Value) -> Vec<Finding> {
        self.inner
            .validator
            .validate(bundle, None)
            .into_iter()
            .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
            .map(|i| Finding {
                rule: rules::reported_rule(&i),
                location: i.expression.first().cloned(),
                message: i.diagnostics,
                severity: "error".into(),
            })
            .collect()
    }

    fn register(&self, state: &mut SimState, request: &Request) -> Response {
        let Some(bundle) = &request.bundle else {
            return self.reject(request, codes::INVALID_ENVELOPE, "register and change carry a Bundle");
        };
        let bundle_id = bundle["identifier"]["value"].as_str().map(str::to_owned);
        if request.bundle_identifier.is_none() || request.bundle_identifier != bundle_id {
            return self.reject(
                request,
                codes::INVALID_ENVELOPE,
                "bundleIdentifier must equal Bundle.identifier.value",
            );
        }
        let claimed_type = match rules::claimed(bundle) {
            Claimed::Document(kind) => Some(kind.as_str()),
            Claimed::Item(resource_type) => crate::items::ItemKind::parse(&request.information_type)
                .filter(|k| k.resource_type() == resource_type)
                .map(|k| k.as_str()),
            Claimed::Unknown => None,
        };
        let findings = self.findings(bundle);
        if !findings.is_empty() {
            let n = findings.len();
            return self.answer(
                &request.request_id,
                Status::Rejected,
                codes::INVALID_BUNDLE,
                &format!("the Bundle breaks {n} rule(s)"),
                findings,
            );
        }
        if claimed_type != Some(request.information_type.as_str()) {
            return self.reject(request, codes::INVALID_ENVELOPE, "informationType does not match the Bundle");
        }
        let Some(bundle_id) = bundle_id else {
            return self.reject(request, codes::INVALID_ENVELOPE, "the Bundle has no identifier");
        };
        if !bundle_id.starts_with(&format!("{}^", request.institution)) {
            return self.reject(
                request,
                codes::WRONG_INSTITUTION,
                "the bundle identifier belongs to another institution",
            );
        }
        let registry = state.registry.entry(request.institution.clone()).or_default();
        let existing = registry.get(&bundle_id);
        let version = match (request.operation, existing) {
            (Operation::Register, Some(r)) if !r.cancelled => {
                return self.reject(
                    request,
                    codes::ALREADY_REGISTERED,
                    "this bundle identifier is already registered; send a change",
                );
            }
            (Operation::Register, _) => 1,
            (_, None) => return self.reject(request, codes::NOT_FOUND, "no registration under this bundle identifier"),
            (_, Some(r)) if r.cancelled => {
                return self.reject(
                    request,
                    codes::ALREADY_CANCELLED,
                    "the registration under this bundle identifier was cancelled",
                );
            }
            (_, Some(r)) => r.version + 1,
        };
        let resource_identifiers = resource_identifiers(bundle);
        let document_id = match rules::claimed(bundle) {
            Claimed::Document(_) => bundle["entry"][0]["resource"]["identifier"]["value"].as_str().map(str::to_owned),
            _ => None,
        };
        registry.insert(
            bundle_id,
            Registration {
                information_type: request.information_type.clone(),
                member: MemberKeys::of_bundle(bundle),
                resource_identifiers,
                document_id,
                cancelled: false,
                registered_at: self.now(),
                version,
                bundle: bundle.clone(),
            },
        );
        let message = if request.operation == Operation::Register { "registered" } else { "changed" };
        self.answer(&request.request_id, Status::Accepted, codes::ACCEPTED, message, Vec::new())
    }

    fn cancel(&self, state: &mut SimState, request: &Request) -> Response {
        let registry = state.registry.entry(request.institution.clone()).or_default();
        let found = match (&request.bundle_identifier, &request.cancel_keys) {
            (Some(id), _) => registry.get_mut(id),
            (None, Some(keys)) => registry.values_mut().find(|r| {
                r.member.as_ref() == Some(&keys.member)
                    && (keys.document_id.as_ref().is_some_and(|d| r.document_id.as_ref() == Some(d))
                        || keys.resource_identifiers.iter().any(|k| r.resource_identifiers.contains(k)))
            }),
            (None, None) => {
                return self.reject(
                    request,
                    codes::INVALID_ENVELOPE,
                    "cancel needs a bundle identifier or cancel keys",
                );
            }
        };
        match found {
            None => self.reject(request, codes::NOT_FOUND, "no registration matches"),
            Some(r) if r.cancelled => self.reject(request, codes::ALREADY_CANCELLED, "already cancelled"),
            Some(r) => {
                if let Some(keys) = &request.cancel_keys
                    && r.member.as_ref() != Some(&keys.member)
                {
                    return self.reject(request, codes::NOT_FOUND, "no registration of this patient matches");
                }
                r.cancelled = true;
                self.answer(&request.request_id, Status::Accepted, codes::ACCEPTED, "cancelled", Vec::new())
            }
        }
    }

    fn retrieve(&self, state: &mut SimState, request: &Request) -> Response {
        let Some(keys) = &request.patient_keys else {
            return self.reject(request, codes::INVALID_ENVELOPE, "retrieve needs the patient's keys");
        };
        let mut held = Vec::new();
        for (institution, registry) in &state.registry {
            for (id, r) in registry {
                if !r.cancelled && r.member.as_ref() == Some(keys) {
                    held.push(Held {
                        institution: institution.clone(),
                        information_type: r.information_type.clone(),
                        bundle_identifier: id.clone(),
                        registered_at: r.registered_at.clone(),
                        version: r.version,
                        bundle: r.bundle.clone(),
                    });
                }
            }
        }
        let mut answer = self.answer(&request.request_id, Status::Accepted, codes::ACCEPTED, "retrieved", Vec::new());
        answer.held = Some(held);
        answer
    }

    async fn pause(&self) {
        let delay = *lock(&self.inner.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// One pass over the file-drop request folders.
    pub async fn poll_files(&self) {
        let (Some(root), Some(password)) = (&self.inner.file_root, &self.inner.password) else { return };
        if *lock(&self.inner.down) != Down::Up {
            return;
        }
        let Ok(mut institutions) = tokio::fs::read_dir(root).await else { return };
        while let Ok(Some(dir)) = institutions.next_entry().await {
            let institution = dir.file_name().to_string_lossy().into_owned();
            let Ok(mut files) = tokio::fs::read_dir(dir.path().join("req")).await else { continue };
            while let Ok(Some(file)) = files.next_entry().await {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !name.ends_with(".json.enc") {
                    continue;
                }
                let Ok(sealed) = tokio::fs::read(file.path()).await else { continue };
                self.pause().await;
                let response = match crypto::decrypt(password, &sealed)
                    .ok()
                    .and_then(|plain| serde_json::from_slice::<Request>(&plain).ok())
                {
                    Some(request) => self.process(&request, Some(&institution), "file"),
                    None => {
                        let id = name.trim_end_matches(".json.enc");
                        self.answer(
                            id,
                            Status::Rejected,
                            codes::INVALID_ENVELOPE,
                            "the file could not be decrypted or read",
                            Vec::new(),
                        )
                    }
                };
                let Ok(plain) = serde_json::to_vec(&response) else { continue };
                let Ok(sealed) = crypto::encrypt(password, &plain) else { continue };
                if write_atomic(&dir.path().join("res"), &name, &sealed).await.is_ok() {
                    let _ = tokio::fs::remove_file(file.path()).await;
                }
            }
        }
    }
}

fn received(request: &Request, answer: &Response, repeated: bool, via: &'static str) -> Received {
    Received {
        request_id: request.request_id.clone(),
        operation: request.operation,
        institution: request.institution.clone(),
        information_type: request.information_type.clone(),
        bundle_identifier: request.bundle_identifier.clone(),
        result_code: answer.result_code.clone(),
        repeated,
        via,
    }
}

fn resource_identifiers(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["resource"]["identifier"].as_array().into_iter().flatten())
        .filter(|i| i["system"] == crate::common::RESOURCE_INSTANCE)
        .filter_map(|i| i["value"].as_str().map(str::to_owned))
        .collect()
}

async fn web_request(State(sim): State<Simulator>, body: axum::body::Bytes) -> HttpResponse {
    sim.pause().await;
    if *lock(&sim.inner.down) != Down::Up {
        let answer = sim.answer("", Status::Error, codes::UNAVAILABLE, "the service is unavailable", Vec::new());
        return (StatusCode::SERVICE_UNAVAILABLE, Json(answer)).into_response();
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            let answer =
                sim.answer("", Status::Rejected, codes::INVALID_ENVELOPE, "the envelope is not readable", Vec::new());
            return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
        }
    };
    // Validation is CPU work: off the async workers.
    let worker = sim.clone();
    match tokio::task::spawn_blocking(move || worker.process(&request, None, "web-api")).await {
        Ok(answer) => Json(answer).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
