//! MLLP over a real async byte stream: a message framed, written in fragments, decoded,
//! answered with an ACK in the sender's character set.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Encoder, Framed, FramedRead};

use ehr_hl7v2::{
    AckBuilder, AckCode, AckError, ControlId, ErrorCode, Hl7Error, Location, Message, MllpCodec, Timestamp, charset,
};

const ORDER: &str = "MSH|^~\\&|HIS|HOSP|LAB|LABCO|20240401093000||OML^O33^OML_O33|MSG0001|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P\r";

#[tokio::test]
async fn fragmented_writes_with_noise_are_reassembled() {
    let (mut client, server) = tokio::io::duplex(64);
    let wire = charset::encode(ORDER, charset::Charset::Iso2022Jp).unwrap().into_owned();
    let mut buf = BytesMut::new();
    MllpCodec::new().encode(&wire[..], &mut buf).unwrap();
    let framed = buf.to_vec();
    let writer = tokio::spawn(async move {
        client.write_all(b"\r\nnoise").await.unwrap();
        for chunk in framed.chunks(7) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        client.write_all(&framed).await.unwrap();
    });
    let mut reader = FramedRead::new(server, MllpCodec::new());
    for _ in 0..2 {
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(frame, Bytes::from(wire.clone()));
        assert_eq!(charset::decode(&frame).unwrap(), ORDER);
    }
    writer.await.unwrap();
    assert!(reader.next().await.is_none(), "clean end of stream");
    assert_eq!(reader.decoder().discarded_bytes(), 7);
}

#[tokio::test]
async fn request_and_nak_round_trip() {
    let (client, server) = tokio::io::duplex(1024);
    let lab = tokio::spawn(async move {
        let mut framed = Framed::new(server, MllpCodec::new());
        let frame = framed.next().await.unwrap().unwrap();
        let charset = charset::detect(&frame).unwrap();
        let text = charset::decode(&frame).unwrap();
        let order = Message::parse(&text).unwrap();
        // The lab finds the specimen missing and answers AE naming the segment.
        let ack = AckBuilder::new(&order, AckCode::Error)
            .error(
                AckError::new(ErrorCode::SegmentSequenceError)
                    .at(Location::segment("SPM"))
                    .diagnostic("SPM が必要です"),
            )
            .build(&ControlId::new("LAB0001").unwrap(), &Timestamp::new("20240401093001").unwrap())
            .unwrap();
        framed.send(charset::encode(&ack, charset).unwrap().into_owned()).await.unwrap();
    });
    let mut framed = Framed::new(client, MllpCodec::new());
    framed.send(charset::encode(ORDER, charset::Charset::Iso2022Jp).unwrap().into_owned()).await.unwrap();
    let frame = framed.next().await.unwrap().unwrap();
    lab.await.unwrap();
    assert!(frame.windows(3).any(|w| w == b"\x1B$B"), "the ACK is in ISO-2022-JP too");
    let text = charset::decode(&frame).unwrap();
    let ack = Message::parse(&text).unwrap();
    assert_eq!(ack.get("MSA-1").unwrap(), Some("AE"));
    assert_eq!(ack.get("MSA-2").unwrap(), Some("MSG0001"));
    assert_eq!(ack.get("MSH-3").unwrap(), Some("LAB"));
    assert_eq!(ack.get("ERR-2").unwrap(), Some("SPM^1"));
    assert_eq!(ack.field("ERR", 7).unwrap().unescape(), "SPM が必要です");
}

#[tokio::test]
async fn truncated_stream_is_an_error() {
    let (mut client, server) = tokio::io::duplex(64);
    client.write_all(b"\x0BMSH|^~\\&|half").await.unwrap();
    drop(client);
    let mut reader = FramedRead::new(server, MllpCodec::new());
    assert!(matches!(reader.next().await, Some(Err(Hl7Error::TruncatedFrame))));
}
