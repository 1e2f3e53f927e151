//! How an envelope reaches the national service: the terminal file drop (資格確認端末経由方式)
//! or the Web API (Web API 通信方式), behind one trait. Failures are split in two: retryable
//! (unreachable, timeout, HTTP 5xx / 408 / 429, no result file in time) — the adapter retries
//! with back-off, resending the same request id — and permanent (the answer cannot be read, a
//! 4xx): retrying would not help.

use crate::crypto::{self, Password};
use crate::envelope::{Request, Response};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request got no answer. `sent` says whether the request may have reached the service
/// all the same (a timeout after the request left, a dropped request file): a registration that
/// may have arrived must never be withdrawn locally, only cancelled at the service.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// Worth another attempt with the same request id.
    #[error("{why}")]
    Retryable { why: String, sent: bool },
    /// Another attempt would not help.
    #[error("{why}")]
    Permanent { why: String, sent: bool },
}

impl TransportError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// Whether the request may have reached the service.
    pub fn may_have_arrived(&self) -> bool {
        match self {
            Self::Retryable { sent, .. } | Self::Permanent { sent, .. } => *sent,
        }
    }

    fn retry(why: &str, sent: bool) -> Self {
        Self::Retryable { why: why.to_owned(), sent }
    }

    fn permanent(why: &str, sent: bool) -> Self {
        Self::Permanent { why: why.to_owned(), sent }
    }
}

/// The largest answer read from the Web API (a retrieve answer carries every Bundle the
/// service holds for a patient): beyond it the answer is refused, not buffered.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Whether an answer is this request's: it names the request id. An envelope the service could
/// not read at all is answered without one (HTTP 4xx, rejected).
fn answers(request: &Request, response: &Response, http_status: u16) -> bool {
    response.request_id == request.request_id
        || (response.request_id.is_empty()
            && (400..500).contains(&http_status)
            && response.status == crate::envelope::Status::Rejected)
}

/// Sends a request and waits for its answer.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, request: &Request) -> Result<Response, TransportError>;
    /// `web-api` or `file`.
    fn name(&self) -> &'static str;
}

/// The Web API method: `POST <base>/requests` with the envelope as JSON.
pub struct WebApi {
    client: reqwest::Client,
    url: String,
}

/// The path under the base URL where requests are posted.
pub const REQUESTS_PATH: &str = "/clins/v1/requests";

impl WebApi {
    pub fn new(base_url: &str, connect_timeout: Duration, timeout: Duration) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .build()
            .map_err(|_| TransportError::permanent("the HTTP client could not be built", false))?;
        Ok(Self { client, url: format!("{}{REQUESTS_PATH}", base_url.trim_end_matches('/')) })
    }
}

#[async_trait::async_trait]
impl Transport for WebApi {
    async fn send(&self, request: &Request) -> Result<Response, TransportError> {
        // The trace context of the request or worker sending it (ids only).
        let mut headers = reqwest::header::HeaderMap::new();
        ehr_telemetry::trace::inject(&mut headers);
        let mut resp = self.client.post(&self.url).headers(headers).json(request).send().await.map_err(|e| {
            if e.is_connect() {
                // No connection: the request did not leave.
                TransportError::retry("the national service is unreachable", false)
            } else if e.is_timeout() {
                TransportError::retry("the national service did not answer in time", true)
            } else {
                TransportError::retry("the connection to the national service failed", true)
            }
        })?;
        let status = resp.status().as_u16();
        // 503 / 429 / 408: the service did not take the request (our reading: it refuses on
        // arrival when down or throttling). Any other 5xx may have been processed.
        if matches!(status, 503 | 429 | 408) {
            return Err(TransportError::Retryable {
                why: format!("the national service answered HTTP {status}"),
                sent: false,
            });
        }
        if status >= 500 {
            return Err(TransportError::Retryable {
                why: format!("the national service answered HTTP {status}"),
                sent: true,
            });
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(TransportError::permanent("the national service's answer is too large", true));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(TransportError::permanent("the national service's answer is too large", true));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Err(TransportError::retry("the answer was cut off", true)),
            }
        }
        // A 4xx with a readable envelope answer (a malformed envelope) is an answer like any other.
        match serde_json::from_slice::<Response>(&body) {
            Ok(r) if answers(request, &r, status) => Ok(r),
            Ok(_) => Err(TransportError::permanent("the national service answered another request", true)),
            Err(_) => Err(TransportError::Permanent {
                why: format!("the national service answered HTTP {status} without a readable result"),
                sent: true,
            }),
        }
    }

    fn name(&self) -> &'static str {
        "web-api"
    }
}

/// The terminal file-drop method: the request encrypted as `<request_dir>/<name>.json.enc`
/// (written to a temporary name and renamed, so the terminal never reads half a file), the
/// answer awaited as `<result_dir>/<name>.json.enc`; `<name>` is the request id.
pub struct FileDrop {
    pub request_dir: PathBuf,
    pub result_dir: PathBuf,
    pub password: Password,
    /// How long to wait for the result file.
    pub timeout: Duration,
    pub poll: Duration,
}

/// The file name of a request id (ids are `[A-Za-z0-9_-]{1,64}`, checked by the envelope).
pub fn file_name(request_id: &str) -> Option<String> {
    crate::envelope::is_request_id(request_id).then(|| format!("{request_id}.json.enc"))
}

/// Writes `bytes` to `dir/name` atomically and durably: a temporary file in the same directory
/// (a hidden name the terminal does not pick up), flushed to disk, renamed, and the directory
/// flushed so the rename survives a crash.
pub async fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, name, bytes) = (dir.to_path_buf(), name.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(&name))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // Directories cannot be opened for syncing everywhere (Windows): best effort there.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(|_| std::io::Error::other("the write task failed"))?
}

#[async_trait::async_trait]
impl Transport for FileDrop {
    async fn send(&self, request: &Request) -> Result<Response, TransportError> {
        let name = file_name(&request.request_id)
            .ok_or_else(|| TransportError::permanent("the request id cannot name a file", false))?;
        let result = self.result_dir.join(&name);
        // An answer to an earlier attempt (whose wait ran out) is this request's answer: the
        // request is not dropped again.
        if !tokio::fs::try_exists(&result).await.unwrap_or(false) {
            let pending = self.request_dir.join(&name);
            if !tokio::fs::try_exists(&pending).await.unwrap_or(false) {
                let plain = serde_json::to_vec(request)
                    .map_err(|_| TransportError::permanent("the request could not be serialised", false))?;
                let sealed = crypto::encrypt(&self.password, &plain)
                    .map_err(|e| TransportError::Permanent { why: e.to_string(), sent: false })?;
                write_atomic(&self.request_dir, &name, &sealed)
                    .await
                    .map_err(|_| TransportError::retry("the request folder is not writable", false))?;
            }
            // From here on the terminal may have taken the request.
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                if tokio::fs::try_exists(&result).await.unwrap_or(false) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(TransportError::retry("no result file from the terminal in time", true));
                }
                tokio::time::sleep(self.poll).await;
            }
        }
        let sealed = tokio::fs::read(&result)
            .await
            .map_err(|_| TransportError::retry("the result file is not readable", true))?;
        let plain = crypto::decrypt(&self.password, &sealed)
            .map_err(|e| TransportError::Permanent { why: e.to_string(), sent: true })?;
        let response: Response = serde_json::from_slice(&plain)
            .map_err(|_| TransportError::permanent("the result file is not a result", true))?;
        if response.request_id != request.request_id {
            // Not this request's answer (a stale or misplaced file): set aside, never taken as ours.
            let _ = tokio::fs::rename(&result, self.result_dir.join(format!("{name}.mismatch"))).await;
            return Err(TransportError::permanent("the result file answers another request", true));
        }
        // Read: the answer is the caller's now; the file is not needed for a later attempt.
        let _ = tokio::fs::remove_file(&result).await;
        Ok(response)
    }

    fn name(&self) -> &'static str {
        "file"
    }
}
