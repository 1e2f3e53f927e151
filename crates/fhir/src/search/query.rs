//! Parsing of FHIR search requests (`GET [type]?…`, `POST [type]/_search`) into a typed query.
//!
//! Everything the store needs to build SQL is decided here: which parameters, modifiers,
//! prefixes and values; result parameters (`_sort`, `_count`, `_include`, …); and which
//! parameters were not understood (for `Prefer: handling=strict|lenient`).

use super::datetime::{DateRange, parse_date_range};
use super::extract::normalize_string;
use super::params::{ParamKind, SearchParamDef, find_param};
use crate::FhirError;

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;
/// The deepest page offset served (deeper paging is what `_lastUpdated` windows are for).
pub const MAX_OFFSET: usize = 1_000_000;
/// The most alternatives one parameter may list (each is a bound SQL value).
pub const MAX_VALUES: usize = 500;

/// A comparison prefix of a date, number or quantity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading prefix off a value; no prefix means `eq`.
    fn split(value: &str) -> (Prefix, &str) {
        let table = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (code, prefix) in table {
            if let Some(rest) = value.strip_prefix(code)
                && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

/// A parameter modifier (`:exact`, `:missing`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Missing,
    Not,
    /// `subject:Patient=123` — the reference must point to this type.
    Type(&'static str),
}

/// One alternative value of a parameter (values separated by `,` are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `system|code`; `system: Some(None)` is `|code` (no system), `None` is any system.
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    /// Normalised for the default and `:contains` matches, as given for `:exact`.
    String {
        normalized: String,
        exact: String,
    },
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    /// A reference by type and id, or by absolute URL.
    Reference {
        target_type: Option<String>,
        id: String,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        precision: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Number {
        prefix: Prefix,
        value: f64,
        precision: f64,
    },
    Uri(String),
    /// The value of `:missing` (`true`: the element must be absent).
    Missing(bool),
}

/// One search criterion; all criteria of a query are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id=a,b`.
    Id(Vec<String>),
    /// `_lastUpdated=ge2024-01-01`; each value is ANDed only if repeated as a separate parameter.
    LastUpdated(Vec<(Prefix, DateRange)>),
    /// An indexed parameter with its alternatives.
    Param { def: &'static SearchParamDef, modifier: Modifier, values: Vec<SearchValue> },
    /// `subject:Patient.identifier=x`: resources whose reference `def` points to a `target_type`
    /// resource that matches `inner`.
    Chain { def: &'static SearchParamDef, target_type: &'static str, inner: Box<Filter> },
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    /// `_id`, `_lastUpdated`, or an indexed parameter.
    pub param: SortParam,
    pub descending: bool,
}

/// What a sort key sorts by.
#[derive(Debug, Clone, PartialEq)]
pub enum SortParam {
    Id,
    LastUpdated,
    Param(&'static SearchParamDef),
}

/// `_include=Observation:subject[:Patient]` or the same in `_revinclude`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncludeSpec {
    pub source_type: &'static str,
    pub param: &'static SearchParamDef,
    pub target_type: Option<&'static str>,
    /// `_include:iterate` — also applied to the included resources.
    pub iterate: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Estimate,
    Accurate,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    False,
    Count,
    Text,
    Data,
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub resource_type: &'static str,
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    pub total: TotalMode,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub include: Vec<IncludeSpec>,
    pub revinclude: Vec<IncludeSpec>,
    /// Parameters (name as given) that were ignored because this server does not know them.
    pub ignored: Vec<String>,
    /// The parameters that were applied, normalised, for the `self` link.
    pub applied: Vec<(String, String)>,
}

/// Parses the query parameters of a search on `resource_type`.
///
/// With `strict`, an unknown parameter is an error; otherwise it is recorded in `ignored`.
/// Malformed values of known parameters are errors either way.
pub fn parse_search(
    resource_type: &'static str,
    pairs: &[(String, String)],
    strict: bool,
    type_of: impl Fn(&str) -> Option<&'static str>,
) -> Result<SearchQuery, FhirError> {
    let mut q = SearchQuery {
        resource_type,
        filters: Vec::new(),
        sort: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        total: TotalMode::Accurate,
        summary: Summary::False,
        elements: Vec::new(),
        include: Vec::new(),
        revinclude: Vec::new(),
        ignored: Vec::new(),
        applied: Vec::new(),
    };
    for (name, value) in pairs {
        // R4 3.1.1.5: a parameter with an empty value is ignored (also one of empty
        // alternatives only, `name=,`).
        if value.split(',').all(str::is_empty) {
            continue;
        }
        let applied = parse_pair(&mut q, name, value, &type_of)?;
        if applied {
            q.applied.push((name.clone(), value.clone()));
        } else if strict {
            return Err(FhirError::UnknownParameter(truncate(name)));
        } else {
            q.ignored.push(truncate(name));
        }
    }
    if q.summary == Summary::Count {
        // R4 3.1.1.5.8: only the count — no page to fetch, and the count itself is the answer.
        q.count = 0;
        q.total = TotalMode::Accurate;
    }
    Ok(q)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn invalid(param: &str, reason: impl Into<String>) -> FhirError {
    FhirError::InvalidSearchValue { param: truncate(param), reason: reason.into() }
}

/// Applies one `name=value` pair; `Ok(false)` when the parameter is unknown.
fn parse_pair(
    q: &mut SearchQuery,
    name: &str,
    value: &str,
    type_of: &impl Fn(&str) -> Option<&'static str>,
) -> Result<bool, FhirError> {
    match name {
        "_count" => {
            let n: usize = value.parse().map_err(|_| invalid(name, "expected a non-negative integer"))?;
            q.count = n.min(MAX_COUNT);
        }
        "_offset" => {
            q.offset = value
                .parse()
                .ok()
                .filter(|o| *o <= MAX_OFFSET)
                .ok_or_else(|| invalid(name, format!("expected an integer from 0 to {MAX_OFFSET}")))?
        }
        "_total" => {
            q.total = match value {
                "none" => TotalMode::None,
                "estimate" => TotalMode::Estimate,
                "accurate" => TotalMode::Accurate,
                _ => return Err(invalid(name, "expected none, estimate or accurate")),
            }
        }
        "_summary" => {
            q.summary = match value {
                "false" => Summary::False,
                "count" => Summary::Count,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "true" => return Err(FhirError::Unsupported("_summary=true is not supported; use _elements".into())),
                _ => return Err(invalid(name, "expected count, text, data or false")),
            }
        }
        "_elements" => q.elements.extend(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)),
        "_sort" => {
            for key in value.split(',').filter(|s| !s.is_empty()) {
                let (descending, pname) = match key.strip_prefix('-') {
                    Some(k) => (true, k),
                    None => (false, key),
                };
                let param = match pname {
                    "_id" => SortParam::Id,
                    "_lastUpdated" => SortParam::LastUpdated,
                    other => match find_param(q.resource_type, other) {
                        Some(def) if def.kind != ParamKind::Reference => SortParam::Param(def),
                        _ => return Err(invalid(name, format!("cannot sort by `{}`", truncate(other)))),
                    },
                };
                q.sort.push(SortKey { param, descending });
            }
        }
        "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
            let iterate = name.ends_with(":iterate");
            let mut parts = value.split(':');
            let (Some(src), Some(pname)) = (parts.next(), parts.next()) else {
                return Err(invalid(name, "expected SourceType:parameter[:TargetType]"));
            };
            let source_type =
                type_of(src).ok_or_else(|| invalid(name, format!("unknown resource type `{}`", truncate(src))))?;
            let param = find_param(source_type, pname).filter(|d| d.kind == ParamKind::Reference).ok_or_else(|| {
                invalid(name, format!("`{}` is not a reference parameter of {source_type}", truncate(pname)))
            })?;
            let target_type = match parts.next() {
                Some(t) => {
                    Some(type_of(t).ok_or_else(|| invalid(name, format!("unknown resource type `{}`", truncate(t))))?)
                }
                None => None,
            };
            let spec = IncludeSpec { source_type, param, target_type, iterate };
            if name.starts_with("_revinclude") {
                q.revinclude.push(spec);
            } else {
                if source_type != q.resource_type && !iterate {
                    return Err(invalid(name, "source type must be the searched type"));
                }
                q.include.push(spec);
            }
        }
        "_format" | "_pretty" => {}
        _ => match parse_filter(q.resource_type, name, value, type_of)? {
            Some(filter) => q.filters.push(filter),
            None => return Ok(false),
        },
    }
    Ok(true)
}

/// Parses one filter parameter (`name[:modifier][.chain]=value`); `None` if unknown.
fn parse_filter(
    resource_type: &str,
    name: &str,
    value: &str,
    type_of: &impl Fn(&str) -> Option<&'static str>,
) -> Result<Option<Filter>, FhirError> {
    // Chains: `subject:Patient.identifier` or `patient.name`.
    if let Some((head, rest)) = name.split_once('.') {
        let (pname, modifier) = split_modifier(head);
        let Some(def) = find_param(resource_type, pname).filter(|d| d.kind == ParamKind::Reference) else {
            return Ok(None);
        };
        let target_type = match modifier {
            Some(t) => type_of(t).ok_or_else(|| invalid(name, format!("unknown resource type `{}`", truncate(t))))?,
            None => match def.targets {
                [only] => type_of(only).ok_or_else(|| invalid(name, "chained target type is not served"))?,
                _ => {
                    return Err(invalid(
                        name,
                        "chain over a reference with several target types needs a type modifier",
                    ));
                }
            },
        };
        if rest.contains('.') {
            return Err(FhirError::Unsupported("chains deeper than one level are not supported".into()));
        }
        return match parse_filter(target_type, rest, value, type_of)? {
            Some(inner) => Ok(Some(Filter::Chain { def, target_type, inner: Box::new(inner) })),
            None => Err(invalid(name, format!("`{}` is not a search parameter of {target_type}", truncate(rest)))),
        };
    }
    let (pname, modifier_text) = split_modifier(name);
    match pname {
        "_id" => {
            if modifier_text.is_some() {
                return Err(invalid(name, "_id takes no modifier"));
            }
            let ids: Vec<String> = value.split(',').filter(|v| !v.is_empty()).map(str::to_owned).collect();
            if ids.len() > MAX_VALUES {
                return Err(invalid(name, format!("at most {MAX_VALUES} comma-separated values")));
            }
            return Ok((!ids.is_empty()).then_some(Filter::Id(ids)));
        }
        "_lastUpdated" => {
            if modifier_text.is_some() {
                return Err(invalid(name, "_lastUpdated takes no modifier"));
            }
            let mut out = Vec::new();
            for v in value.split(',') {
                let (prefix, rest) = Prefix::split(v);
                let range = parse_date_range(rest).ok_or_else(|| invalid(name, "expected a FHIR date or dateTime"))?;
                out.push((prefix, range));
            }
            return Ok(Some(Filter::LastUpdated(out)));
        }
        _ => {}
    }
    let Some(def) = find_param(resource_type, pname) else {
        return Ok(None);
    };
    let modifier = match modifier_text {
        None => Modifier::None,
        Some("missing") => Modifier::Missing,
        Some("exact") if def.kind == ParamKind::String => Modifier::Exact,
        Some("contains") if matches!(def.kind, ParamKind::String | ParamKind::Uri) => Modifier::Contains,
        Some("not") if def.kind == ParamKind::Token => Modifier::Not,
        Some(t) if def.kind == ParamKind::Reference => {
            Modifier::Type(type_of(t).ok_or_else(|| invalid(name, format!("unknown resource type `{}`", truncate(t))))?)
        }
        Some(m) => {
            return Err(FhirError::Unsupported(format!(
                "modifier `:{}` is not supported on {} parameter `{}`",
                truncate(m),
                def.kind.code(),
                def.name
            )));
        }
    };
    let mut values = Vec::new();
    if modifier == Modifier::Missing {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(invalid(name, "expected true or false")),
        };
        values.push(SearchValue::Missing(missing));
    } else {
        let alternatives = split_or(value);
        if alternatives.len() > MAX_VALUES {
            return Err(invalid(name, format!("at most {MAX_VALUES} comma-separated values")));
        }
        for v in alternatives.iter().filter(|v| !v.is_empty()) {
            values.push(parse_value(def, &modifier, v)?);
        }
        if values.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(Filter::Param { def, modifier, values }))
}

fn split_modifier(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (name, None),
    }
}

/// Splits on unescaped commas, keeping escapes (R4 3.1.1.4.7): `\,` `\|` `\$` `\\` are
/// removed only by [`unescape`], after any split on `|`, so that `a\\|b` stays "system `a\`,
/// code `b`" and `a\|b` stays the code `a|b`.
fn split_or(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        let Some(last) = out.last_mut() else { break };
        match c {
            '\\' => {
                last.push('\\');
                if let Some(n) = chars.next() {
                    last.push(n);
                }
            }
            ',' => out.push(String::new()),
            _ => last.push(c),
        }
    }
    out
}

/// Removes the search escapes `\,` `\|` `\$` `\\`; other backslashes stay.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some(',' | '|' | '$' | '\\')) {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits `system|code` on the first unescaped `|` and unescapes both parts.
fn split_pipe(raw: &str) -> Option<(String, String)> {
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '|' => return Some((unescape(&raw[..i]), unescape(&raw[i + 1..]))),
            _ => {}
        }
    }
    None
}

/// The half-width of the implied precision of a decimal literal (`100` → 0.5, `1.50` → 0.005).
fn precision_of(literal: &str) -> f64 {
    let decimals = literal.split_once('.').map_or(0, |(_, d)| d.len());
    0.5 * 10f64.powi(-(decimals as i32))
}

fn parse_value(def: &'static SearchParamDef, modifier: &Modifier, raw: &str) -> Result<SearchValue, FhirError> {
    let bad = |reason: &str| invalid(def.name, reason);
    Ok(match def.kind {
        ParamKind::Token => match split_pipe(raw) {
            Some((system, code)) => SearchValue::Token {
                system: Some(if system.is_empty() { None } else { Some(system) }),
                code: if code.is_empty() { None } else { Some(code) },
            },
            None => SearchValue::Token { system: None, code: Some(unescape(raw)) },
        },
        ParamKind::String => {
            let value = unescape(raw);
            SearchValue::String { normalized: normalize_string(&value), exact: value }
        }
        ParamKind::Date => {
            let (prefix, rest) = Prefix::split(raw);
            let range = parse_date_range(rest).ok_or_else(|| bad("expected a FHIR date or dateTime"))?;
            SearchValue::Date { prefix, range }
        }
        ParamKind::Reference => {
            let unescaped = unescape(raw);
            let raw = unescaped.as_str();
            let (target_type, id) = match super::extract::split_reference(raw) {
                Some((t, i)) if !raw.contains("://") => (Some(t.to_owned()), i.to_owned()),
                _ if raw.contains("://") || raw.starts_with("urn:") => (None, raw.to_owned()),
                _ => match modifier {
                    Modifier::Type(t) => (Some((*t).to_owned()), raw.to_owned()),
                    _ => match def.targets {
                        [only] => (Some((*only).to_owned()), raw.to_owned()),
                        _ => (None, raw.to_owned()),
                    },
                },
            };
            if id.is_empty() {
                return Err(bad("expected a reference"));
            }
            SearchValue::Reference { target_type, id }
        }
        ParamKind::Quantity => {
            let (prefix, rest) = Prefix::split(raw);
            let mut parts = rest.splitn(3, '|');
            let number = parts.next().unwrap_or_default();
            let value: f64 = number.parse().map_err(|_| bad("expected [prefix]number[|system|code]"))?;
            let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            let code = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            SearchValue::Quantity { prefix, value, precision: precision_of(number), system, code }
        }
        ParamKind::Number => {
            let (prefix, rest) = Prefix::split(raw);
            let value: f64 = rest.parse().map_err(|_| bad("expected [prefix]number"))?;
            SearchValue::Number { prefix, value, precision: precision_of(rest) }
        }
        ParamKind::Uri => SearchValue::Uri(unescape(raw)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Option<&'static str> {
        ["Patient", "Observation", "Encounter", "Organization"].into_iter().find(|t| *t == s)
    }

    fn parse(t: &'static str, q: &[(&str, &str)]) -> Result<SearchQuery, FhirError> {
        let pairs: Vec<_> = q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        parse_search(t, &pairs, true, ty)
    }

    #[test]
    fn tokens_with_and_without_system() {
        let q = parse("Patient", &[("identifier", "urn:x|1,|2,3,sys|")]).unwrap_or_else(|e| panic!("{e}"));
        let Filter::Param { values, .. } = &q.filters[0] else { panic!() };
        assert_eq!(values.len(), 4);
        assert_eq!(values[1], SearchValue::Token { system: Some(None), code: Some("2".into()) });
        assert_eq!(values[3], SearchValue::Token { system: Some(Some("sys".into())), code: None });
    }

    #[test]
    fn prefixes_and_precision() {
        let q = parse("Observation", &[("value-quantity", "gt5.40|http://unitsofmeasure.org|mg")])
            .unwrap_or_else(|e| panic!("{e}"));
        let Filter::Param { values, .. } = &q.filters[0] else { panic!() };
        let SearchValue::Quantity { prefix, value, precision, .. } = &values[0] else { panic!() };
        assert_eq!((*prefix, *value), (Prefix::Gt, 5.4));
        assert!((precision - 0.005).abs() < 1e-12);
    }

    #[test]
    fn chains_need_a_single_target_or_a_type() {
        assert!(parse("Observation", &[("subject:Patient.identifier", "x")]).is_ok());
        assert!(parse("Observation", &[("patient.identifier", "x")]).is_ok());
        assert!(parse("Observation", &[("subject.identifier", "x")]).is_err());
    }

    #[test]
    fn strict_rejects_unknown_and_lenient_records_it() {
        assert!(matches!(parse("Patient", &[("shoe-size", "1")]), Err(FhirError::UnknownParameter(_))));
        let pairs = vec![("shoe-size".to_string(), "1".to_string())];
        let q = parse_search("Patient", &pairs, false, ty).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.ignored, vec!["shoe-size".to_string()]);
    }

    #[test]
    fn unsupported_modifiers_are_errors() {
        assert!(matches!(parse("Patient", &[("gender:contains", "m")]), Err(FhirError::Unsupported(_))));
        assert!(matches!(parse("Patient", &[("birthdate", "someday")]), Err(FhirError::InvalidSearchValue { .. })));
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        let parts = split_or(r"a\,b,c");
        assert_eq!(parts.iter().map(|p| unescape(p)).collect::<Vec<_>>(), vec!["a,b".to_string(), "c".to_string()]);
        // An escaped backslash before the separator is a backslash at the end of the system.
        assert_eq!(split_pipe(r"a\\|b"), Some((r"a\".to_string(), "b".to_string())));
        assert_eq!(split_pipe(r"a\|b"), None);
        assert_eq!(unescape(r"a\|b"), "a|b");
        assert_eq!(unescape(r"C:\path"), r"C:\path", "other backslashes stay");
    }
}
