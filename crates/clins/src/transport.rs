//! How an envelope reaches the national service: the terminal file drop (資格確認端末経由方式)
//! or the Web API (Web API 通信方式), behind one trait. Failures are split in two: retryable
//! (unreachable, timeout, HTTP 5xx / 408 / 429, no result file in time) — the adapter retries
//! with back-off, resending the same request id — and permanent (the answer cannot be read, a
//! 4xx): retrying would not help.

use crate::crypto::{self, Password};
use crate::envelope::{Request, Response};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl TransportError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
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
            .map_err(|_| TransportError::Permanent("the HTTP client could not be built".into()))?;
        Ok(Self { client, url: format!("{}{REQUESTS_PATH}", base_url.trim_end_matches('/')) })
    }
}

#[async_trait::async_trait]
impl Transport for WebApi {
    async fn send(&self, request: &Request) -> Result<Response, TransportError> {
        let resp = self.client.post(&self.url).json(request).send().await.map_err(|e| {
            if e.is_timeout() {
                TransportError::Retryable("the national service did not answer in time".into())
            } else {
                TransportError::Retryable("the national service is unreachable".into())
            }
        })?;
        let status = resp.status().as_u16();
        if status >= 500 || status == 408 || status == 429 {
            return Err(TransportError::Retryable(format!("the national service answered HTTP {status}")));
        }
        let body = resp.bytes().await.map_err(|_| TransportError::Retryable("the answer was cut off".into()))?;
        // A 4xx with a readable envelope answer (a malformed envelope) is an answer like any other.
        match serde_json::from_slice::<Response>(&body) {
            Ok(r) => Ok(r),
            Err(_) => Err(TransportError::Permanent(format!(
                "the national service answered HTTP {status} without a readable result"
            ))),
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

/// Writes `bytes` to `dir/name` atomically (temporary file in the same directory, then rename).
pub async fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(name)).await
}

#[async_trait::async_trait]
impl Transport for FileDrop {
    async fn send(&self, request: &Request) -> Result<Response, TransportError> {
        let name = file_name(&request.request_id)
            .ok_or_else(|| TransportError::Permanent("the request id cannot name a file".into()))?;
        let result = self.result_dir.join(&name);
        // An answer to an earlier attempt (whose wait ran out) is this request's answer: the
        // request is not dropped again.
        if !tokio::fs::try_exists(&result).await.unwrap_or(false) {
            let pending = self.request_dir.join(&name);
            if !tokio::fs::try_exists(&pending).await.unwrap_or(false) {
                let plain = serde_json::to_vec(request)
                    .map_err(|_| TransportError::Permanent("the request could not be serialised".into()))?;
                let sealed =
                    crypto::encrypt(&self.password, &plain).map_err(|e| TransportError::Permanent(e.to_string()))?;
                write_atomic(&self.request_dir, &name, &sealed)
                    .await
                    .map_err(|_| TransportError::Retryable("the request folder is not writable".into()))?;
            }
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                if tokio::fs::try_exists(&result).await.unwrap_or(false) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(TransportError::Retryable("no result file from the terminal in time".into()));
                }
                tokio::time::sleep(self.poll).await;
            }
        }
        let sealed = tokio::fs::read(&result)
            .await
            .map_err(|_| TransportError::Retryable("the result file is not readable".into()))?;
        let plain = crypto::decrypt(&self.password, &sealed).map_err(|e| TransportError::Permanent(e.to_string()))?;
        let response: Response = serde_json::from_slice(&plain)
            .map_err(|_| TransportError::Permanent("the result file is not a result".into()))?;
        // Read: the answer is the caller's now; the file is not needed for a later attempt.
        let _ = tokio::fs::remove_file(&result).await;
        Ok(response)
    }

    fn name(&self) -> &'static str {
        "file"
    }
}
