//! Orders in: an accepted order recorded field by field, a broken one answered AE with located
//! ERR segments, AR for what is not an order, and the order port going down and up.

use std::time::Duration;

use ehr_core::Classify;
use ehr_hl7v2::net::send_message;
use ehr_hl7v2::{AckCode, Charset, Hl7Error, Message, OrderControl, PersonName, ReplyCode, Sex, charset, parse_ack};

use crate::{iso_lab, oml, order, send_bytes, send_order, send_text, timeouts};

#[tokio::test]
async fn a_valid_order_is_accepted_and_recorded() {
    let sim = iso_lab(None).await;
    let text = oml(&order("000000011000354"), "ORD0001", Charset::Iso2022Jp);
    let (reply, orl) = send_order(sim.local_addr(), &text).await;

    assert_eq!(orl.ack.code, ReplyCode::ApplicationAccept, "{reply}");
    assert!(orl.ack.errors.is_empty());
    assert_eq!(orl.ack.acknowledged.as_ref().map(|c| c.as_str()), Some("ORD0001"));
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.get("MSH-9").unwrap(), Some("ORL^O34^ORL_O34"));
    assert_eq!(m.get("MSH-3").unwrap(), Some("LABSYS"));
    assert_eq!(m.get("MSH-18").unwrap(), Some("~ISO IR87"));
    assert_eq!(orl.patient_id.as_deref(), Some("0001000052"));
    let orders: Vec<_> = orl.orders().collect();
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().all(|o| o.control == OrderControl::Accepted));
    let filler = orders[0].filler_order_number.clone().expect("the lab assigns a filler order number");
    assert_eq!(orders[0].test.as_ref().map(|t| t.jlac10.as_str()), Some("3A010000002327101"));

    let received = sim.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.ack_code, AckCode::Accept);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.charset, Some(Charset::Iso2022Jp));
    assert!(r.raw.windows(3).any(|w| w == b"\x1B$B"), "kanji arrived as ISO-2022-JP");
    assert_eq!(r.text.as_deref(), Some(text.as_str()));
    assert_eq!(r.control_id.as_deref(), Some("ORD0001"));
    assert_eq!(r.message_type.as_deref(), Some("OML^O33^OML_O33"));
    assert_eq!(r.placer_order_number.as_deref(), Some("000000011000354"));
    assert_eq!(r.filler_order_number.as_deref(), Some(filler.as_str()));
    assert_eq!(r.patient.id, "0001000052");
    assert_eq!(r.patient.kanji_name, Some(PersonName::new("山田", "太郎")));
    assert_eq!(r.patient.kana_name, Some(PersonName::new("ヤマダ", "タロウ")));
    assert_eq!(r.patient.birth_date.as_ref().map(|t| t.as_str()), Some("19700405"));
    assert_eq!(r.patient.sex, Some(Sex::Male));
    assert_eq!(r.specimen_code(), Some("023"));
    assert_eq!(r.specimens[0].kind.text, "血清");
    assert_eq!(r.test_codes(), ["3A010000002327101", "3B035000002327201"]);
    let names: Vec<_> = r.tests.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["総蛋白", "AST"]);
    assert_eq!(r.tests[0].code.local().map(|c| c.code.as_str()), Some("H001"));
    assert!(r.tests.iter().all(|t| t.order_control == "NW" && t.specimen == Some(0)));
    assert_eq!(r.reply, reply);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_broken_order_is_answered_ae_naming_each_field() {
    let sim = iso_lab(None).await;
    // PID-3 emptied, the first test coded in the hospital's local system instead of JLAC10.
    let text = oml(&order("000000011000355"), "ORD0002", Charset::Iso2022Jp)
        .replace("PID|1||0001000052^^^^PI|", "PID|1|||")
        .replace("3A010000002327101^総蛋白^JC10^H001^TP^99HSP", "H001^総蛋白^99HSP");
    let (reply, orl) = send_order(sim.local_addr(), &text).await;

    assert_eq!(orl.ack.code, ReplyCode::ApplicationError, "{reply}");
    let m = Message::parse(&reply).unwrap();
    let err2: Vec<_> = m.segments_named("ERR").map(|e| e.field(2).raw()).collect();
    assert_eq!(err2, ["PID^1^3", "OBR^1^4"]);
    let codes: Vec<_> = m.segments_named("ERR").map(|e| e.field(3).component(1).raw()).collect();
    assert_eq!(codes, ["101", "103"]);
    assert!(orl.ack.errors.iter().all(|e| e.severity.as_deref() == Some("E") && e.diagnostic.is_some()));
    // Without PID-3 there is no response group.
    assert_eq!(orl.patient_id, None);

    let r = &sim.received()[0];
    assert_eq!(r.ack_code, AckCode::Error);
    assert_eq!(r.problem_locations(), ["PID-3", "OBR-4"]);
    assert_eq!(r.problems[0].segment(), "PID");
    assert_eq!(r.problems[0].field(), Some(3));
    assert_eq!(r.filler_order_number, None);
    assert_eq!(r.test_codes(), ["3B035000002327201"]);

    // The same order with PID-3 present gets UA for each test.
    let text = oml(&order("000000011000356"), "ORD0003", Charset::Iso2022Jp)
        .replace("3A010000002327101^総蛋白^JC10^H001^TP^99HSP", "H001^総蛋白^99HSP");
    let (_, orl) = send_order(sim.local_addr(), &text).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert!(orl.orders().all(|o| o.control == OrderControl::UnableToAccept && o.filler_order_number.is_none()));
    sim.shutdown().await;
}

#[tokio::test]
async fn what_is_not_an_order_is_rejected() {
    let sim = iso_lab(None).await;
    // Not HL7 at all: AR with the lab's own header and no MSA-2.
    let reply = send_bytes(sim.local_addr(), b"hello, lab").await;
    let ack = parse_ack(&Message::parse(&reply).unwrap()).unwrap();
    assert_eq!((ack.code, ack.acknowledged), (ReplyCode::ApplicationReject, None));
    assert_eq!(ack.errors[0].code, "100");

    // A result message sent to the order port: AR with a general ACK naming MSH-9.
    let oru = "MSH|^~\\&|HIS|HOSP|LABSYS|LABCO|20240401||ORU^R01^ORU_R01|X1|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
               PID|1||1\r";
    let reply = send_text(sim.local_addr(), oru).await;
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.get("MSH-9").unwrap(), Some("ACK^R01^ACK"));
    let ack = parse_ack(&m).unwrap();
    assert_eq!(ack.code, ReplyCode::ApplicationReject);
    assert_eq!(m.get("ERR-2").unwrap(), Some("MSH^1^9"));
    assert_eq!(m.get("ERR-3-1").unwrap(), Some("200"));

    // An undecodable frame (8-bit bytes declared as ISO-2022-JP).
    let mut bad = oml(&order("P1"), "ORD0009", Charset::Iso2022Jp).into_bytes();
    bad.extend_from_slice(b"NTE|1|\xFF\r");
    let reply = send_bytes(sim.local_addr(), &bad).await;
    assert_eq!(parse_ack(&Message::parse(&reply).unwrap()).unwrap().code, ReplyCode::ApplicationReject);

    let received = sim.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.ack_code == AckCode::Reject));
    assert_eq!(received[0].text, None);
    assert_eq!(received[1].problem_locations(), ["MSH-9"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_order_port_goes_down_and_comes_back_on_the_same_port() {
    let sim = iso_lab(None).await;
    let addr = sim.local_addr();
    let (_, orl) = send_order(addr, &oml(&order("D1"), "ORD0101", Charset::Iso2022Jp)).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationAccept);

    sim.set_down(true).await.unwrap();
    assert!(sim.is_down().await);
    let wire = charset::encode_declared(&oml(&order("D2"), "ORD0102", Charset::Iso2022Jp)).unwrap().into_owned();
    let err = send_message(addr, &wire, timeouts()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::ConnectFailed(_)), "{err:?}");
    assert_eq!(err.code(), "EHR-HL7-023");

    sim.set_down(false).await.unwrap();
    assert_eq!(sim.local_addr(), addr);
    let reply = send_message(addr, &wire, timeouts()).await.unwrap();
    let text = charset::decode(&reply).unwrap();
    assert_eq!(parse_ack(&Message::parse(&text).unwrap()).unwrap().code, ReplyCode::ApplicationAccept);
    assert_eq!(sim.wait_for_received(2, Duration::from_secs(1)).await.len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn set_down_drops_open_connections() {
    let sim = iso_lab(None).await;
    let mut client = ehr_hl7v2::MllpClient::new(sim.local_addr().to_string(), timeouts());
    let wire = charset::encode_declared(&oml(&order("K1"), "ORD0201", Charset::Iso2022Jp)).unwrap().into_owned();
    client.send(&wire).await.unwrap();
    assert!(client.is_connected());
    sim.set_down(true).await.unwrap();
    let wire = charset::encode_declared(&oml(&order("K2"), "ORD0202", Charset::Iso2022Jp)).unwrap().into_owned();
    assert!(client.send(&wire).await.unwrap_err().is_transport_failure());
    sim.shutdown().await;
}
