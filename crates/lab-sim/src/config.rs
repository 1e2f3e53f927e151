//! The simulator's configuration: a serde struct so `ehr lab-sim` can fill it from flags, a
//! TOML file or the environment. Durations are milliseconds, as flags are easiest that way.

use std::net::SocketAddr;
use std::time::Duration;

use ehr_hl7v2::Charset;
use serde::{Deserialize, Serialize};

/// The character set the lab is configured for: what it expects in MSH-18/MSH-20 of orders and
/// writes in its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LabCharset {
    /// `~ISO IR87` + `ISO 2022-1994`: ISO-2022-JP on the wire, the JAHIS default.
    #[default]
    #[serde(alias = "iso-2022-jp")]
    IsoIr87,
    /// `UNICODE UTF-8`.
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
}

impl LabCharset {
    /// The wire character set.
    pub fn charset(self) -> Charset {
        match self {
            Self::IsoIr87 => Charset::Iso2022Jp,
            Self::Utf8 => Charset::Utf8,
        }
    }
}

/// The message type results are sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResultMessage {
    /// `OUL^R22^OUL_R22`, the specimen-oriented form JAHIS and SS-MIX2 use.
    #[default]
    OulR22,
    /// `ORU^R01^ORU_R01`.
    OruR01,
}

impl ResultMessage {
    /// MSH-9 as written.
    pub fn message_type(self) -> &'static str {
        match self {
            Self::OulR22 => "OUL^R22^OUL_R22",
            Self::OruR01 => "ORU^R01^ORU_R01",
        }
    }
}

/// Everything the simulator is started with. Unknown keys are refused so a typo in a
/// configuration file is an error, not a silently ignored knob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabSimConfig {
    /// Where orders (OML^O33) are received; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The EHR's MLLP listener for results (`host:port`); without it results are built and
    /// recorded but not sent.
    pub results_to: Option<String>,
    /// The character set of the lab.
    pub charset: LabCharset,
    /// OUL^R22 or ORU^R01.
    pub result_message: ResultMessage,
    /// Time from accepting an order to sending its results; `None`: only on
    /// `send_result_now`.
    pub result_delay_ms: Option<u64>,
    /// Send every result message twice with the same MSH-10, to test idempotent ingest.
    pub duplicate_results: bool,
    /// MSH-3 of what the lab sends; orders must name it in MSH-5 when
    /// `require_receiver_match` is set.
    pub sending_application: String,
    /// MSH-4 of what the lab sends (and MSH-6 expected of orders).
    pub sending_facility: String,
    /// MSH-5 of results: the EHR's application.
    pub receiving_application: String,
    /// MSH-6 of results: the EHR's facility.
    pub receiving_facility: String,
    /// Refuse orders whose MSH-5/MSH-6 do not name this lab.
    pub require_receiver_match: bool,
    /// Answer a repeated MSH-10 from the same sender with AE (HL7 error 205). When false, a
    /// repeat is taken as a retransmission: answered like the first copy and not processed again.
    pub reject_duplicate_control_ids: bool,
    /// An order connection with no message for this long is closed.
    pub idle_timeout_ms: u64,
    /// The largest order frame accepted.
    pub max_frame_size: usize,
    /// Connecting to the EHR's listener may take this long.
    pub connect_timeout_ms: u64,
    /// Waiting for the EHR's ACK to a result may take this long.
    pub ack_timeout_ms: u64,
    /// First pause before resending a result the EHR did not acknowledge; doubles each time.
    pub retry_initial_ms: u64,
    /// Longest pause between resends.
    pub retry_max_ms: u64,
    /// Attempts per result message before giving up; 0: keep trying until shut down.
    pub max_attempts: u32,
}

impl Default for LabSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2576)),
            results_to: None,
            charset: LabCharset::IsoIr87,
            result_message: ResultMessage::OulR22,
            result_delay_ms: Some(2_000),
            duplicate_results: false,
            sending_application: "LABSYS".to_owned(),
            sending_facility: "LABCO".to_owned(),
            receiving_application: "HIS".to_owned(),
            receiving_facility: "HOSP".to_owned(),
            require_receiver_match: false,
            reject_duplicate_control_ids: true,
            idle_timeout_ms: 300_000,
            max_frame_size: 1024 * 1024,
            connect_timeout_ms: 3_000,
            ack_timeout_ms: 10_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            max_attempts: 0,
        }
    }
}

impl LabSimConfig {
    /// A configuration for tests: port 0 on loopback, results at `results_to`, short timeouts
    /// and retries, results only on demand unless a delay is set.
    pub fn for_tests(results_to: Option<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            results_to,
            result_delay_ms: None,
            connect_timeout_ms: 1_000,
            ack_timeout_ms: 2_000,
            retry_initial_ms: 50,
            retry_max_ms: 400,
            ..Self::default()
        }
    }

    pub(crate) fn result_delay(&self) -> Option<Duration> {
        self.result_delay_ms.map(Duration::from_millis)
    }
}
