//! Integration tests of `ehr-lab-sim`: one binary. The simulator runs for real on 127.0.0.1:0;
//! orders are built with `ehr_hl7v2::build_oml_o33` and sent over MLLP; the "EHR" that receives
//! results is a small MLLP listener in the test.
// Helpers outside `#[test]` functions unwrap too; clippy.toml only covers the tests themselves.
#![allow(clippy::unwrap_used)]

mod checks;
mod orders;
mod results;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ehr_hl7v2::jahis::JLAC10;
use ehr_hl7v2::net::{MllpServerOptions, MllpTimeouts, send_message, serve};
use ehr_hl7v2::{
    AckBuilder, AckCode, Charset, Coding, ControlId, LabOrder, LabTest, Message, MessageHeader, OrlReply, Patient,
    PersonName, Sex, Specimen, Timestamp, build_oml_o33, charset, parse_orl_o34,
};
use ehr_lab_sim::{LabCharset, LabSimConfig, LabSimHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An order for 山田太郎 with two serum tests, placer number `placer`.
pub fn order(placer: &str) -> LabOrder {
    LabOrder {
        patient: Patient {
            id: "0001000052".into(),
            kanji_name: Some(PersonName::new("山田", "太郎")),
            kana_name: Some(PersonName::new("ヤマダ", "タロウ")),
            birth_date: Some(Timestamp::new("19700405").unwrap()),
            sex: Some(Sex::Male),
            ..Patient::default()
        },
        patient_class: Some("O".into()),
        placer_order_number: placer.into(),
        ordering_facility: Some("登呂病院".into()),
        department: Some(Coding::new("01", "内科", "99XY1")),
        specimen: Specimen {
            id: Some(format!("S{placer}")),
            kind: Coding::new("023", "血清", JLAC10),
            collected_at: Some(Timestamp::new("20240401090000").unwrap()),
        },
        tests: vec![
            LabTest {
                jlac10: "3A010000002327101".into(),
                name: "総蛋白".into(),
                local: Some(Coding::new("H001", "TP", "99HSP")),
            },
            LabTest { jlac10: "3B035000002327201".into(), name: "AST".into(), local: None },
        ],
        priority: None,
        ordering_provider: None,
    }
}

/// The OML^O33 text of `order` with control id `id`.
pub fn oml(order: &LabOrder, id: &str, charset: Charset) -> String {
    let header = MessageHeader::new(
        ("HIS", "HOSP"),
        ("LABSYS", "LABCO"),
        ControlId::new(id).unwrap(),
        Timestamp::new("20240401093000+0900").unwrap(),
        charset,
    );
    build_oml_o33(order, &header).unwrap()
}

pub fn timeouts() -> MllpTimeouts {
    MllpTimeouts { connect: Duration::from_secs(2), write: Duration::from_secs(2), reply: Duration::from_secs(5) }
}

/// Sends a message (encoded per its MSH-18) and returns the reply's text.
pub async fn send_text(addr: SocketAddr, text: &str) -> String {
    let wire = charset::encode_declared(text).unwrap();
    send_bytes(addr, &wire).await
}

pub async fn send_bytes(addr: SocketAddr, wire: &[u8]) -> String {
    let reply = send_message(addr, wire, timeouts()).await.unwrap();
    charset::decode(&reply).unwrap().into_owned()
}

/// Sends an order and reads the ORL^O34.
pub async fn send_order(addr: SocketAddr, text: &str) -> (String, OrlReply) {
    let reply = send_text(addr, text).await;
    let orl = parse_orl_o34(&Message::parse(&reply).unwrap()).unwrap();
    (reply, orl)
}

pub async fn lab(config: LabSimConfig) -> LabSimHandle {
    ehr_lab_sim::start(config).await.unwrap()
}

/// A lab for ISO-2022-JP orders, results only on demand, sent to `results_to`.
pub async fn iso_lab(results_to: Option<SocketAddr>) -> LabSimHandle {
    lab(LabSimConfig { charset: LabCharset::IsoIr87, ..LabSimConfig::for_tests(results_to.map(|a| a.to_string())) })
        .await
}

/// The EHR's result listener: records each message's text and answers with `answer`.
pub struct Ehr {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<String>>>,
    pub answer: Arc<Mutex<AckCode>>,
    shutdown: CancellationToken,
}

impl Ehr {
    pub async fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let answer = Arc::new(Mutex::new(AckCode::Accept));
        let shutdown = CancellationToken::new();
        let handler = {
            let (received, answer) = (Arc::clone(&received), Arc::clone(&answer));
            move |frame: Vec<u8>, _peer: SocketAddr| {
                let (received, answer) = (Arc::clone(&received), Arc::clone(&answer));
                async move {
                    let text = charset::decode(&frame).ok()?.into_owned();
                    let message = Message::parse(&text).ok()?;
                    let code = *answer.lock().unwrap();
                    let ack = AckBuilder::new(&message, code)
                        .build(&ControlId::new("EHRACK1").unwrap(), &Timestamp::new("20240401120001").unwrap())
                        .ok()?;
                    received.lock().unwrap().push(text.clone());
                    Some(charset::encode_declared(&ack).ok()?.into_owned())
                }
            }
        };
        tokio::spawn(serve(listener, Arc::new(handler), MllpServerOptions::default(), shutdown.clone()));
        Self { addr, received, answer, shutdown }
    }

    pub fn messages(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Ehr {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A loopback address nothing listens on (bound, then released).
pub async fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

#[test]
fn config_is_serde_with_defaults_and_refuses_unknown_keys() {
    let config: LabSimConfig = serde_json::from_str(
        r#"{"listen":"0.0.0.0:2576","results_to":"ehr:2575","charset":"utf-8","result_message":"oru-r01"}"#,
    )
    .unwrap();
    assert_eq!(config.charset, LabCharset::Utf8);
    assert_eq!(config.result_message, ehr_lab_sim::ResultMessage::OruR01);
    assert_eq!(config.results_to.as_deref(), Some("ehr:2575"));
    assert_eq!(config.sending_application, "LABSYS");
    assert!(serde_json::from_str::<LabSimConfig>(r#"{"listn":"0.0.0.0:1"}"#).is_err());
    let round = serde_json::to_string(&LabSimConfig::default()).unwrap();
    assert_eq!(serde_json::from_str::<LabSimConfig>(&round).unwrap(), LabSimConfig::default());
}
