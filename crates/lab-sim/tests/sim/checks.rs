//! The lab's checks one by one: a valid OML^O33 with one thing changed, and the location the
//! lab reports for it.

use ehr_hl7v2::{AckCode, Charset, ErrorSeverity, Message, OrderControl, ReplyCode};
use ehr_lab_sim::{LabCharset, LabSimConfig};

use crate::{iso_lab, lab, oml, order, send_order, send_text};

#[tokio::test]
async fn each_check_names_its_field() {
    let sim = iso_lab(None).await;
    let valid = oml(&order("C0"), "CHK0000", Charset::Iso2022Jp);
    // (what, from, to, expected MSA-1, expected problem locations)
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        ("sex outside table 0001", "|19700405|M", "|19700405|X", "AE", &["PID-8"]),
        ("birth date not YYYYMMDD", "|19700405|M", "|1970-04-05|M", "AE", &["PID-7"]),
        ("birth year only", "|19700405|M", "|1970|M", "AE", &["PID-7"]),
        ("kana name in hiragana", "ヤマダ^タロウ", "やまだ^たろう", "AE", &["PID-5(2)"]),
        ("repeated name without XPN-8", "山田^太郎^^^^^L^I", "山田^太郎", "AE", &["PID-5(1)"]),
        ("unknown name representation", "山田^太郎^^^^^L^I", "山田^太郎^^^^^L^X", "AE", &["PID-5(1)"]),
        ("no patient name", "|山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P|", "||", "AE", &["PID-5"]),
        ("order control XO", "ORC|NW|C0|", "ORC|XO|C0|", "AE", &["ORC-1", "ORC(2)-1"]),
        ("no placer order number", "ORC|NW|C0|", "ORC|NW||", "AE", &["ORC-2", "OBR-2", "ORC(2)-2", "OBR(2)-2"]),
        ("OBR-2 differs from ORC-2", "OBR|2|C0|", "OBR|2|C9|", "AE", &["OBR(2)-2"]),
        ("JLAC10 code too short", "3B035000002327201", "3B0350000023272", "AE", &["OBR(2)-4"]),
        ("JLAC10 code with letters in the tail", "3B035000002327201", "3B0350000023272AB", "AE", &["OBR(2)-4"]),
        ("specimen not JLAC10", "023^血清^JC10", "023^血清^99LAB", "AE", &["SPM-4"]),
        ("specimen code not 3 digits", "023^血清^JC10", "23^血清^JC10", "AE", &["SPM-4"]),
        ("no specimen type", "023^血清^JC10", "", "AE", &["SPM-4"]),
        ("collection time not DTM", "|20240401090000\r", "|2024-04-01\r", "AE", &["SPM-17"]),
        ("structure missing", "OML^O33^OML_O33", "OML^O33", "AE", &["MSH-9"]),
        ("message time missing", "|20240401093000+0900||", "|||", "AE", &["MSH-7"]),
        ("nothing changed", "|CHK", "|CHK", "AA", &[]),
        ("version 2.4", "|P|2.5|", "|P|2.4|", "AR", &["MSH-12"]),
        ("processing id Q", "|P|2.5|", "|Q|2.5|", "AR", &["MSH-11"]),
        ("MSH-20 missing", "|ISO 2022-1994", "|", "AE", &["MSH-20"]),
        (
            "no PID",
            "PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P||19700405|M\r",
            "",
            "AE",
            &["PID"],
        ),
    ];
    for (i, (what, from, to, ack, locations)) in cases.iter().enumerate() {
        assert!(valid.contains(from), "{what}: {from:?} not in the order");
        let id = format!("CHK{:04}", i + 1);
        let placer = format!("C{}", i + 1);
        let text = valid
            .replace(from, to)
            .replace("CHK0000", &id)
            .replace("|C0|", &format!("|{placer}|"))
            .replace("SC0|", &format!("S{placer}|"));
        let reply = send_text(sim.local_addr(), &text).await;
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.get("MSA-1").unwrap(), Some(*ack), "{what}: {reply}");
        let received = sim.received();
        let r = received.last().unwrap();
        let errors: Vec<_> =
            r.problems.iter().filter(|p| p.severity == ErrorSeverity::Error).map(|p| p.location.to_string()).collect();
        assert_eq!(errors, *locations, "{what}");
        assert_eq!(m.segments_named("ERR").count(), r.problems.len(), "{what}: one ERR per problem");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicates_and_cancels_need_the_labs_memory() {
    let sim = iso_lab(None).await;
    let first = oml(&order("M1"), "DUP0001", Charset::Iso2022Jp);
    assert_eq!(send_order(sim.local_addr(), &first).await.1.ack.code, ReplyCode::ApplicationAccept);

    // The same MSH-10 again (another placer number): AE 205 at MSH-10.
    let again = oml(&order("M2"), "DUP0001", Charset::Iso2022Jp);
    let (reply, orl) = send_order(sim.local_addr(), &again).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert_eq!(Message::parse(&reply).unwrap().get("ERR-2").unwrap(), Some("MSH^1^10"));
    assert_eq!(orl.ack.errors[0].code, "205");

    // A new message reusing an active placer order number: AE 205 at ORC-2.
    let reused = oml(&order("M1"), "DUP0002", Charset::Iso2022Jp);
    let (_, orl) = send_order(sim.local_addr(), &reused).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert_eq!(orl.ack.errors[0].location.as_ref().map(ToString::to_string).as_deref(), Some("ORC-2"));

    // Cancel M1 (results not sent yet): CR. Cancel an unknown order: AE 204 at ORC-2.
    let cancel = oml(&order("M1"), "DUP0003", Charset::Iso2022Jp).replace("ORC|NW|", "ORC|CA|");
    let (_, orl) = send_order(sim.local_addr(), &cancel).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationAccept);
    assert!(orl.orders().all(|o| o.control == OrderControl::CanceledAsRequested));
    assert!(matches!(sim.send_result_now("M1").await, Err(ehr_lab_sim::LabSimError::AlreadyResulted)));
    let unknown = oml(&order("M9"), "DUP0004", Charset::Iso2022Jp).replace("ORC|NW|", "ORC|CA|");
    let (_, orl) = send_order(sim.local_addr(), &unknown).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert_eq!(orl.ack.errors[0].code, "204");
    assert!(matches!(sim.send_result_now("M9").await, Err(ehr_lab_sim::LabSimError::UnknownOrder)));
    sim.shutdown().await;
}

#[tokio::test]
async fn retransmissions_can_be_answered_again_instead() {
    let sim = lab(LabSimConfig { reject_duplicate_control_ids: false, ..LabSimConfig::for_tests(None) }).await;
    let text = oml(&order("R1"), "RTX0001", Charset::Iso2022Jp);
    let first = send_text(sim.local_addr(), &text).await;
    let second = send_text(sim.local_addr(), &text).await;
    assert_eq!(first, second, "the same answer, not a second order");
    let received = sim.received();
    assert_eq!((received[0].retransmission, received[1].retransmission), (false, true));
    assert_eq!(received[1].ack_code, AckCode::Accept);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_agreed_character_set_and_receiver_are_enforced() {
    let sim = iso_lab(None).await;
    // A UTF-8 order to a lab set up for ISO IR87: MSH-18 and MSH-20 are both wrong. The answer
    // is in the order's own character set, so the sender can read it.
    let utf8 = oml(&order("U1"), "CS0001", Charset::Utf8);
    let (reply, orl) = send_order(sim.local_addr(), &utf8).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert_eq!(sim.received()[0].problem_locations(), ["MSH-18", "MSH-20"]);
    assert_eq!(Message::parse(&reply).unwrap().get("MSH-18").unwrap(), Some("UNICODE UTF-8"));

    // Switched to UTF-8, the same order (new id) passes, and an ISO one does not.
    sim.set_charset(LabCharset::Utf8);
    let utf8 = oml(&order("U2"), "CS0002", Charset::Utf8);
    assert_eq!(send_order(sim.local_addr(), &utf8).await.1.ack.code, ReplyCode::ApplicationAccept);
    let iso = oml(&order("U3"), "CS0003", Charset::Iso2022Jp);
    assert_eq!(send_order(sim.local_addr(), &iso).await.1.ack.code, ReplyCode::ApplicationError);
    sim.shutdown().await;

    let strict = lab(LabSimConfig { require_receiver_match: true, ..LabSimConfig::for_tests(None) }).await;
    let wrong = oml(&order("W1"), "RCV0001", Charset::Iso2022Jp).replace("|LABSYS|LABCO|", "|OTHER|LABCO|");
    let (_, orl) = send_order(strict.local_addr(), &wrong).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationError);
    assert_eq!(strict.received()[0].problem_locations(), ["MSH-5"]);
    let right = oml(&order("W2"), "RCV0002", Charset::Iso2022Jp);
    assert_eq!(send_order(strict.local_addr(), &right).await.1.ack.code, ReplyCode::ApplicationAccept);
    strict.shutdown().await;
}

#[tokio::test]
async fn a_test_on_another_material_is_a_warning_not_a_refusal() {
    let sim = iso_lab(None).await;
    let mut o = order("MAT1");
    // HbA1c is measured on whole blood (material 019), not on the serum of SPM-4.
    o.tests[1].jlac10 = "3D046000001906202".into();
    let (reply, orl) = send_order(sim.local_addr(), &oml(&o, "MAT0001", Charset::Iso2022Jp)).await;
    assert_eq!(orl.ack.code, ReplyCode::ApplicationAccept, "{reply}");
    assert_eq!(orl.ack.errors.len(), 1);
    assert_eq!(orl.ack.errors[0].severity.as_deref(), Some("W"));
    let r = &sim.received()[0];
    assert_eq!(r.problem_locations(), ["OBR(2)-4"]);
    assert!(!r.problems[0].is_error());
    sim.shutdown().await;
}
