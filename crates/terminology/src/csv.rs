//! A small RFC 4180 reader for the master files: comma-separated, fields optionally in double
//! quotes (`""` inside quotes is one quote, quoted fields may span lines), CRLF, LF or CR line
//! ends. Blank lines are skipped. The text is already decoded (see `load::decode`).

/// One record and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

impl Record {
    /// Field `n` (1-based, as the specifications number columns), trimmed; empty when absent.
    pub fn col(&self, n: usize) -> &str {
        self.fields.get(n.wrapping_sub(1)).map(|f| f.trim()).unwrap_or("")
    }
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub reason: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a quote inside a quoted field: a second quote or the end of the field follows.
    QuoteInQuoted,
}

/// Parses the whole text.
pub fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    // Old DOS-era files end with SUB (0x1A).
    let text = text.trim_end_matches('\u{1a}');
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut state = State::FieldStart;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    // Whether the current record has any content (a blank line yields no record).
    let mut started = false;

    while let Some(c) = chars.next() {
        let newline = c == '\n' || c == '\r';
        if newline && c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
        }
        match (state, c) {
            (State::Quoted, _) if newline => {
                field.push('\n');
                line += 1;
            }
            (State::Quoted, '"') => state = State::QuoteInQuoted,
            (State::Quoted, _) => field.push(c),
            (State::QuoteInQuoted, '"') => {
                field.push('"');
                state = State::Quoted;
            }
            (_, ',') => {
                fields.push(std::mem::take(&mut field));
                state = State::FieldStart;
                started = true;
            }
            (_, _) if newline => {
                if started || !field.is_empty() || state == State::QuoteInQuoted {
                    fields.push(std::mem::take(&mut field));
                    records.push(Record { line: record_line, fields: std::mem::take(&mut fields) });
                }
                line += 1;
                record_line = line;
                state = State::FieldStart;
                started = false;
            }
            (State::QuoteInQuoted, _) => return Err(CsvError { line, reason: "text after a closing quote" }),
            (State::FieldStart, '"') => {
                state = State::Quoted;
                started = true;
            }
            (State::Unquoted, '"') => return Err(CsvError { line, reason: "a quote inside an unquoted field" }),
            (State::FieldStart | State::Unquoted, _) => {
                field.push(c);
                state = State::Unquoted;
                started = true;
            }
        }
    }
    match state {
        State::Quoted => return Err(CsvError { line: record_line, reason: "a quoted field is not closed" }),
        _ if started || !field.is_empty() => {
            fields.push(field);
            records.push(Record { line: record_line, fields });
        }
        _ => {}
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        parse(text).unwrap().into_iter().map(|r| r.fields).collect()
    }

    #[test]
    fn plain_and_quoted_fields() {
        assert_eq!(fields("a,b,c\n"), [["a", "b", "c"]]);
        assert_eq!(fields("\"a\",\"b,c\",\"d\"\"e\"\r\n1,,3"), [vec!["a", "b,c", "d\"e"], vec!["1", "", "3"]]);
        assert_eq!(fields("a,\n"), [["a", ""]]);
        assert_eq!(fields("\"\"\n"), [[""]]);
    }

    #[test]
    fn blank_lines_are_skipped_and_lines_counted() {
        let r = parse("\n\na,b\n\n\"x\ny\",z\nlast").unwrap();
        assert_eq!(r.iter().map(|r| r.line).collect::<Vec<_>>(), [3, 5, 7]);
        assert_eq!(r[1].fields, ["x\ny", "z"]);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(parse("a\n\"b\"c\n").unwrap_err(), CsvError { line: 2, reason: "text after a closing quote" });
        assert_eq!(parse("a\nb\"c\n").unwrap_err().line, 2);
        assert_eq!(parse("a\n\"open\n\n").unwrap_err(), CsvError { line: 2, reason: "a quoted field is not closed" });
    }

    #[test]
    fn columns_are_one_based_and_trimmed() {
        let r = &parse(" a ,b").unwrap()[0];
        assert_eq!((r.col(1), r.col(2), r.col(3), r.col(0)), ("a", "b", "", ""));
    }
}
