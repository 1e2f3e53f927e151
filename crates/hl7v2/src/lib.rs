//! HL7 v2.x for the outsourced-lab interface (JAHIS 臨床検査データ交換規約, based on HL7 v2.5).
//!
//! The generic layer the JAHIS message types (OML^O33, OUL^R22, ORU^R01…) are built on:
//!
//! - [`message`]: a zero-copy parsed view, [`Message`], with delimiters read from MSH-1/MSH-2;
//!   [`builder`]: [`MessageBuilder`]/[`SegmentBuilder`], which escape values as they write them;
//!   [`escape`]: the escape sequences of §2.7;
//! - [`charset`]: the wire character set from MSH-18 — ISO-2022-JP (`~ISO IR87`, JAHIS) or UTF-8;
//! - [`mllp`]: MLLP framing as a `tokio-util` codec; [`net`]: MLLP over TCP, a client that
//!   sends a message and reads its reply and a server that answers frames through a handler;
//! - [`ack`]: the ACK answering a message, with ERR segments; [`reply`]: reading MSA and ERR
//!   of the reply a peer sent back;
//! - [`types`]: control id, message type, timestamp and value locations, parsed once;
//! - [`jahis`]: the typed JAHIS lab messages: OML^O33 orders out, ORL^O34 answers,
//!   OUL^R22/ORU^R01 results in (and out, for the laboratory side).
//!
//! The receiving path is bytes → [`mllp::MllpCodec`] frame → [`charset::decode`] →
//! [`Message::parse`] → read fields; the sending path is [`MessageBuilder::build`] →
//! [`charset::encode`] → frame.

pub mod ack;
pub mod builder;
pub mod charset;
mod delimiters;
mod error;
pub mod escape;
pub mod jahis;
pub mod message;
pub mod mllp;
pub mod net;
pub mod reply;
pub mod types;

pub use ack::{AckBuilder, AckCode, AckError, ErrorCode, ErrorSeverity};
pub use builder::{MessageBuilder, SegmentBuilder};
pub use charset::Charset;
pub use delimiters::Delimiters;
pub use error::{Hl7Error, Result};
pub use jahis::{
    CodedElement, Coding, LabOrder, LabResults, LabTest, MessageHeader, Observation, OrderControl, OrderResponse,
    OrderResults, OrlBuilder, OrlReply, OrlResponse, Patient, PersonName, Provider, Sex, Specimen, SpecimenResponse,
    build_oml_o33, build_oru_r01, build_oul_r22, parse_lab_results, parse_orl_o34,
};
pub use message::{Component, Field, Message, Repetition, Segment, SubComponent};
pub use mllp::MllpCodec;
pub use net::{MllpClient, MllpConnection, MllpHandler, MllpServerOptions, MllpTimeouts, send_message, serve};
pub use reply::{AckReply, ReplyCode, ReplyError, parse_ack};
pub use types::{ControlId, Location, MessageType, Timestamp};
