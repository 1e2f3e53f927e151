//! The lab-interface service: outsourced lab testing (外注検査) over JAHIS HL7 v2.5.
//!
//! - Orders out ([`outbound`]): the `order.placed` / `order.cancelled` events of the orders
//!   service become OML^O33 messages in the message log, which is also the queue; the sender
//!   delivers them over the endpoint's transport ([`transport`]: MLLP, or file batches), retries
//!   with exponential back-off, and dead-letters a message whose attempts are used up. A lab's
//!   AE/AR answer is final (resending the same message would be refused again).
//! - Results in ([`inbound`]): OUL^R22 / ORU^R01 over the MLLP listener or from batch files, and
//!   FHIR Bundles from labs that speak FHIR, become `lab.result.received` events committed with
//!   the log row before the ACK is sent; a message seen before (endpoint + MSH-10) is
//!   acknowledged again and not stored twice.
//! - Admin API ([`http`]): lab endpoints per tenant, the message log with replay and the
//!   dead-letter list, and every external connection with its last activity.

pub mod error;
pub mod http;
pub mod inbound;
pub mod mapping;
pub mod outbound;
pub mod transport;

pub use error::LabError;
pub use inbound::LAB_RESULT_RECEIVED;

use ehr_core::Clock;
use ehr_events::CancellationToken;
use ehr_fhir::validate::Validator;
use ehr_hl7v2::Charset;
use ehr_hl7v2::net::{MllpHandler, MllpServerOptions, MllpTimeouts};
use ehr_store::Store;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use transport::{FileBatch, Mllp, Transport};

/// Topic of a lab order that became active (emitted by the orders service).
pub const ORDER_PLACED: &str = "order.placed";
/// Topic of a placed lab order that was revoked.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// Settings of the lab interface (`[lab]` in the config file, `EHR_LAB__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabSettings {
    /// Where the MLLP listener for results accepts connections (`0.0.0.0:2575`); none: no
    /// listener (results then come as batch files or FHIR Bundles only).
    pub listen: Option<String>,
    /// How often the sender and the batch-file poller look for work when not woken.
    pub poll_interval_ms: u64,
    /// How long a claimed message is reserved for the sender that claimed it.
    pub lease_secs: u64,
    /// First retry delay; doubled per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub connect_timeout_ms: u64,
    /// How long to wait for the lab's ACK after sending.
    pub reply_timeout_ms: u64,
    /// The directory under which file-batch endpoints live: `<file_root>/<tenant>/<address>`
    /// (an endpoint's `address` is a plain name there, never a path of its own).
    pub file_root: std::path::PathBuf,
    /// The `host:port` destinations MLLP endpoints may name; empty: any. Set it in production,
    /// so that a tenant administrator cannot make the server connect to internal services.
    pub allowed_destinations: Vec<String>,
}

impl Default for LabSettings {
    fn default() -> Self {
        Self {
            listen: None,
            poll_interval_ms: 1000,
            lease_secs: 120,
            retry_base_ms: 2000,
            retry_max_ms: 300_000,
            connect_timeout_ms: 5000,
            reply_timeout_ms: 30_000,
            file_root: std::path::PathBuf::from("./data/lab-files"),
            allowed_destinations: Vec::new(),
        }
    }
}

/// The lab interface: cheap to clone.
#[derive(Clone)]
pub struct LabInterface {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    settings: LabSettings,
    validator: Arc<Validator>,
    terminology: ehr_terminology::Terminology,
    sender: Notify,
    /// Labs with a sending pass in progress.
    busy: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pokes the outbox relay after results were stored, for low latency.
    relay: Option<Arc<Notify>>,
}

impl LabInterface {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: LabSettings,
        validator: Arc<Validator>,
        terminology: ehr_terminology::Terminology,
        relay: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                settings,
                validator,
                terminology,
                sender: Notify::new(),
                busy: Default::default(),
                relay,
            }),
        }
    }

    pub(crate) fn terminology(&self) -> &ehr_terminology::Terminology {
        &self.inner.terminology
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn settings(&self) -> &LabSettings {
        &self.inner.settings
    }

    pub(crate) fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// Wakes the sender (a message was queued or replayed).
    pub fn wake_sender(&self) {
        self.inner.sender.notify_one();
    }

    pub(crate) fn wake_relay(&self) {
        if let Some(n) = &self.inner.relay {
            n.notify_one();
        }
    }

    /// The directory of a file-batch endpoint: `<file_root>/<tenant>/<address>`.
    pub(crate) fn endpoint_dir(&self, endpoint: &ehr_store::LabEndpoint) -> std::path::PathBuf {
        self.inner.settings.file_root.join(endpoint.tenant.as_str()).join(&endpoint.address)
    }

    pub(crate) fn transport(&self, endpoint: &ehr_store::LabEndpoint) -> Box<dyn Transport> {
        let s = &self.inner.settings;
        match endpoint.transport.as_str() {
            "file" => Box::new(FileBatch { dir: self.endpoint_dir(endpoint) }),
            _ => Box::new(Mllp {
                allowed: s.allowed_destinations.clone(),
                timeouts: MllpTimeouts {
                    connect: Duration::from_millis(s.connect_timeout_ms),
                    write: Duration::from_millis(s.reply_timeout_ms),
                    reply: Duration::from_millis(s.reply_timeout_ms),
                },
            }),
        }
    }

    /// Runs the sender and the batch-file poller until `shutdown`.
    pub fn spawn_workers(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let interval = Duration::from_millis(self.inner.settings.poll_interval_ms.max(10));
        // The batch-file inboxes on their own loop: a slow lab's sending never holds them up.
        let files = self.clone();
        let files_shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = files.poll_files().await {
                    tracing::warn!(code = ehr_core::Classify::code(&e), "lab batch-file poll failed");
                }
                tokio::select! {
                    _ = files_shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match me.active_endpoints().await {
                    Ok(endpoints) => me.kick_senders(endpoints),
                    Err(e) => tracing::warn!(code = ehr_core::Classify::code(&e), "lab sender pass failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = me.inner.sender.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })
    }

    /// Starts a sending pass for each lab not already in one, without waiting for it: a lab
    /// that does not answer (each attempt waiting for its timeouts) holds up nothing else.
    fn kick_senders(&self, endpoints: Vec<ehr_store::LabEndpoint>) {
        for endpoint in endpoints {
            let free = self.inner.busy.lock().map(|mut busy| busy.insert(endpoint.id.clone())).unwrap_or(false);
            if !free {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.send_due_to(&endpoint).await {
                    tracing::warn!(endpoint = %endpoint.id, code = ehr_core::Classify::code(&e), "lab sender pass failed");
                }
                if let Ok(mut busy) = me.inner.busy.lock() {
                    busy.remove(&endpoint.id);
                }
            });
        }
    }

    /// Starts the MLLP listener for results on `settings.listen` (or the given address); returns
    /// the bound address.
    pub async fn spawn_listener(
        &self,
        addr: &str,
        shutdown: CancellationToken,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let handler = Arc::new(Listener(self.clone()));
        let task = tokio::spawn(async move {
            if let Err(e) = ehr_hl7v2::net::serve(listener, handler, MllpServerOptions::default(), shutdown).await {
                tracing::error!(error = %e, "MLLP listener stopped");
            }
        });
        tracing::info!(%bound, "MLLP listener for lab results");
        Ok((bound, task))
    }
}

struct Listener(LabInterface);

impl MllpHandler for Listener {
    fn handle(&self, frame: Vec<u8>, peer: SocketAddr) -> impl Future<Output = Option<Vec<u8>>> + Send {
        let lab = self.0.clone();
        async move { Some(lab.ingest_frame(&frame, Some(peer.ip())).await) }
    }
}

/// The character set of an endpoint's `charset` setting.
pub(crate) fn charset_of(name: &str) -> Charset {
    match name {
        "utf-8" => Charset::Utf8,
        _ => Charset::Iso2022Jp,
    }
}

/// The endpoint `charset` values accepted.
pub const CHARSETS: &[&str] = &["iso-ir-87", "utf-8"];
/// The endpoint `transport` values accepted.
pub const TRANSPORTS: &[&str] = &["mllp", "file"];

/// An OML^O33 turned into a cancellation: every ORC-1 `NW` (new order) becomes `CA` (cancel
/// order request, HL7 table 0119).
pub(crate) fn cancel_order_controls(text: &str) -> String {
    text.split('\r')
        .map(|segment| match segment.strip_prefix("ORC|NW|") {
            Some(rest) => format!("ORC|CA|{rest}"),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r")
}

/// A message with another MSH-10 (the tenth field of its first segment).
pub(crate) fn replace_control_id(text: &str, control_id: &str) -> String {
    let Some((msh, rest)) = text.split_once('\r') else { return text.to_owned() };
    let separator = msh.chars().nth(3).unwrap_or('|');
    let mut fields: Vec<&str> = msh.split(separator).collect();
    if fields.len() > 9 {
        fields[9] = control_id;
    }
    format!("{}\r{rest}", fields.join(&separator.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_ids_are_replaced_in_msh_10() {
        let m = "MSH|^~\\&|A|B|C|D|20261125||OML^O33^OML_O33|OLD|P|2.5\rPID|1\r";
        assert_eq!(
            super::replace_control_id(m, "NEW"),
            "MSH|^~\\&|A|B|C|D|20261125||OML^O33^OML_O33|NEW|P|2.5\rPID|1\r"
        );
    }

    #[test]
    fn cancellation_rewrites_order_control_only() {
        let oml = "MSH|^~\\&|A\rORC|NW|123\rOBR|1|123\rORC|NW|124\r";
        assert_eq!(super::cancel_order_controls(oml), "MSH|^~\\&|A\rORC|CA|123\rOBR|1|123\rORC|CA|124\r");
    }
}
