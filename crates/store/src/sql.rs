//! Translation of a parsed [`SearchQuery`] into SQL that runs unchanged on SQLite and PostgreSQL.
//!
//! Every criterion becomes `r.id [NOT] IN (subquery over one index table)`; every subquery
//! carries the tenant predicate (`$1`) and the resource type, so the leading columns of the index
//! tables' indexes are always bound. Placeholders are `$n` in order of first use, which both
//! drivers accept.

use ehr_fhir::search::{
    Filter, Modifier, ParamKind, Prefix, SearchParamDef, SearchQuery, SearchValue, SortKey, SortParam,
    is_single_valued_date,
};
use sea_orm::Value;

/// SQL text with its bound values; `$1` is always the tenant.
pub(crate) struct Sql {
    pub text: String,
    pub values: Vec<Value>,
}

impl Sql {
    pub fn new(tenant: &str) -> Self {
        Self { text: String::new(), values: vec![tenant.into()] }
    }

    /// Binds a value and returns its placeholder.
    pub fn bind(&mut self, v: impl Into<Value>) -> String {
        self.values.push(v.into());
        format!("${}", self.values.len())
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
}

/// The index table and the value columns of a parameter kind.
pub(crate) fn table_of(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => "sp_token",
        ParamKind::String => "sp_string",
        ParamKind::Date => "sp_date",
        ParamKind::Reference => "sp_reference",
        ParamKind::Quantity => "sp_quantity",
        ParamKind::Number => "sp_number",
        ParamKind::Uri => "sp_uri",
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The smallest string greater than every string that starts with `prefix` (in code-point
/// order), or `None` when there is none (empty prefix, or only `char::MAX`).
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000; // skip the surrogate gap
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Appends the WHERE conditions of `query` (without the leading `WHERE`) for rows aliased `r`.
pub(crate) fn where_clause(sql: &mut Sql, query: &SearchQuery) {
    let ty = sql.bind(query.resource_type);
    sql.push(&format!("r.tenant_id = $1 AND r.resource_type = {ty} AND r.deleted = 0"));
    let (ranges, others) = split_date_ranges(query);
    for (def, values) in ranges {
        // Bounds of one single-valued date, ANDed on one index row: one range scan.
        sql.push(" AND ");
        let table_ty = sql.bind(query.resource_type);
        let param = sql.bind(def.name);
        let conds: Vec<String> = values
            .iter()
            .filter_map(|v| match v {
                SearchValue::Date { prefix, range } => {
                    Some(date_condition(sql, "low", "high", *prefix, range.low, range.high))
                }
                _ => None,
            })
            .collect();
        sql.push(&format!(
            "r.id IN (SELECT resource_id FROM sp_date WHERE tenant_id = $1 AND resource_type = {table_ty} \
             AND param = {param} AND {})",
            conds.join(" AND ")
        ));
    }
    for filter in others {
        sql.push(" AND ");
        top_level(sql, query.resource_type, filter);
    }
}

/// Separates repeated single-value criteria on one single-valued date parameter (to be matched
/// together) from the other filters.
#[allow(clippy::type_complexity)]
fn split_date_ranges(query: &SearchQuery) -> (Vec<(&'static SearchParamDef, Vec<&SearchValue>)>, Vec<&Filter>) {
    let mergeable = |f: &Filter| match f {
        Filter::Param { def, modifier: Modifier::None, values } => {
            values.len() == 1 && is_single_valued_date(query.resource_type, def)
        }
        _ => false,
    };
    let mut ranges: Vec<(&'static SearchParamDef, Vec<&SearchValue>)> = Vec::new();
    let mut others = Vec::new();
    for f in &query.filters {
        if let Filter::Param { def, values, .. } = f
            && mergeable(f)
            && query
                .filters
                .iter()
                .filter(|g| mergeable(g) && matches!(g, Filter::Param { def: d, .. } if d.name == def.name))
                .count()
                > 1
        {
            match ranges.iter_mut().find(|(d, _)| d.name == def.name) {
                Some((_, vs)) => vs.extend(values.iter()),
                None => ranges.push((def, values.iter().collect())),
            }
        } else {
            others.push(f);
        }
    }
    (ranges, others)
}

fn top_level(sql: &mut Sql, resource_type: &str, filter: &Filter) {
    match filter {
        Filter::Id(ids) => {
            let list: Vec<String> = ids.iter().map(|id| sql.bind(id.as_str())).collect();
            sql.push(&format!("r.id IN ({})", list.join(", ")));
        }
        Filter::LastUpdated(values) => {
            let conds: Vec<String> = values
                .iter()
                .map(|(p, range)| date_condition(sql, "r.last_updated", "r.last_updated", *p, range.low, range.high))
                .collect();
            sql.push(&format!("({})", conds.join(" OR ")));
        }
        _ => {
            let negated = matches!(filter, Filter::Param { modifier: Modifier::Not, .. })
                || matches!(filter, Filter::Param { values, .. } if values == &[SearchValue::Missing(true)]);
            let sub = subquery(sql, resource_type, filter);
            sql.push(&format!("r.id {}IN ({sub})", if negated { "NOT " } else { "" }));
        }
    }
}

/// A subquery selecting the ids of `resource_type` resources that match `filter` (for `:not`
/// and `:missing=true`, those that match the positive form; the caller negates).
fn subquery(sql: &mut Sql, resource_type: &str, filter: &Filter) -> String {
    match filter {
        Filter::Id(ids) => {
            let ty = sql.bind(resource_type);
            let list: Vec<String> = ids.iter().map(|id| sql.bind(id.as_str())).collect();
            format!(
                "SELECT id FROM resources WHERE tenant_id = $1 AND resource_type = {ty} AND deleted = 0 AND id IN ({})",
                list.join(", ")
            )
        }
        Filter::LastUpdated(values) => {
            let ty = sql.bind(resource_type);
            let conds: Vec<String> = values
                .iter()
                .map(|(p, r)| date_condition(sql, "last_updated", "last_updated", *p, r.low, r.high))
                .collect();
            format!(
                "SELECT id FROM resources WHERE tenant_id = $1 AND resource_type = {ty} AND deleted = 0 AND ({})",
                conds.join(" OR ")
            )
        }
        Filter::Param { def, modifier, values } => {
            let ty = sql.bind(resource_type);
            let param = sql.bind(def.name);
            let head = format!(
                "SELECT resource_id FROM {} WHERE tenant_id = $1 AND resource_type = {ty} AND param = {param}",
                table_of(def.kind)
            );
            if matches!(values.as_slice(), [SearchValue::Missing(_)]) {
                return head;
            }
            let conds: Vec<String> = values.iter().map(|v| value_condition(sql, def, modifier, v)).collect();
            format!("{head} AND ({})", conds.join(" OR "))
        }
        Filter::Chain { def, target_type, inner } => {
            let ty = sql.bind(resource_type);
            let param = sql.bind(def.name);
            let target = sql.bind(*target_type);
            let inner_sub = subquery(sql, target_type, inner);
            let negated = matches!(inner.as_ref(), Filter::Param { modifier: Modifier::Not, .. })
                || matches!(inner.as_ref(), Filter::Param { values, .. } if values == &[SearchValue::Missing(true)]);
            format!(
                "SELECT resource_id FROM sp_reference WHERE tenant_id = $1 AND resource_type = {ty} AND param = {param} \
                 AND target_type = {target} AND target_id {}IN ({inner_sub})",
                if negated { "NOT " } else { "" }
            )
        }
    }
}

/// The condition one alternative value puts on a row of the parameter's index table.
fn value_condition(sql: &mut Sql, def: &SearchParamDef, modifier: &Modifier, value: &SearchValue) -> String {
    match value {
        SearchValue::Token { system, code } => {
            let mut parts = Vec::new();
            match system {
                None => {}
                Some(None) => parts.push("system IS NULL".to_owned()),
                Some(Some(s)) => parts.push(format!("system = {}", sql.bind(s.as_str()))),
            }
            if let Some(c) = code {
                parts.push(format!("code = {}", sql.bind(c.as_str())));
            }
            if parts.is_empty() { "1 = 1".to_owned() } else { format!("({})", parts.join(" AND ")) }
        }
        SearchValue::String { normalized, exact } => match modifier {
            Modifier::Exact => format!("exact = {}", sql.bind(exact.as_str())),
            Modifier::Contains => {
                format!("normalized LIKE {} ESCAPE '\\'", sql.bind(format!("%{}%", like_escape(normalized))))
            }
            // A prefix match as a range, so that the index on `normalized` serves it on both
            // backends even with a generic prepared plan (where `LIKE $n` cannot use an index).
            _ => match successor(normalized) {
                Some(upper) => {
                    format!("(normalized >= {} AND normalized < {})", sql.bind(normalized.as_str()), sql.bind(upper))
                }
                None => format!("normalized >= {}", sql.bind(normalized.as_str())),
            },
        },
        SearchValue::Date { prefix, range } => date_condition(sql, "low", "high", *prefix, range.low, range.high),
        SearchValue::Reference { target_type, id } => {
            if id.contains("://") || id.starts_with("urn:") {
                return format!("url = {}", sql.bind(id.as_str()));
            }
            let target = match modifier {
                Modifier::Type(t) => Some((*t).to_owned()),
                _ => target_type.clone(),
            };
            let id_cond = format!("target_id = {}", sql.bind(id.as_str()));
            match target {
                Some(t) => format!("({id_cond} AND target_type = {})", sql.bind(t)),
                None => id_cond,
            }
        }
        SearchValue::Quantity { prefix, value, precision, system, code } => {
            let mut parts = vec![number_condition(sql, "value", *prefix, *value, *precision)];
            if let Some(s) = system {
                parts.push(format!("system = {}", sql.bind(s.as_str())));
            }
            if let Some(c) = code {
                parts.push(format!("code = {}", sql.bind(c.as_str())));
            }
            format!("({})", parts.join(" AND "))
        }
        SearchValue::Number { prefix, value, precision } => number_condition(sql, "value", *prefix, *value, *precision),
        SearchValue::Uri(uri) => match modifier {
            Modifier::Contains => format!("uri LIKE {} ESCAPE '\\'", sql.bind(format!("%{}%", like_escape(uri)))),
            _ => format!("uri = {}", sql.bind(uri.as_str())),
        },
        SearchValue::Missing(_) => {
            // Handled by the caller; kept total for safety.
            let _ = def;
            "1 = 1".to_owned()
        }
    }
}

/// Date comparison of a stored range `[low, high]` against a search range `[vlo, vhi]`
/// (R4 3.1.1.4.2; both ranges inclusive).
fn date_condition(sql: &mut Sql, low: &str, high: &str, prefix: Prefix, vlo: i64, vhi: i64) -> String {
    match prefix {
        Prefix::Eq => format!("({low} >= {} AND {high} <= {})", sql.bind(vlo), sql.bind(vhi)),
        Prefix::Ne => format!("NOT ({low} >= {} AND {high} <= {})", sql.bind(vlo), sql.bind(vhi)),
        Prefix::Gt => format!("{high} > {}", sql.bind(vhi)),
        Prefix::Lt => format!("{low} < {}", sql.bind(vlo)),
        Prefix::Ge => format!("{high} >= {}", sql.bind(vlo)),
        Prefix::Le => format!("{low} <= {}", sql.bind(vhi)),
        Prefix::Sa => format!("{low} > {}", sql.bind(vhi)),
        Prefix::Eb => format!("{high} < {}", sql.bind(vlo)),
        Prefix::Ap => format!("({low} <= {} AND {high} >= {})", sql.bind(vhi), sql.bind(vlo)),
    }
}

/// Number comparison honouring the implicit precision of the search value for `eq`/`ne`.
fn number_condition(sql: &mut Sql, col: &str, prefix: Prefix, value: f64, precision: f64) -> String {
    match prefix {
        Prefix::Eq | Prefix::Ne => {
            let lo = sql.bind(value - precision);
            let hi = sql.bind(value + precision);
            let c = format!("({col} >= {lo} AND {col} < {hi})");
            if prefix == Prefix::Ne { format!("NOT {c}") } else { c }
        }
        Prefix::Gt | Prefix::Sa => format!("{col} > {}", sql.bind(value)),
        Prefix::Lt | Prefix::Eb => format!("{col} < {}", sql.bind(value)),
        Prefix::Ge => format!("{col} >= {}", sql.bind(value)),
        Prefix::Le => format!("{col} <= {}", sql.bind(value)),
        Prefix::Ap => {
            let delta = (value * 0.1).abs();
            format!("({col} >= {} AND {col} <= {})", sql.bind(value - delta), sql.bind(value + delta))
        }
    }
}

/// The ORDER BY list; always ends with the id, so paging is stable.
pub(crate) fn order_by(sql: &mut Sql, query: &SearchQuery) -> String {
    let mut keys: Vec<String> = query.sort.iter().map(|k| sort_key(sql, query.resource_type, k)).collect();
    if query.sort.is_empty() {
        keys.push("r.last_updated ASC".to_owned());
    }
    keys.push("r.id ASC".to_owned());
    keys.join(", ")
}

fn sort_key(sql: &mut Sql, resource_type: &str, key: &SortKey) -> String {
    let dir = if key.descending { "DESC" } else { "ASC" };
    match key.param {
        SortParam::Id => format!("r.id {dir}"),
        SortParam::LastUpdated => format!("r.last_updated {dir}"),
        SortParam::Param(def) => {
            let column = match def.kind {
                ParamKind::String => "normalized",
                ParamKind::Date => "low",
                ParamKind::Token => "code",
                ParamKind::Quantity | ParamKind::Number => "value",
                ParamKind::Uri => "uri",
                ParamKind::Reference => "target_id",
            };
            let agg = if key.descending { "MAX" } else { "MIN" };
            let ty = sql.bind(resource_type);
            let param = sql.bind(def.name);
            format!(
                "(SELECT {agg}({column}) FROM {} s WHERE s.tenant_id = $1 AND s.resource_type = {ty} \
                 AND s.resource_id = r.id AND s.param = {param}) {dir} NULLS LAST",
                table_of(def.kind)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_fhir::search::parse_search;

    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(successor("yam").as_deref(), Some("yan"));
        assert_eq!(successor("やま").as_deref(), Some("やみ"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
    }

    #[test]
    fn every_subquery_is_tenant_scoped() {
        let pairs: Vec<(String, String)> = [
            ("name", "yamada"),
            ("birthdate", "ge1970"),
            ("gender:not", "male"),
            ("organization", "Organization/1"),
            ("address:missing", "true"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let q = parse_search("Patient", &pairs, true, |t| (t == "Organization").then_some("Organization"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sql = Sql::new("t1");
        where_clause(&mut sql, &q);
        assert_eq!(sql.text.matches("tenant_id = $1").count(), 6, "{}", sql.text);
        assert!(sql.text.contains("r.id NOT IN"));
        // Placeholders are numbered in order of first appearance (SQLite binds them that way).
        let mut last = 0;
        for part in sql.text.split('$').skip(1) {
            let n: usize = part.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0);
            assert!(n == 1 || n == last + 1 || n <= last, "placeholder ${n} after ${last}");
            last = last.max(n);
        }
    }
}
