//! How messages reach a lab: MLLP over TCP (the JAHIS norm), or file batches in a directory (what
//! many labs still exchange over SFTP: the directory is the one an SFTP daemon or a sync job
//! serves). The endpoint's `transport` picks one.

use crate::charset_of;
use ehr_hl7v2::net::{MllpTimeouts, send_message};
use ehr_hl7v2::reply::parse_ack;
use ehr_hl7v2::{Message, charset};
use ehr_store::{Hl7Message, LabEndpoint};
use std::path::PathBuf;
use std::time::Duration;

/// The outcome of one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    /// The lab accepted the message (AA/CA), or — file batches — it was written for pickup.
    Accepted { reply: Option<String> },
    /// The lab answered AE (CE): the message itself is wrong; resending will not help.
    Rejected { reply: String, reason: String },
    /// No answer (connection refused, timeout, garbled reply), or AR / CR: worth retrying.
    Failed { reason: String },
}

/// A way of delivering a message to a lab.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn deliver(&self, endpoint: &LabEndpoint, message: &Hl7Message) -> Delivery;
}

/// MLLP (HL7 v2 minimal lower layer protocol) over TCP: one connection per message, the reply
/// awaited within the timeouts.
pub struct Mllp {
    pub timeouts: MllpTimeouts,
    /// Destinations allowed (`lab.allowed_destinations`); empty: any.
    pub allowed: Vec<String>,
}

#[async_trait::async_trait]
impl Transport for Mllp {
    async fn deliver(&self, endpoint: &LabEndpoint, message: &Hl7Message) -> Delivery {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == &endpoint.address) {
            return Delivery::Failed { reason: "the destination is not in lab.allowed_destinations".into() };
        }
        let bytes = match charset::encode(&message.payload, charset_of(&endpoint.charset)) {
            Ok(b) => b.into_owned(),
            // A character the lab's character set lacks (髙, ①) will be lacking on every attempt.
            Err(e) => return Delivery::Rejected { reply: String::new(), reason: format!("encoding: {e}") },
        };
        let reply = match send_message(endpoint.address.as_str(), &bytes, self.timeouts).await {
            Ok(r) => r,
            Err(e) => return Delivery::Failed { reason: e.to_string() },
        };
        classify_reply(&reply, &message.control_id)
    }
}

/// Reads a lab's reply (ACK or ORL^O34) to the message with `control_id`.
pub fn classify_reply(reply: &[u8], control_id: &str) -> Delivery {
    let text = match charset::decode(reply) {
        Ok(t) => t.into_owned(),
        Err(e) => return Delivery::Failed { reason: format!("unreadable reply: {e}") },
    };
    let parsed = match Message::parse(&text) {
        Ok(m) => m,
        Err(e) => return Delivery::Failed { reason: format!("unreadable reply: {e}") },
    };
    let ack = match parse_ack(&parsed) {
        Ok(a) => a,
        Err(e) => return Delivery::Failed { reason: format!("reply without a valid MSA: {e}") },
    };
    if ack.acknowledged.as_ref().is_none_or(|c| c.as_str() != control_id) {
        return Delivery::Failed { reason: "the reply does not acknowledge this message (MSA-2)".into() };
    }
    if ack.code.is_accept() {
        return Delivery::Accepted { reply: Some(text) };
    }
    // AR / CR: the receiving system could not process the message (it may be unavailable, or
    // refuse it for good): retried within the endpoint's attempts. AE / CE: the content is
    // wrong; the same message would be refused again.
    let retry = ack.code.is_reject();
    let mut reason = format!("the lab answered {}", ack.code.as_str());
    for e in &ack.errors {
        reason.push_str(&format!(
            "; {} {}",
            e.location.as_ref().map(ToString::to_string).unwrap_or_default(),
            if e.code_text.is_empty() { e.code.as_str() } else { e.code_text.as_str() }
        ));
    }
    if retry { Delivery::Failed { reason } } else { Delivery::Rejected { reply: text, reason } }
}

/// File batches: each message is written to `<dir>/out/<control id>.hl7` (in the endpoint's
/// character set, segments ending in CR), atomically (written under a temporary name, then
/// renamed), for the lab or a transfer job to pick up. Results come back in `<dir>/in`. `dir` is
/// `<lab.file_root>/<tenant>/<address>`.
pub struct FileBatch {
    pub dir: PathBuf,
}

#[async_trait::async_trait]
impl Transport for FileBatch {
    async fn deliver(&self, endpoint: &LabEndpoint, message: &Hl7Message) -> Delivery {
        let bytes = match charset::encode(&message.payload, charset_of(&endpoint.charset)) {
            Ok(b) => b.into_owned(),
            Err(e) => return Delivery::Rejected { reply: String::new(), reason: format!("encoding: {e}") },
        };
        let dir = self.dir.join("out");
        // The control id is 20 alphanumerics of ours: safe as a file name.
        let name = format!("{}.hl7", message.control_id);
        let write = async {
            tokio::fs::create_dir_all(&dir).await?;
            let tmp = dir.join(format!(".{name}.tmp"));
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, dir.join(&name)).await
        };
        match tokio::time::timeout(Duration::from_secs(30), write).await {
            Ok(Ok(())) => Delivery::Accepted { reply: None },
            Ok(Err(e)) => Delivery::Failed { reason: format!("cannot write the batch file: {}", e.kind()) },
            Err(_) => Delivery::Failed { reason: "writing the batch file timed out".into() },
        }
    }
}
