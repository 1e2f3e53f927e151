//! JSON paths of the extension table (`name[0]._given[1].extension[0]`) and setting values by path.

use serde_json::{Map, Value};

use super::layout::Step;

/// Largest array position accepted on import (positions pad arrays; this bounds the memory a
/// hostile file can make us allocate).
pub(super) const MAX_POSITION: usize = 1_000_000;

/// Whether a JSON property name can be written in a path (FHIR names and `_name` always can).
pub(super) fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `path` followed by property `key`.
pub(super) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// `path` followed by position `i`.
pub(super) fn join_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Parses a path: names separated by `.`, each followed by any number of `[n]`.
pub(super) fn parse(s: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for seg in s.split('.') {
        let (name, mut rest) = match seg.find('[') {
            Some(i) => seg.split_at(i),
            None => (seg, ""),
        };
        if !is_name(name) {
            return None;
        }
        steps.push(Step::Key(name.to_string()));
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let end = inner.find(']')?;
            let digits = inner.get(..end)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            steps.push(Step::Index(digits.parse().ok()?));
            rest = inner.get(end + 1..)?;
        }
    }
    Some(steps)
}

/// The container a step needs when nothing is there yet.
fn empty_for(step: &Step) -> Value {
    match step {
        Step::Key(_) => Value::Object(Map::new()),
        Step::Index(_) => Value::Array(Vec::new()),
    }
}

/// One step down from `v`, creating the container and padding arrays with nulls.
fn step_mut<'a>(v: &'a mut Value, step: &Step, next: Option<&Step>) -> Result<&'a mut Value, &'static str> {
    let fresh = next.map(empty_for).unwrap_or(Value::Null);
    match (v, step) {
        (Value::Object(m), Step::Key(k)) => {
            let slot = m.entry(k.clone()).or_insert(Value::Null);
            if slot.is_null() {
                *slot = fresh;
            }
            Ok(slot)
        }
        (Value::Array(a), Step::Index(i)) => {
            if *i > MAX_POSITION {
                return Err("position too large");
            }
            if a.len() <= *i {
                a.resize(*i + 1, Value::Null);
            }
            let slot = a.get_mut(*i).ok_or("position too large")?;
            if slot.is_null() {
                *slot = fresh;
            }
            Ok(slot)
        }
        _ => Err("conflicts with another value at the same place"),
    }
}

/// Sets `value` at `steps` below `root` (an object), creating what is missing.
pub(super) fn set(root: &mut Value, steps: &[Step], value: Value) -> Result<(), &'static str> {
    let mut cur = root;
    for (i, s) in steps.iter().enumerate() {
        cur = step_mut(cur, s, steps.get(i + 1))?;
    }
    *cur = value;
    Ok(())
}

/// Makes sure an object exists at `steps` (a row stands for an item even when all its cells are empty).
pub(super) fn ensure_object(root: &mut Value, steps: &[Step]) -> Result<(), &'static str> {
    let mut cur = root;
    for (i, s) in steps.iter().enumerate() {
        cur = step_mut(cur, s, steps.get(i + 1))?;
    }
    match cur {
        Value::Null => {
            *cur = Value::Object(Map::new());
            Ok(())
        }
        Value::Object(_) => Ok(()),
        _ => Err("conflicts with another value at the same place"),
    }
}

/// The value at `steps`, if there is one.
pub(super) fn get_mut<'a>(root: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    let mut cur = root;
    for s in steps {
        cur = match (cur, s) {
            (Value::Object(m), Step::Key(k)) => m.get_mut(k)?,
            (Value::Array(a), Step::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Removes the gaps an import leaves (array positions nothing was written to) and keeps the two
/// arrays of a repeating primitive (`given` / `_given`) aligned, as FHIR JSON requires.
pub(super) fn compact(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(compact),
        Value::Object(m) => {
            m.values_mut().for_each(compact);
            let keys: Vec<String> = m.keys().filter(|k| !k.starts_with('_')).cloned().collect();
            for k in keys {
                let ext_key = format!("_{k}");
                let paired =
                    matches!(m.get(&ext_key), Some(Value::Array(_))) && matches!(m.get(&k), Some(Value::Array(_)));
                if paired {
                    let mut vals = match m.remove(&k) {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    let mut exts = match m.remove(&ext_key) {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    let n = vals.len().max(exts.len());
                    vals.resize(n, Value::Null);
                    exts.resize(n, Value::Null);
                    let (vals, exts): (Vec<Value>, Vec<Value>) =
                        vals.into_iter().zip(exts).filter(|(a, b)| !(a.is_null() && b.is_null())).unzip();
                    m.insert(k.clone(), Value::Array(vals));
                    if exts.iter().any(|e| !e.is_null()) {
                        m.insert(ext_key, Value::Array(exts));
                    }
                } else if let Some(Value::Array(a)) = m.get_mut(&k) {
                    a.retain(|x| !x.is_null());
                }
            }
            // A `_given` whose `given` is absent: drop its gaps only.
            let ext_keys: Vec<String> = m.keys().filter(|k| k.starts_with('_')).cloned().collect();
            for ek in ext_keys {
                let base_present = ek.get(1..).is_some_and(|b| m.contains_key(b));
                if !base_present && let Some(Value::Array(a)) = m.get_mut(&ek) {
                    a.retain(|x| !x.is_null());
                }
            }
            m.retain(|_, x| !matches!(x, Value::Array(a) if a.is_empty()));
        }
        _ => {}
    }
}
