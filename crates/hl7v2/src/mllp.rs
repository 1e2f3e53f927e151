//! MLLP framing (HL7 v2.5 Appendix C, "Minimal Lower Layer Protocol", Release 1):
//! `<VT> message <FS><CR>`, that is `0x0B … 0x1C 0x0D`, as a `tokio-util` codec.
//!
//! Frames carry bytes, not text: the character set is decided from MSH-18 by
//! [`crate::charset::decode`] after the frame is complete.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{Hl7Error, Result};

/// Start block, `<VT>`.
pub const START_BLOCK: u8 = 0x0B;
/// End block, `<FS>`.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// The default largest message accepted: 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// An MLLP codec: decodes frames into message bytes and encodes message bytes into frames.
///
/// Decoding is lenient where that is safe: bytes before a start block are skipped (a peer that
/// restarted mid-stream, keep-alive noise), a new start block inside a frame abandons the partial
/// frame and starts over, and the CR after the end block is not waited for (a peer that omits
/// it would otherwise never be answered). A frame larger than the maximum is an error, raised as
/// soon as the buffered part exceeds it, so a peer cannot make us buffer without bound.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_size: usize,
    state: State,
    discarded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for a start block; `skip_cr` when the previous frame's end block was the last
    /// byte seen, so its CR may still come.
    Seeking { skip_cr: bool },
    /// Inside a frame whose start block has been consumed; `scanned` bytes hold no end block.
    InFrame { scanned: usize },
}

impl Default for MllpCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl MllpCodec {
    /// A codec with the default maximum frame size (1 MiB).
    pub fn new() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec that refuses messages longer than `max_frame_size` bytes (framing excluded).
    pub fn with_max_frame_size(max_frame_size: usize) -> Self {
        Self { max_frame_size, state: State::Seeking { skip_cr: false }, discarded: 0 }
    }

    /// The largest message accepted, in bytes.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// How many bytes were skipped so far outside frames or in abandoned frames: worth a log line
    /// and a metric, as a healthy peer sends none.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    fn discard(&mut self, src: &mut BytesMut, n: usize) {
        src.advance(n);
        self.discarded += n as u64;
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = Hl7Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>> {
        loop {
            match self.state {
                State::Seeking { skip_cr } => {
                    if skip_cr && src.first() == Some(&CARRIAGE_RETURN) {
                        src.advance(1);
                    }
                    if src.is_empty() {
                        // Still waiting for the CR of the previous frame, if that was the case.
                        return Ok(None);
                    }
                    let Some(start) = src.iter().position(|b| *b == START_BLOCK) else {
                        let garbage = src.len();
                        self.discard(src, garbage);
                        self.state = State::Seeking { skip_cr: false };
                        return Ok(None);
                    };
                    self.discard(src, start);
                    src.advance(1);
                    self.state = State::InFrame { scanned: 0 };
                }
                State::InFrame { scanned } => {
                    let found = src[scanned..].iter().position(|b| *b == END_BLOCK || *b == START_BLOCK);
                    match found.map(|i| (scanned + i, src[scanned + i])) {
                        Some((end, END_BLOCK)) => {
                            if end > self.max_frame_size {
                                self.state = State::Seeking { skip_cr: false };
                                return Err(Hl7Error::FrameTooLarge { limit: self.max_frame_size });
                            }
                            let message = src.split_to(end).freeze();
                            src.advance(1);
                            self.state = State::Seeking { skip_cr: true };
                            return Ok(Some(message));
                        }
                        Some((restart, _)) => {
                            // A start block inside a frame: the sender gave up on the previous
                            // frame. Drop it and read the new one.
                            self.discard(src, restart);
                            self.state = State::Seeking { skip_cr: false };
                        }
                        None => {
                            if src.len() > self.max_frame_size {
                                self.state = State::Seeking { skip_cr: false };
                                return Err(Hl7Error::FrameTooLarge { limit: self.max_frame_size });
                            }
                            self.state = State::InFrame { scanned: src.len() };
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>> {
        if let Some(message) = self.decode(src)? {
            return Ok(Some(message));
        }
        match self.state {
            State::InFrame { .. } => {
                src.clear();
                self.state = State::Seeking { skip_cr: false };
                Err(Hl7Error::TruncatedFrame)
            }
            State::Seeking { .. } => Ok(None),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = Hl7Error;

    fn encode(&mut self, message: T, dst: &mut BytesMut) -> Result<()> {
        let message = message.as_ref();
        if message.len() > self.max_frame_size {
            return Err(Hl7Error::FrameTooLarge { limit: self.max_frame_size });
        }
        // The framing bytes cannot be escaped, so a message holding one cannot be sent.
        if let Some(offset) = message.iter().position(|b| *b == START_BLOCK || *b == END_BLOCK) {
            return Err(Hl7Error::FramingByteInPayload { offset });
        }
        dst.reserve(message.len() + 3);
        dst.put_u8(START_BLOCK);
        dst.put_slice(message);
        dst.put_u8(END_BLOCK);
        dst.put_u8(CARRIAGE_RETURN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        [&[START_BLOCK][..], message, &[END_BLOCK, CARRIAGE_RETURN]].concat()
    }

    fn decode_all(codec: &mut MllpCodec, chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(message) = codec.decode(&mut buf).unwrap() {
                out.push(message);
            }
        }
        out
    }

    #[test]
    fn encodes_a_frame() {
        let mut buf = BytesMut::new();
        MllpCodec::new().encode(&b"MSH|^~\\&\r"[..], &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x0BMSH|^~\\&\r\x1C\x0D");
    }

    #[test]
    fn decodes_back_to_back_frames_in_one_read() {
        let wire = [frame(b"MSH|1\r"), frame(b"MSH|2\r")].concat();
        let messages = decode_all(&mut MllpCodec::new(), &[&wire]);
        assert_eq!(messages, [&b"MSH|1\r"[..], &b"MSH|2\r"[..]]);
    }

    #[test]
    fn decodes_across_every_split_point() {
        let wire = [frame(b"MSH|^~\\&|first\r"), frame(b"MSH|^~\\&|second\r")].concat();
        for split in 0..=wire.len() {
            let mut codec = MllpCodec::new();
            let (a, b) = wire.split_at(split);
            let messages = decode_all(&mut codec, &[a, b]);
            assert_eq!(messages, [&b"MSH|^~\\&|first\r"[..], &b"MSH|^~\\&|second\r"[..]], "split at {split}");
            assert_eq!(codec.discarded_bytes(), 0, "split at {split}");
        }
        // One byte at a time.
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&mut MllpCodec::new(), &chunks).len(), 2);
    }

    #[test]
    fn resynchronises_on_garbage() {
        let mut codec = MllpCodec::new();
        let wire = [&b"noise\r\n"[..], &frame(b"MSH|1\r"), b"\x00junk", &frame(b"MSH|2\r")].concat();
        let messages = decode_all(&mut codec, &[&wire]);
        assert_eq!(messages, [&b"MSH|1\r"[..], &b"MSH|2\r"[..]]);
        assert_eq!(codec.discarded_bytes(), 7 + 5);
    }

    #[test]
    fn a_new_start_block_abandons_the_partial_frame() {
        let mut codec = MllpCodec::new();
        let wire = [&b"\x0BMSH|half"[..], &frame(b"MSH|whole\r")].concat();
        assert_eq!(decode_all(&mut codec, &[&wire[..6], &wire[6..]]), [&b"MSH|whole\r"[..]]);
        assert_eq!(codec.discarded_bytes(), 8);
    }

    #[test]
    fn end_block_without_cr_is_accepted() {
        let wire = b"\x0BMSH|1\r\x1C\x0BMSH|2\r\x1C";
        assert_eq!(decode_all(&mut MllpCodec::new(), &[wire]).len(), 2);
    }

    #[test]
    fn oversized_frames_are_refused_before_they_are_complete() {
        let mut codec = MllpCodec::with_max_frame_size(8);
        let mut buf = BytesMut::from(&b"\x0B123456789"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(Hl7Error::FrameTooLarge { limit: 8 })));
        let mut codec = MllpCodec::with_max_frame_size(8);
        let mut buf = BytesMut::from(&frame(b"123456789")[..]);
        assert!(matches!(codec.decode(&mut buf), Err(Hl7Error::FrameTooLarge { limit: 8 })));
        let mut codec = MllpCodec::with_max_frame_size(8);
        assert_eq!(decode_all(&mut codec, &[&frame(b"12345678")]).len(), 1);
        assert!(matches!(codec.encode(&b"123456789"[..], &mut BytesMut::new()), Err(Hl7Error::FrameTooLarge { .. })));
    }

    #[test]
    fn framing_bytes_cannot_be_sent() {
        let err = MllpCodec::new().encode(&b"MSH|\x1C"[..], &mut BytesMut::new()).unwrap_err();
        assert!(matches!(err, Hl7Error::FramingByteInPayload { offset: 4 }));
    }

    #[test]
    fn eof_inside_a_frame_is_an_error_and_garbage_is_not() {
        let mut codec = MllpCodec::new();
        let mut buf = BytesMut::from(&b"\x0BMSH|partial"[..]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(Hl7Error::TruncatedFrame)));
        let mut buf = BytesMut::from(&b"trailing noise"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::from(&frame(b"MSH|1\r")[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }
}
