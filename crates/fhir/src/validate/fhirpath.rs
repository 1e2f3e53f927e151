//! A deliberately tiny FHIRPath evaluator for IG-authored invariants.
//!
//! Supports navigation (with choice types), `$this`, `%resource`, string/number/boolean
//! literals, `= != < > <= >= and or xor implies | & + in is as`, and the functions `where`,
//! `select`, `all`, `exists`, `empty`, `count`, `not`, `ofType`, `is`, `as`, `first`, `tail`,
//! `hasValue`, `contains`, `substring`, `indexOf`, `isDistinct`, `distinct`, `startsWith`,
//! `endsWith`, `length` and `matches`. Anything else makes the whole expression "not evaluable":
//! the caller then skips the invariant instead of guessing (the keys still skipped are listed in
//! `crates/fhir/profiles/README.md`).
//!
//! `matches(regex)` follows FHIRPath 2.0: a partial match (the IG patterns anchor themselves
//! with `^…$` where they mean the whole value), case-sensitive, single-line mode (`.` matches a
//! line break). Patterns are compiled with a bounded program size and cached; a pattern the
//! `regex` crate rejects or that is too large makes the expression not evaluable. In string
//! literals the FHIRPath escapes (`\' \" \` \\ \/ \f \n \r \t \uXXXX`) are decoded; any other
//! backslash sequence (`\^`, `\s`, `\-` in the IG regexes) is kept as written, for the regex.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Upper bound on a compiled pattern (bytes of the regex program / lazy DFA cache).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Cached patterns; the IG has a handful, so the bound only guards against computed patterns.
const REGEX_CACHE_MAX: usize = 256;

/// Compiles a pattern as `matches` reads it; `None` if it is invalid or exceeds the size limit.
pub(crate) fn compile_regex(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

/// Compiles (or fetches) a pattern computed at evaluation time; `None` if it is invalid or too
/// large. Literal patterns (all the IG's) are compiled once with their expression
/// ([`compile`]) and never come here; a read lock keeps concurrent validations from queuing.
fn regex(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<RwLock<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| RwLock::new(HashMap::new()));
    // A poisoned lock still holds a consistent map (entries are inserted whole).
    if let Some(hit) = cache.read().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return hit.clone();
    }
    let compiled = compile_regex(pattern);
    let mut map = cache.write().unwrap_or_else(|e| e.into_inner());
    if map.len() < REGEX_CACHE_MAX {
        map.insert(pattern.to_string(), compiled.clone());
    }
    compiled
}

/// Functions the evaluator implements (with any arity it accepts).
#[cfg(test)]
const FUNCTIONS: &[&str] = &[
    "where",
    "select",
    "all",
    "exists",
    "empty",
    "hasValue",
    "count",
    "not",
    "first",
    "tail",
    "ofType",
    "as",
    "is",
    "contains",
    "indexOf",
    "substring",
    "isDistinct",
    "distinct",
    "startsWith",
    "endsWith",
    "length",
    "matches",
];

/// Whether an expression is inside the subset (parses and calls only known functions). An
/// evaluable expression can still yield "no answer" for some inputs (an empty result).
#[cfg(test)]
pub(crate) fn is_supported(expr: &str) -> bool {
    fn walk(a: &Ast) -> bool {
        match a {
            Ast::This | Ast::Resource | Ast::Lit(_) | Ast::Pattern(..) => true,
            Ast::Member(on, _) => on.as_deref().is_none_or(walk),
            Ast::Call(on, f, args) => {
                FUNCTIONS.contains(&f.as_str()) && on.as_deref().is_none_or(walk) && args.iter().all(walk)
            }
            Ast::Bin(_, l, r) => walk(l) && walk(r),
            Ast::TypeOp(_, e, _) => walk(e),
        }
    }
    compile(expr).is_some_and(|e| walk(&e.0))
}

/// A parsed expression: parsed once, when the definitions load, with the regex of every
/// `matches('literal')` compiled with it (no lock, no cache on the evaluation path).
#[derive(Debug)]
pub(crate) struct Expr(Ast);

/// Parses an expression; `None` when it is outside the subset's syntax.
pub(crate) fn compile(expr: &str) -> Option<Expr> {
    let toks = tokenize(expr)?;
    let mut p = Parser { toks, pos: 0 };
    let mut ast = p.expr(0)?;
    if p.pos != p.toks.len() {
        return None;
    }
    precompile(&mut ast);
    Some(Expr(ast))
}

/// Replaces the literal argument of every `matches` by its compiled pattern.
fn precompile(a: &mut Ast) {
    match a {
        Ast::Call(on, f, args) => {
            if let Some(on) = on {
                precompile(on);
            }
            if f == "matches"
                && let [arg] = args.as_mut_slice()
                && let Ast::Lit(Value::String(p)) = arg
            {
                let p = std::mem::take(p);
                let re = compile_regex(&p);
                *arg = Ast::Pattern(p, re);
            }
            args.iter_mut().for_each(precompile);
        }
        Ast::Member(Some(on), _) => precompile(on),
        Ast::Bin(_, l, r) => {
            precompile(l);
            precompile(r);
        }
        Ast::TypeOp(_, e, _) => precompile(e),
        Ast::This | Ast::Resource | Ast::Lit(_) | Ast::Member(None, _) | Ast::Pattern(..) => {}
    }
}

impl Expr {
    /// Evaluates the expression as a boolean; `None` when the answer is not a single boolean or
    /// the expression uses something outside the subset.
    pub(crate) fn evaluate(&self, focus: &Value) -> Option<bool> {
        let cx = Ctx { resource: focus };
        let out = cx.eval(&self.0, &[Item { v: Cow::Borrowed(focus), ty: None }])?;
        match out.as_slice() {
            [] => None,
            [one] => one.v.as_bool(),
            _ => None,
        }
    }
}

/// Evaluates a boolean FHIRPath expression; `None` when the expression is outside the subset.
#[cfg(test)]
pub(crate) fn evaluate(expr: &str, focus: &Value) -> Option<bool> {
    compile(expr)?.evaluate(focus)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(String),
    LParen,
    RParen,
    Comma,
    Dot,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while let Some(&c) = cs.get(i) {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\u{3000}' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '.' => {
                out.push(Tok::Dot);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i)? {
                        '\'' => break,
                        '\\' => {
                            i += 1;
                            let e = *cs.get(i)?;
                            match e {
                                '\'' | '"' | '`' | '\\' | '/' => v.push(e),
                                'f' => v.push('\u{c}'),
                                'n' => v.push('\n'),
                                'r' => v.push('\r'),
                                't' => v.push('\t'),
                                'u' => {
                                    let hex: String = cs.get(i + 1..i + 5)?.iter().collect();
                                    v.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                                    i += 4;
                                }
                                // Not a FHIRPath escape: kept for the regex engine (`\^`, `\s`).
                                _ => {
                                    v.push('\\');
                                    v.push(e);
                                }
                            }
                        }
                        ch => v.push(*ch),
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Str(v));
            }
            '0'..='9' => {
                let st = i;
                while cs.get(i).is_some_and(|c| {
                    c.is_ascii_digit() || (*c == '.' && cs.get(i + 1).is_some_and(char::is_ascii_digit))
                }) {
                    i += 1;
                }
                out.push(Tok::Num(cs.get(st..i)?.iter().collect::<String>().parse().ok()?));
            }
            '<' | '>' | '!' | '=' => {
                let two: String = cs.get(i..i + 2).map(|x| x.iter().collect()).unwrap_or_default();
                if matches!(two.as_str(), "<=" | ">=" | "!=") {
                    out.push(Tok::Op(two));
                    i += 2;
                } else if c == '!' {
                    return None;
                } else {
                    out.push(Tok::Op(c.to_string()));
                    i += 1;
                }
            }
            '|' | '&' | '+' => {
                out.push(Tok::Op(c.to_string()));
                i += 1
            }
            c if c.is_alphabetic() || c == '_' || c == '$' || c == '%' => {
                let st = i;
                i += 1;
                while cs.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                    i += 1;
                }
                let w: String = cs.get(st..i)?.iter().collect();
                match w.as_str() {
                    "and" | "or" | "xor" | "implies" | "in" | "is" | "as" => out.push(Tok::Op(w)),
                    _ => out.push(Tok::Ident(w)),
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

#[derive(Debug)]
enum Ast {
    This,
    Resource,
    Lit(Value),
    /// Member access on the input (`a` or `x.a`).
    Member(Option<Box<Ast>>, String),
    Call(Option<Box<Ast>>, String, Vec<Ast>),
    Bin(String, Box<Ast>, Box<Ast>),
    /// `x is T` / `x as T`.
    TypeOp(String, Box<Ast>, String),
    /// The literal pattern of `matches`, compiled (`None`: invalid or too large).
    Pattern(String, Option<Regex>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

fn prec(op: &str) -> Option<u8> {
    Some(match op {
        "implies" => 1,
        "or" | "xor" => 2,
        "and" => 3,
        "in" => 4,
        "=" | "!=" => 5,
        "<" | ">" | "<=" | ">=" => 6,
        "|" => 7,
        "is" | "as" => 8,
        "+" | "&" => 9,
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expr(&mut self, min: u8) -> Option<Ast> {
        let mut lhs = self.postfix()?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            let p = prec(&op)?;
            if p < min {
                break;
            }
            self.pos += 1;
            if op == "is" || op == "as" {
                let Some(Tok::Ident(t)) = self.next() else { return None };
                lhs = Ast::TypeOp(op, Box::new(lhs), t);
                continue;
            }
            let rhs = self.expr(p + 1)?;
            lhs = Ast::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Some(lhs)
    }

    fn postfix(&mut self) -> Option<Ast> {
        let mut cur = self.term(None)?;
        while self.peek() == Some(&Tok::Dot) {
            self.pos += 1;
            cur = self.term(Some(cur))?;
        }
        Some(cur)
    }

    fn term(&mut self, on: Option<Ast>) -> Option<Ast> {
        let mut tok = self.next()?;
        // `x.is(T)` / `x.as(T)`: the operator keywords used as function names.
        if let Tok::Op(w) = &tok
            && on.is_some()
            && (w == "is" || w == "as")
            && self.peek() == Some(&Tok::LParen)
        {
            tok = Tok::Ident(w.clone());
        }
        match tok {
            Tok::LParen if on.is_none() => {
                let e = self.expr(0)?;
                (self.next()? == Tok::RParen).then_some(e)
            }
            Tok::Str(s) if on.is_none() => Some(Ast::Lit(Value::String(s))),
            Tok::Num(n) if on.is_none() => Some(Ast::Lit(serde_json::Number::from_f64(n).map(Value::Number)?)),
            Tok::Ident(w) => {
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    let mut args = Vec::new();
                    if self.peek() == Some(&Tok::RParen) {
                        self.pos += 1;
                    } else {
                        loop {
                            args.push(self.expr(0)?);
                            match self.next()? {
                                Tok::Comma => {}
                                Tok::RParen => break,
                                _ => return None,
                            }
                        }
                    }
                    return Some(Ast::Call(on.map(Box::new), w, args));
                }
                match (w.as_str(), &on) {
                    ("$this", None) => Some(Ast::This),
                    ("%resource", None) => Some(Ast::Resource),
                    ("true", None) => Some(Ast::Lit(Value::Bool(true))),
                    ("false", None) => Some(Ast::Lit(Value::Bool(false))),
                    (w, _) if w.starts_with(['$', '%']) => None,
                    _ => Some(Ast::Member(on.map(Box::new), w)),
                }
            }
            _ => None,
        }
    }
}

/// A collection item: borrowed from the resource (navigation never clones it) or computed.
#[derive(Debug, Clone)]
struct Item<'a> {
    v: Cow<'a, Value>,
    /// Type from a choice suffix or resourceType, when known.
    ty: Option<String>,
}

fn owned<'a>(v: Value) -> Item<'a> {
    Item { v: Cow::Owned(v), ty: None }
}

fn b<'a>(x: bool) -> Vec<Item<'a>> {
    vec![owned(Value::Bool(x))]
}

struct Ctx<'a> {
    resource: &'a Value,
}

fn type_of(i: &Item<'_>) -> Option<String> {
    if let Some(t) = &i.ty {
        return Some(t.clone());
    }
    i.v.get("resourceType").and_then(Value::as_str).map(str::to_string)
}

fn is_type(i: &Item<'_>, t: &str) -> bool {
    type_of(i).is_some_and(|x| x.eq_ignore_ascii_case(t))
}

fn single_bool(c: &[Item<'_>]) -> Option<Option<bool>> {
    match c {
        [] => Some(None),
        [one] => match one.v.as_ref() {
            Value::Bool(x) => Some(Some(*x)),
            // A non-boolean singleton is "true" in boolean context.
            _ => Some(Some(true)),
        },
        _ => None,
    }
}

fn single_str<'b>(c: &'b [Item<'_>]) -> Option<&'b str> {
    match c {
        [one] => one.v.as_str(),
        _ => None,
    }
}

/// The items of `c` without repeats (first occurrence kept). Strings (`bdl-7` on every
/// entry's fullUrl) go through a hash set, so a large Bundle costs linear time; other values
/// are compared pairwise with FHIRPath equality.
fn distinct<'a>(c: &[Item<'a>]) -> Vec<Item<'a>> {
    let mut strings: HashSet<&str> = HashSet::new();
    let mut out: Vec<Item<'a>> = Vec::new();
    for it in c {
        let fresh = match it.v.as_str() {
            Some(s) => strings.insert(s),
            None => !out.iter().any(|y| eq(&y.v, &it.v)),
        };
        if fresh {
            out.push(it.clone());
        }
    }
    out
}

fn eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl<'a> Ctx<'a> {
    fn eval(&self, ast: &Ast, input: &[Item<'a>]) -> Option<Vec<Item<'a>>> {
        match ast {
            Ast::This => Some(input.to_vec()),
            Ast::Resource => Some(vec![Item { v: Cow::Borrowed(self.resource), ty: None }]),
            Ast::Lit(v) => Some(vec![owned(v.clone())]),
            Ast::Pattern(p, _) => Some(vec![owned(Value::String(p.clone()))]),
            Ast::Member(on, name) => {
                let base = match on {
                    Some(o) => self.eval(o, input)?,
                    None => input.to_vec(),
                };
                let mut out = Vec::new();
                for it in &base {
                    // A leading type name (`Patient.name`) refers to the focus itself.
                    if on.is_none() && is_type(it, name) && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        out.push(it.clone());
                        continue;
                    }
                    // Only resource data has children, and it is always borrowed.
                    let Cow::Borrowed(Value::Object(o)) = it.v else { continue };
                    let mut push = |v: &'a Value, ty: Option<String>| match v {
                        Value::Array(a) => out.extend(a.iter().map(|x| Item { v: Cow::Borrowed(x), ty: ty.clone() })),
                        _ => out.push(Item { v: Cow::Borrowed(v), ty }),
                    };
                    if let Some(v) = o.get(name) {
                        push(v, None);
                    } else {
                        for (k, v) in o {
                            if let Some(suffix) = k.strip_prefix(name.as_str())
                                && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                            {
                                push(v, Some(suffix.to_string()));
                            }
                        }
                    }
                }
                Some(out)
            }
            Ast::TypeOp(op, e, t) => {
                let c = self.eval(e, input)?;
                if op == "is" {
                    Some(match c.as_slice() {
                        [] => vec![],
                        [one] => b(is_type(one, t)),
                        _ => return None,
                    })
                } else {
                    Some(c.into_iter().filter(|i| is_type(i, t)).collect())
                }
            }
            Ast::Bin(op, l, r) => self.bin(op, l, r, input),
            Ast::Call(on, f, args) => {
                let base = match on {
                    Some(o) => self.eval(o, input)?,
                    None => input.to_vec(),
                };
                self.call(f, &base, args)
            }
        }
    }

    fn bin(&self, op: &str, l: &Ast, r: &Ast, input: &[Item<'a>]) -> Option<Vec<Item<'a>>> {
        let lv = self.eval(l, input)?;
        let rv = self.eval(r, input)?;
        match op {
            "and" | "or" | "xor" | "implies" => {
                let (a, c) = (single_bool(&lv)?, single_bool(&rv)?);
                let res = match op {
                    "and" => match (a, c) {
                        (Some(false), _) | (_, Some(false)) => Some(false),
                        (Some(true), Some(true)) => Some(true),
                        _ => None,
                    },
                    "or" => match (a, c) {
                        (Some(true), _) | (_, Some(true)) => Some(true),
                        (Some(false), Some(false)) => Some(false),
                        _ => None,
                    },
                    "xor" => match (a, c) {
                        (Some(x), Some(y)) => Some(x != y),
                        _ => None,
                    },
                    _ => match (a, c) {
                        (Some(false), _) | (_, Some(true)) => Some(true),
                        (Some(true), Some(false)) => Some(false),
                        _ => None,
                    },
                };
                Some(res.map(b).unwrap_or_default())
            }
            "=" | "!=" => {
                if lv.is_empty() || rv.is_empty() {
                    return Some(vec![]);
                }
                let same = lv.len() == rv.len() && lv.iter().zip(&rv).all(|(a, c)| eq(&a.v, &c.v));
                Some(b(if op == "=" { same } else { !same }))
            }
            "<" | ">" | "<=" | ">=" => {
                let (a, c) = match (lv.as_slice(), rv.as_slice()) {
                    ([a], [c]) => (a.v.as_f64()?, c.v.as_f64()?),
                    ([], _) | (_, []) => return Some(vec![]),
                    _ => return None,
                };
                Some(b(match op {
                    "<" => a < c,
                    ">" => a > c,
                    "<=" => a <= c,
                    _ => a >= c,
                }))
            }
            "|" => {
                let mut out = lv;
                for x in rv {
                    if !out.iter().any(|y| eq(&y.v, &x.v)) {
                        out.push(x);
                    }
                }
                Some(out)
            }
            "in" => match lv.as_slice() {
                [] => Some(vec![]),
                [one] => Some(b(rv.iter().any(|x| eq(&x.v, &one.v)))),
                _ => None,
            },
            "+" => match (lv.as_slice(), rv.as_slice()) {
                ([a], [c]) => {
                    let n = serde_json::Number::from_f64(a.v.as_f64()? + c.v.as_f64()?)?;
                    Some(vec![owned(Value::Number(n))])
                }
                _ => Some(vec![]),
            },
            "&" => {
                let s = format!("{}{}", single_str(&lv).unwrap_or(""), single_str(&rv).unwrap_or(""));
                Some(vec![owned(Value::String(s))])
            }
            _ => None,
        }
    }

    fn call(&self, f: &str, base: &[Item<'a>], args: &[Ast]) -> Option<Vec<Item<'a>>> {
        let each = |it: &Item<'a>, e: &Ast| self.eval(e, std::slice::from_ref(it));
        match (f, args) {
            ("where", [e]) => {
                let mut out = Vec::new();
                for it in base {
                    if single_bool(&each(it, e)?)? == Some(true) {
                        out.push(it.clone());
                    }
                }
                Some(out)
            }
            ("select", [e]) => {
                let mut out = Vec::new();
                for it in base {
                    out.extend(each(it, e)?);
                }
                Some(out)
            }
            ("all", [e]) => {
                for it in base {
                    if single_bool(&each(it, e)?)? != Some(true) {
                        return Some(b(false));
                    }
                }
                Some(b(true))
            }
            ("exists", []) => Some(b(!base.is_empty())),
            ("exists", [e]) => Some(b(!self.call("where", base, std::slice::from_ref(e))?.is_empty())),
            ("empty", []) => Some(b(base.is_empty())),
            ("hasValue", []) => Some(b(matches!(base, [one] if !one.v.is_object() && !one.v.is_array()))),
            ("count", []) => Some(vec![owned(Value::from(base.len()))]),
            ("not", []) => Some(match single_bool(base)? {
                Some(x) => b(!x),
                None => vec![],
            }),
            ("isDistinct", []) => Some(b(distinct(base).len() == base.len())),
            ("distinct", []) => Some(distinct(base)),
            ("length", []) => {
                Some(single_str(base).map(|s| owned(Value::from(s.chars().count()))).into_iter().collect())
            }
            ("matches", [Ast::Pattern(_, re)]) => {
                let Some(s) = single_str(base) else { return Some(vec![]) };
                Some(b(re.as_ref()?.is_match(s)))
            }
            ("startsWith" | "endsWith" | "matches", [e]) => {
                let (Some(s), Some(arg)) = (single_str(base), single_str(&self.eval(e, base)?).map(str::to_string))
                else {
                    return Some(vec![]);
                };
                Some(b(match f {
                    "startsWith" => s.starts_with(&arg),
                    "endsWith" => s.ends_with(&arg),
                    _ => regex(&arg)?.is_match(s),
                }))
            }
            ("first", []) => Some(base.first().cloned().into_iter().collect()),
            ("tail", []) => Some(base.iter().skip(1).cloned().collect()),
            ("ofType" | "as", [Ast::Member(None, t)]) => Some(base.iter().filter(|i| is_type(i, t)).cloned().collect()),
            ("is", [Ast::Member(None, t)]) => Some(match base {
                [] => vec![],
                [one] => b(is_type(one, t)),
                _ => return None,
            }),
            ("contains", [e]) => {
                let (Some(s), Some(sub)) = (single_str(base), single_str(&self.eval(e, base)?).map(str::to_string))
                else {
                    return Some(vec![]);
                };
                Some(b(s.contains(&sub)))
            }
            ("indexOf", [e]) => {
                let (Some(s), Some(sub)) = (single_str(base), single_str(&self.eval(e, base)?).map(str::to_string))
                else {
                    return Some(vec![]);
                };
                let idx =
                    s.find(&sub).map(|bi| s.get(..bi).map(|p| p.chars().count() as i64).unwrap_or(-1)).unwrap_or(-1);
                Some(vec![owned(Value::from(idx))])
            }
            ("substring", [start, rest @ ..]) => {
                let Some(s) = single_str(base) else { return Some(vec![]) };
                let st = single_num(&self.eval(start, base)?)?;
                let len = match rest {
                    [l] => Some(single_num(&self.eval(l, base)?)?),
                    [] => None,
                    _ => return None,
                };
                let chars: Vec<char> = s.chars().collect();
                if st < 0 || st as usize >= chars.len() {
                    return Some(vec![]);
                }
                let end = len.map(|l| (st + l.max(0)) as usize).unwrap_or(chars.len()).min(chars.len());
                let sub: String = chars.get(st as usize..end).map(|c| c.iter().collect()).unwrap_or_default();
                Some(vec![owned(Value::String(sub))])
            }
            _ => None,
        }
    }
}

fn single_num(c: &[Item<'_>]) -> Option<i64> {
    match c {
        [one] => one.v.as_f64().map(|f| f as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset() {
        let r = json!({"resourceType": "MedicationRequest", "medicationCodeableConcept": {"coding": [{"system": "a"}, {"system": "b"}]}});
        assert_eq!(evaluate("medication.ofType(CodeableConcept).coding.where(system = 'a').count()=1", &r), Some(true));
        assert_eq!(
            evaluate("(medication.ofType(CodeableConcept).coding.where(system = 'c').count()=1) or false", &r),
            Some(false)
        );
        assert_eq!(evaluate("status.exists() implies status = 'x'", &r), Some(true));
        assert_eq!(evaluate("status.matches('x')", &r), None);
        assert_eq!(evaluate("'1318814790'.matches('^[0-4][0-9][1-3][0-9]{7}$')", &r), Some(true));
        assert_eq!(evaluate("'13188147901'.matches('^[0-4][0-9][1-3][0-9]{7}$')", &r), Some(false));
        // Partial match without anchors (FHIRPath 2.0).
        assert_eq!(evaluate("'x1318814790'.matches('[0-4][0-9][1-3][0-9]{7}')", &r), Some(true));
        // `\^` is not a FHIRPath escape and reaches the regex as written.
        assert_eq!(
            evaluate("'1318814790^2024^a-1'.matches('^[0-9]{10}[\\^]20[2-3][0-9][\\^][A-Za-z0-9\\-]{1,36}$')", &r),
            Some(true)
        );
        assert_eq!(evaluate("'a'.matches('(')", &r), None);
        assert_eq!(
            evaluate("('a' | 'b').isDistinct() and 'abc'.startsWith('ab') and 'abc'.length() = 3", &r),
            Some(true)
        );
        assert!(!is_supported("text.div.htmlChecks()"));
        assert_eq!(evaluate("$this.is(MedicationRequest) and medication.is(CodeableConcept)", &r), Some(true));
        assert!(is_supported("identifier.value.matches('x')"));
        assert_eq!(evaluate("'abc|d'.indexOf('|') > 0 and 'abc'.substring(0,2) = 'ab'", &r), Some(true));
    }

    /// Literal patterns are compiled with the expression; computed ones go through the cache.
    #[test]
    fn patterns_compiled_once() {
        let e = compile("identifier.value.matches('^[0-9]{10}$')").unwrap();
        let Ast::Call(_, f, args) = &e.0 else { panic!("{e:?}") };
        assert_eq!(f, "matches");
        assert!(matches!(args.as_slice(), [Ast::Pattern(_, Some(_))]), "{args:?}");
        let r = json!({"resourceType": "Patient", "identifier": [{"value": "1318814790"}]});
        assert_eq!(e.evaluate(&r), Some(true));
        assert_eq!(evaluate("'abc'.matches('^a' & 'bc$')", &r), Some(true));
        assert_eq!(evaluate("'abc'.matches('^b' & 'c$')", &r), Some(false));
        // An invalid literal pattern leaves the expression not evaluable, as before.
        assert_eq!(compile("'a'.matches('(')").unwrap().evaluate(&r), None);
    }

    /// `bdl-7` runs `isDistinct()` over every entry of a Bundle: strings hash, others compare.
    #[test]
    fn distinct_over_many_items() {
        let urls: Vec<Value> = (0..20_000).map(|i| json!({"fullUrl": format!("urn:uuid:{i}")})).collect();
        let mut b = json!({"resourceType": "Bundle", "entry": urls});
        assert_eq!(evaluate("entry.fullUrl.isDistinct()", &b), Some(true));
        b["entry"][19_999]["fullUrl"] = json!("urn:uuid:7");
        assert_eq!(evaluate("entry.fullUrl.isDistinct()", &b), Some(false));
        assert_eq!(evaluate("entry.fullUrl.distinct().count() = 19999", &b), Some(true));
        let n = json!({"resourceType": "Basic", "a": [1, 1.0, 2]});
        assert_eq!(evaluate("a.isDistinct()", &n), Some(false));
        assert_eq!(evaluate("a.distinct().count() = 2", &n), Some(true));
    }
}
