//! Every HL7 v2 fixture parses and is written back byte-identical (after line ends become CR).

use std::path::{Path, PathBuf};

use ehr_hl7v2::{Message, charset};

/// CRLF and LF become CR, empty lines go, the last segment ends with CR: the wire form that
/// `Message`'s `Display` writes (HL7 v2.5 §2.5.1).
fn normalise(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split(|b| *b == b'\r' || *b == b'\n').filter(|l| !l.is_empty()) {
        out.extend_from_slice(line);
        out.push(b'\r');
    }
    out
}

/// Decodes, parses, writes back and re-encodes one message; returns a one-line summary.
fn round_trip(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let raw = std::fs::read(path).unwrap();
    let charset = charset::detect(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = charset::decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
    let message = Message::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = message.to_string();
    assert_eq!(written.as_bytes(), normalise(text.as_bytes()), "{name}: text differs");
    let wire = charset::encode(&written, charset).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&*wire, normalise(&raw), "{name}: bytes differ");
    let d = message.delimiters();
    format!(
        "{name}: {} {}, {} segments, delimiters {}{}, MSH-18 {:?} -> {}",
        message.message_type().unwrap(),
        message.version().unwrap_or("?"),
        message.segment_count(),
        d.field(),
        d.encoding_characters(),
        message.msh().field(18).raw(),
        charset.name(),
    )
}

fn hl7_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            hl7_files(&path, out);
        } else if looks_like_hl7(&path) {
            out.push(path);
        }
    }
}

/// A file is an HL7 v2 message when it starts with a header segment (a UTF-8 BOM allowed).
fn looks_like_hl7(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else { return false };
    let head = head[..n].strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&head[..n]);
    ["MSH", "FHS", "BHS"].iter().any(|h| head.starts_with(h.as_bytes()))
        && head.get(3).is_some_and(u8::is_ascii_punctuation)
}

#[test]
fn crate_fixtures_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files = Vec::new();
    hl7_files(&dir, &mut files);
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for path in files {
        println!("{}", round_trip(&path));
    }
}

/// The shared fixtures are JSON/FHIR today; any HL7 v2 file added there is checked too.
#[test]
fn shared_fixtures_round_trip_if_any() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    let mut files = Vec::new();
    hl7_files(&dir, &mut files);
    files.sort();
    println!("{} HL7 v2 fixture(s) under {}", files.len(), dir.display());
    for path in files {
        println!("{}", round_trip(&path));
    }
}

#[test]
fn ss_mix2_example_reads_as_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let raw = std::fs::read(dir.join("oul_r22_ssmix2_iso2022jp.hl7")).unwrap();
    let text = charset::decode(&raw).unwrap();
    let m = Message::parse(&text).unwrap();
    assert_eq!(m.get("PID-5(1)-1").unwrap(), Some("患者"));
    assert_eq!(m.get("PID-5(2)-2").unwrap(), Some("タロウ"));
    assert_eq!(m.get("PID-5(2)-8").unwrap(), Some("P"));
    assert_eq!(m.get("SPM-4-2").unwrap(), Some("血清"));
    assert_eq!(m.get("OBX(2)-3").unwrap(), Some("3A010000002327101^総蛋白^JC10"));
    // JIS X 0208 0x215D is U+FF0D in the WHATWG index, U+2212 in the JIS standard mapping.
    assert!(m.get("PID-11-8").unwrap().unwrap().ends_with("登呂１－３－５"));
    assert_eq!(m.get("ORC-29").unwrap(), Some("O^外来患者オーダ^HL70482"));
}

#[test]
fn escapes_in_the_ascii_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let raw = std::fs::read(dir.join("oru_r01_ascii_lf.hl7")).unwrap();
    let text = charset::decode(&raw).unwrap();
    let m = Message::parse(&text).unwrap();
    let obx2 = m.segments_named("OBX").nth(1).unwrap();
    assert_eq!(obx2.field(5).component(1).unescape(), "Hemolysis +; ratio 1^2 & retest");
    let obx3 = m.segments_named("OBX").nth(2).unwrap();
    assert_eq!(obx3.field(5).repetition(1).unescape(), "line1\nline2");
    assert_eq!(obx3.field(5).repetition(2).unescape(), "second repetition");
    let nte = m.field("NTE", 3).unwrap();
    assert_eq!(nte.component(1).subcomponent(1).unescape(), "field separator |, escape \\, hex AB, ids 12");
    assert_eq!(nte.component(1).subcomponent(2).raw(), "34");
}
