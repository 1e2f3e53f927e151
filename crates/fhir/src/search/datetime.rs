//! FHIR date, dateTime and instant values as instant ranges.
//!
//! A value covers every instant within its precision: `2024` is all of 2024, `2024-03-05T10:00Z`
//! the minute from 10:00:00.000 to 10:00:59.999. Ranges are epoch milliseconds with both ends
//! inclusive.
//!
//! Values without a time zone (dates like `birthDate`, and search values like `date=2024-01-10`)
//! are read in the server's time zone, which for a Japanese hospital is Japan Standard Time
//! (UTC+09:00, no daylight saving): `date=2024-01-10` then finds an Observation taken at
//! `2024-01-10T08:00:00+09:00`, as a user in Japan expects. See docs/fhir-api.md.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// The offset of values written without one: Japan Standard Time.
pub const LOCAL_OFFSET_SECS: i32 = 9 * 3600;

/// An inclusive range of epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

/// Parses a FHIR date, dateTime or instant into the range of instants it covers.
pub fn parse_date_range(s: &str) -> Option<DateRange> {
    let s = s.trim();
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut it = date_part.splitn(3, '-');
    let year: i32 = it.next().filter(|y| y.len() == 4)?.parse().ok()?;
    let month: Option<u32> = match it.next() {
        Some(m) if m.len() == 2 => Some(m.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    let day: Option<u32> = match it.next() {
        Some(d) if d.len() == 2 => Some(d.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    let Some(time) = time_part else {
        // Date-only precision: year, month or day.
        let start = NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1))?;
        let end = match (month, day) {
            (_, Some(_)) => start.succ_opt()?,
            (Some(_), None) => add_month(start)?,
            (None, None) => NaiveDate::from_ymd_opt(year + 1, 1, 1)?,
        };
        let local = FixedOffset::east_opt(LOCAL_OFFSET_SECS)?;
        return Some(range_of(start.and_time(NaiveTime::MIN), end.and_time(NaiveTime::MIN), local));
    };
    let date = NaiveDate::from_ymd_opt(year, month?, day?)?;
    // Split off the zone: `Z`, `+09:00`, `-05:00`, or none.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
        if h > 14 || m > 59 {
            return None; // offsets run from -12:00 to +14:00
        }
        (c, sign * (h * 3600 + m * 60))
    } else {
        (time, LOCAL_OFFSET_SECS)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, sec, step) = match parts.as_slice() {
        [h, m] => (h.parse().ok()?, m.parse().ok()?, 0, Duration::minutes(1)),
        [h, m, s] => (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?, Duration::seconds(1)),
        _ => return None,
    };
    let mut start = date.and_time(NaiveTime::from_hms_opt(h, m, sec)?);
    let mut step = step;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = frac.len().min(3);
        let millis: i64 = frac[..digits].parse().ok()?;
        let scale = 10_i64.pow(3 - digits as u32);
        start += Duration::milliseconds(millis * scale);
        step = Duration::milliseconds(scale);
    }
    let offset = FixedOffset::east_opt(offset_secs)?;
    Some(range_of(start, start + step, offset))
}

fn add_month(d: NaiveDate) -> Option<NaiveDate> {
    if d.month() == 12 {
        NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
    }
}

fn range_of<Tz: TimeZone>(start: NaiveDateTime, end_exclusive: NaiveDateTime, tz: Tz) -> DateRange {
    let to_ms = |n: NaiveDateTime| -> i64 {
        tz.from_local_datetime(&n).single().map_or(n.and_utc().timestamp_millis(), |d| d.timestamp_millis())
    };
    DateRange { low: to_ms(start), high: to_ms(end_exclusive) - 1 }
}

/// Formats epoch milliseconds as a FHIR instant (`2024-03-05T10:00:00.000Z`).
pub fn format_instant(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_decides_the_range() {
        let y = parse_date_range("2024").map(|r| (r.low, r.high));
        let d = parse_date_range("2024-01-01").map(|r| r.low);
        assert_eq!(y.map(|r| r.0), d);
        assert_eq!(parse_date_range("2024-02").map(|r| r.high - r.low + 1), Some(29 * 86_400_000));
        let minute = parse_date_range("2024-03-05T10:00+09:00");
        assert_eq!(minute.map(|r| r.high - r.low + 1), Some(60_000));
        assert_eq!(parse_date_range("2024-03-05T01:00:00Z").map(|r| r.low), minute.map(|r| r.low));
        assert_eq!(parse_date_range("2024-03-05T01:00:00.5Z").map(|r| r.high - r.low + 1), Some(100));
        // No zone: Japan Standard Time.
        assert_eq!(parse_date_range("1970-01-02").map(|r| r.low), Some(86_400_000 - 9 * 3_600_000));
        assert_eq!(parse_date_range("2024-03-05T10:00:00").map(|r| r.low), minute.map(|r| r.low));
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn malformed_dates_are_rejected() {
        for bad in [
            "24",
            "2024-1-01",
            "2024-13-01",
            "2024-02-30",
            "2024-01-01T25:00Z",
            "x",
            "2024-01-01T10:00+999999:00",
            "2024-01-01T10:00+15:00",
        ] {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }
}
