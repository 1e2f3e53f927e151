//! Results out: what reaches the EHR's listener, duplicates, ORU^R01 in UTF-8 after a delay,
//! resending while the EHR is down, and AE/AR answers that are recorded, not retried.

use std::time::Duration;

use ehr_hl7v2::{AckCode, Charset, Message, ReplyCode, Sex, charset, parse_lab_results};
use ehr_lab_sim::catalog::{LOCAL_SYSTEM, generate};
use ehr_lab_sim::{LabCharset, LabSimConfig, ResultMessage};
use tokio::net::TcpListener;

use crate::{Ehr, free_addr, iso_lab, lab, oml, order, send_order};

#[tokio::test]
async fn results_reach_the_ehr_and_duplicates_share_their_control_id() {
    let ehr = Ehr::start().await;
    let sim = iso_lab(Some(ehr.addr)).await;
    sim.set_duplicate_results(true);
    let (_, orl) = send_order(sim.local_addr(), &oml(&order("P100"), "RES0001", Charset::Iso2022Jp)).await;
    let filler = orl.orders().next().and_then(|o| o.filler_order_number.clone()).unwrap();

    let sent = sim.send_result_now("P100").await.unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].copy, sent[1].copy), (1, 2));
    assert_eq!(sent[0].control_id, sent[1].control_id);
    assert_eq!(sent[0].text, sent[1].text);
    for s in &sent {
        assert_eq!(s.ack_code, Some(ReplyCode::ApplicationAccept));
        assert_eq!(s.acknowledged_control_id.as_deref(), Some(s.control_id.as_str()));
        assert_eq!((s.attempts, s.failure), (1, None));
        assert_eq!(s.filler_order_number, filler);
        assert_eq!(s.message_type, ResultMessage::OulR22);
    }
    assert_eq!(sim.sent_results(), sent);

    let messages = ehr.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0], messages[1], "the duplicate is the same message");
    let m = Message::parse(&messages[0]).unwrap();
    assert_eq!(m.get("MSH-3").unwrap(), Some("LABSYS"));
    assert_eq!(m.get("MSH-5").unwrap(), Some("HIS"));
    assert_eq!(m.get("MSH-18").unwrap(), Some("~ISO IR87"));
    assert_eq!(m.get("MSH-20").unwrap(), Some("ISO 2022-1994"));
    let results = parse_lab_results(&m).unwrap();
    assert_eq!(results.message_type.to_string(), "OUL^R22^OUL_R22");
    assert_eq!(results.control_id.as_str(), sent[0].control_id);
    assert_eq!(results.patient.id, "0001000052");
    assert_eq!(results.patient.kana_name.as_ref().map(|n| n.family.as_str()), Some("ヤマダ"));
    assert_eq!(results.orders.len(), 2);
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "SPM", "OBR", "ORC", "OBX", "OBR", "ORC", "OBX"], "one SPM group for the specimen");
    for (order, (jlac10, local, unit)) in
        results.orders.iter().zip([("3A010000002327101", "L0101", "g/dL"), ("3B035000002327201", "L0201", "U/L")])
    {
        assert_eq!(order.placer_order_number, "P100");
        assert_eq!(order.filler_order_number, filler);
        assert_eq!(order.service.jlac10().map(|c| c.code.as_str()), Some(jlac10));
        assert_eq!((order.order_control.as_deref(), order.order_status.as_deref()), (Some("SC"), Some("CM")));
        assert_eq!(order.result_status.as_deref(), Some("F"));
        let specimen = order.specimen.as_ref().unwrap();
        assert_eq!(specimen.kind.code, "023");
        assert_eq!(specimen.collected_at.as_ref().map(|t| t.as_str()), Some("20240401090000"));
        let obx = &order.observations[0];
        assert_eq!(obx.value_type, "NM");
        assert_eq!(obx.code.primary.code, jlac10);
        assert_eq!(obx.code.primary.system, "JC10");
        let alternate = obx.code.alternate.as_ref().unwrap();
        assert_eq!((alternate.code.as_str(), alternate.system.as_str()), (local, LOCAL_SYSTEM));
        assert_eq!(obx.units.as_ref().map(|u| u.code.as_str()), Some(unit));
        assert_eq!(obx.status, "F");
        assert!(obx.observed_at.is_some());
        // The value is the catalogue's, for this test and order, with its range and flag.
        let expected = generate(jlac10, "P100", Some(Sex::Male), "");
        assert_eq!(obx.values, std::slice::from_ref(&expected.value));
        assert_eq!(obx.reference_range, expected.reference_range);
        let (low, high) = obx.reference_range.as_deref().unwrap().split_once('-').unwrap();
        let value: f64 = expected.value.parse().unwrap();
        let flag = if value < low.parse().unwrap() {
            vec!["L".to_owned()]
        } else if value > high.parse().unwrap() {
            vec!["H".to_owned()]
        } else {
            Vec::new()
        };
        assert_eq!(obx.abnormal_flags, flag);
    }
    // Results of an order are sent once.
    assert!(sim.send_result_now("P100").await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn oru_r01_in_utf8_after_the_configured_delay() {
    let ehr = Ehr::start().await;
    let config = LabSimConfig {
        charset: LabCharset::Utf8,
        result_message: ResultMessage::OruR01,
        result_delay_ms: Some(50),
        ..LabSimConfig::for_tests(Some(ehr.addr.to_string()))
    };
    let sim = lab(config).await;
    let (_, orl) = send_order(sim.local_addr(), &oml(&order("P200"), "RES0002", Charset::Utf8)).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationAccept);

    let sent = sim.wait_for_sent(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].ack_code, Some(ReplyCode::ApplicationAccept));
    let messages = ehr.messages();
    let m = Message::parse(&messages[0]).unwrap();
    assert_eq!(m.get("MSH-9").unwrap(), Some("ORU^R01^ORU_R01"));
    assert_eq!(m.get("MSH-18").unwrap(), Some("UNICODE UTF-8"));
    assert_eq!(charset::detect(messages[0].as_bytes()).unwrap(), Charset::Utf8);
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "ORC", "OBR", "OBX", "SPM", "ORC", "OBR", "OBX", "SPM"]);
    let results = parse_lab_results(&m).unwrap();
    assert!(results.orders.iter().all(|o| o.placer_order_number == "P200" && o.specimen.is_some()));
    assert_eq!(results.observations().count(), 2);
    // Sent once: the delay does not fire again, and on demand is refused.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sim.sent_results().len(), 1);
    assert!(sim.send_result_now("P200").await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn results_are_resent_while_the_ehr_is_down_and_ae_ar_are_not() {
    let addr = free_addr().await;
    let sim = iso_lab(Some(addr)).await;
    send_order(sim.local_addr(), &oml(&order("P300"), "RES0003", Charset::Iso2022Jp)).await;

    let pending = {
        let sim = sim.clone();
        tokio::spawn(async move { sim.send_result_now("P300").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.sent_results().is_empty(), "nothing recorded while still retrying");
    let ehr = Ehr::on(TcpListener::bind(addr).await.unwrap());
    let sent = pending.await.unwrap().unwrap();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].attempts >= 2, "{} attempts", sent[0].attempts);
    assert_eq!(sent[0].ack_code, Some(ReplyCode::ApplicationAccept));
    assert_eq!(ehr.messages().len(), 1);

    // The EHR answers AE, then AR: recorded once each, never resent.
    for (answer, expected, placer, id) in [
        (AckCode::Error, ReplyCode::ApplicationError, "P301", "RES0004"),
        (AckCode::Reject, ReplyCode::ApplicationReject, "P302", "RES0005"),
    ] {
        *ehr.answer.lock().unwrap() = answer;
        send_order(sim.local_addr(), &oml(&order(placer), id, Charset::Iso2022Jp)).await;
        let sent = sim.send_result_now(placer).await.unwrap();
        assert_eq!((sent[0].attempts, sent[0].ack_code), (1, Some(expected)));
    }
    assert_eq!(sim.sent_results().len(), 3);
    assert_eq!(ehr.messages().len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_sender_gives_up_after_max_attempts_or_without_an_address() {
    let addr = free_addr().await;
    let config = LabSimConfig { max_attempts: 2, ..LabSimConfig::for_tests(Some(addr.to_string())) };
    let sim = lab(config).await;
    send_order(sim.local_addr(), &oml(&order("P400"), "RES0006", Charset::Iso2022Jp)).await;
    let sent = sim.send_result_now("P400").await.unwrap();
    assert_eq!((sent[0].attempts, sent[0].ack_code, sent[0].failure), (2, None, Some("EHR-HL7-023")));
    sim.shutdown().await;

    let sim = lab(LabSimConfig::for_tests(None)).await;
    send_order(sim.local_addr(), &oml(&order("P401"), "RES0007", Charset::Iso2022Jp)).await;
    let sent = sim.send_result_now("P401").await.unwrap();
    assert_eq!((sent[0].attempts, sent[0].failure), (0, Some("not-configured")));
    assert!(sent[0].text.starts_with("MSH|^~\\&|LABSYS|LABCO|HIS|HOSP|"));
    sim.shutdown().await;
}
