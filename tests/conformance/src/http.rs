//! The HTTP client of the kit: requests with a bearer token, answers read whole.

use crate::ConformanceError;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// An answer, read whole.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The start of the body, for a failure message.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }

    /// `status 404: {body}` for failure messages.
    pub fn describe(&self) -> String {
        format!("status {}: {}", self.status, self.snippet())
    }
}

/// The client and the server's base URLs.
pub(crate) struct Http {
    pub client: reqwest::Client,
    /// `<base-url>`.
    pub base: String,
    /// `<base-url>/fhir`.
    pub fhir: String,
}

impl Http {
    pub fn new(base: &str) -> Result<Self, ConformanceError> {
        let client = reqwest::Client::builder()
            // Redirects are answers to check (the login's redirect URI is not a server to follow).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(ConformanceError::Client)?;
        let base = base.trim_end_matches('/').to_owned();
        Ok(Self { client, fhir: format!("{base}/fhir"), base })
    }

    /// The absolute URL of a FHIR path (`/Patient/1`), or the URL itself when absolute.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.fhir)
        }
    }

    /// A FHIR request with an optional bearer token, asking for FHIR JSON.
    pub fn fhir(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, self.url(path)).header("accept", "application/fhir+json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Sends a request and reads the answer whole.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Resp, ConformanceError> {
        let url =
            req.try_clone().and_then(|r| r.build().ok()).map(|r| without_query(r.url().as_str())).unwrap_or_default();
        let resp = req.send().await.map_err(|source| ConformanceError::Transport { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|source| ConformanceError::Transport { url, source })?.to_vec();
        Ok(Resp { status, headers, body })
    }

    /// `GET` a FHIR path with a token.
    pub async fn get(&self, path: &str, token: &str) -> Result<Resp, ConformanceError> {
        self.send(self.fhir(reqwest::Method::GET, path, Some(token))).await
    }

    /// Sends FHIR JSON with extra headers.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Resp, ConformanceError> {
        let mut req = self.fhir(method, path, Some(token)).header("content-type", "application/fhir+json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body.to_string())).await
    }
}

/// A URL without its query (query strings may carry search values; they stay out of messages).
fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_owned()
}
