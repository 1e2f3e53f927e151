//! The request / response envelope around a CLINS submission: **our reading**. The national
//! 外部インターフェイス仕様書 (interface list, layouts, 業務コード, 処理結果コード) is given to vendors
//! only; what is public (技術解説書 v1.1.0, jp-standards §A.8) says which operations exist (登録,
//! 取消 keyed by institution + insurer + member + resource identifier / document id, 変更 = 取消 +
//! 登録 in one request, 取得) and that the payload is the FHIR JSON Bundle. This module is the one
//! place that would change when the real layout is known.
//!
//! JSON, camelCase:
//!
//! ```json
//! {"version": "1", "requestId": "…", "operation": "register", "institution": "1318814790",
//!  "informationType": "condition", "bundleIdentifier": "1318814790^2024^…",
//!  "cancelKeys": {"member": {"insurerNumber": "00012345", "symbol": "あいう", "number": "１８７", "branch": "05"},
//!                 "resourceIdentifiers": ["…"], "documentId": "…"},
//!  "bundle": { …FHIR Bundle… }, "sentAt": "2024-11-12T10:00:00.000+09:00"}
//! ```
//!
//! `requestId` is the idempotency key: the same on every retry of one submission; the service
//! answers a repeated request id with its first answer and registers nothing twice.
//!
//! Result codes (`resultCode`):
//!
//! | code | status | meaning |
//! |---|---|---|
//! | 0000 | accepted | processed (registered, cancelled, changed, retrieved) |
//! | 1001 | rejected | the Bundle breaks a rule or the profile (see `errors`: rule, location) |
//! | 1002 | rejected | the envelope is malformed or contradicts the Bundle |
//! | 1003 | rejected | the institution is not the sender's (file-drop folder, bundle identifier) |
//! | 2001 | rejected | cancel / change of a bundle identifier the service does not hold |
//! | 2002 | rejected | cancel / change of a submission already cancelled |
//! | 2003 | rejected | register of a bundle identifier already registered (use change) |
//! | 9001 | error | the service is unavailable (HTTP 503; retry later) |

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The envelope version this module writes and reads.
pub const VERSION: &str = "1";

/// What is asked of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Register,
    Cancel,
    Change,
    Retrieve,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Cancel => "cancel",
            Self::Change => "change",
            Self::Retrieve => "retrieve",
        }
    }
}

/// The insured person's keys (被保険者番号等): insurer number, symbol, number, branch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberKeys {
    pub insurer_number: String,
    pub symbol: String,
    pub number: String,
    pub branch: String,
}

impl MemberKeys {
    /// From a JP_Insurance_memberID value `保険者番号:記号:番号:枝番`.
    pub fn parse(member_id: &str) -> Option<Self> {
        let mut parts = member_id.split(':');
        let keys = Self {
            insurer_number: parts.next()?.to_owned(),
            symbol: parts.next()?.to_owned(),
            number: parts.next()?.to_owned(),
            branch: parts.next()?.to_owned(),
        };
        (parts.next().is_none() && keys.insurer_number.len() == 8 && !keys.number.is_empty()).then_some(keys)
    }

    /// The JP_Insurance_memberID form.
    pub fn member_id(&self) -> String {
        format!("{}:{}:{}:{}", self.insurer_number, self.symbol, self.number, self.branch)
    }

    /// The member keys of the Patient in a Bundle.
    pub fn of_bundle(bundle: &Value) -> Option<Self> {
        let patient =
            bundle["entry"].as_array()?.iter().map(|e| &e["resource"]).find(|r| r["resourceType"] == "Patient")?;
        let id = patient["identifier"]
            .as_array()?
            .iter()
            .find(|i| i["system"] == crate::common::INSURANCE_MEMBER_ID)?["value"]
            .as_str()?;
        Self::parse(id)
    }
}

/// The keys of a cancellation: the patient, and what to cancel (the bundle identifier, resource
/// identifiers of the 6 items, or a document id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelKeys {
    pub member: MemberKeys,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_identifiers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
}

/// A request to the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub version: String,
    pub request_id: String,
    pub operation: Operation,
    /// The sender's 10-digit 医療機関番号.
    pub institution: String,
    /// `condition`, `drug-allergy`, …, `referral`, `discharge-summary`, `checkup`; `patient`
    /// for retrieve.
    pub information_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_keys: Option<CancelKeys>,
    /// For retrieve: whose data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_keys: Option<MemberKeys>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Value>,
    pub sent_at: String,
}

/// How the service judged a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Rejected,
    Error,
}

/// One finding of the service: a rule id and where in the Bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub rule: String,
    #[serde(default)]
    pub location: Option<String>,
    pub message: String,
    #[serde(default)]
    pub severity: String,
}

/// What the service holds (an answer to retrieve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub institution: String,
    pub information_type: String,
    pub bundle_identifier: String,
    pub registered_at: String,
    pub version: u32,
    pub bundle: Value,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub request_id: String,
    pub status: Status,
    pub result_code: String,
    pub message: String,
    #[serde(default)]
    pub errors: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<Held>>,
    pub processed_at: String,
}

pub mod codes {
    pub const ACCEPTED: &str = "0000";
    pub const INVALID_BUNDLE: &str = "1001";
    pub const INVALID_ENVELOPE: &str = "1002";
    pub const WRONG_INSTITUTION: &str = "1003";
    pub const NOT_FOUND: &str = "2001";
    pub const ALREADY_CANCELLED: &str = "2002";
    pub const ALREADY_REGISTERED: &str = "2003";
    pub const UNAVAILABLE: &str = "9001";
}

/// A request id the envelope accepts (it is also a file name in the file-drop method).
pub fn is_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_keys_round_trip() {
        let k = MemberKeys::parse("00012345:あいう:１８７:05").unwrap();
        assert_eq!(k.insurer_number, "00012345");
        assert_eq!(k.branch, "05");
        assert_eq!(k.member_id(), "00012345:あいう:１８７:05");
        assert_eq!(MemberKeys::parse("00012345::１８７:").unwrap().symbol, "");
        assert!(MemberKeys::parse("123:a:b:c").is_none());
        assert!(MemberKeys::parse("00012345:a:b").is_none());
    }

    #[test]
    fn the_envelope_is_camel_case_json() {
        let r = Request {
            version: VERSION.into(),
            request_id: "r-1".into(),
            operation: Operation::Cancel,
            institution: "1318814790".into(),
            information_type: "condition".into(),
            bundle_identifier: Some("1318814790^2024^abc".into()),
            cancel_keys: Some(CancelKeys {
                member: MemberKeys::parse("00012345:あいう:１８７:05").unwrap(),
                resource_identifiers: vec!["Condition-1".into()],
                document_id: None,
            }),
            patient_keys: None,
            bundle: None,
            sent_at: "2024-11-12T10:00:00.000+09:00".into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["operation"], "cancel");
        assert_eq!(v["cancelKeys"]["member"]["insurerNumber"], "00012345");
        assert_eq!(v["cancelKeys"]["resourceIdentifiers"], json!(["Condition-1"]));
        assert!(v.get("bundle").is_none());
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert!(is_request_id("0b7e-11_ab"));
        assert!(!is_request_id("../x"));
    }
}
