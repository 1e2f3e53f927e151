#!/usr/bin/env python3
"""Produce the minified definition bundles embedded by crates/fhir/src/validate.

Usage: python3 minify.py <jp-core.r4-1.1.2.tgz> <jp-clins.r4-1.5.2-snap.tgz>

Writes jp-core.json and jp-clins.json next to this script. Each holds:
  {"package": "<name>#<version>",
   "structureDefinitions": [ {url, version, name, type, kind, baseDefinition, snapshot: bool,
                              element: [ {id, path, sliceName?, min?, max?, base?: {path,min,max},
                                          type?: [{code, profile?}], contentReference?,
                                          fixed?, pattern?, binding?: valueSetUrl (required only),
                                          slicing?: {discriminator: [{type, path}], rules},
                                          constraint?: [{key, severity, expression}] (IG-authored only)} ] } ],
   "valueSets": {url: {system: [code, ...]}}}   (required-binding value sets, pre-expanded)

fixed[x]/pattern[x] are renamed to plain "fixed"/"pattern" (the type is the element's type).
Elements come from the snapshot when there is one, else from the differential.
Narrative, mappings, descriptions, comments, definitions, examples, constraints inherited from
the FHIR core spec and every other field not used for validation are dropped.
Value sets are expanded here (not at run time) from compose.include: explicit concept lists,
whole code systems present in the two packages with content=complete (LOINC/SNOMED excluded:
the packages only carry fragments of those), and valueSet imports. A value set with a filter, or
that references a code system not in the packages, is left out; the validator then skips that
binding silently.
"""
import io
import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXTERNAL = ("http://loinc.org", "http://snomed.info")


def load(tgz):
    out = {}
    with tarfile.open(tgz) as t:
        for m in t.getmembers():
            if m.isfile() and m.name.endswith(".json"):
                name = os.path.basename(m.name)
                try:
                    out[name] = json.load(io.TextIOWrapper(t.extractfile(m), encoding="utf-8"))
                except ValueError:
                    pass
    return out


def strip_version(url):
    return url.split("|")[0] if url else url


def min_element(e):
    o = {"id": e.get("id", e["path"]), "path": e["path"]}
    for k in ("sliceName", "min", "max", "contentReference"):
        if k in e:
            o[k] = e[k]
    if "base" in e:
        o["base"] = {k: e["base"][k] for k in ("path", "min", "max") if k in e["base"]}
    if "type" in e:
        ts = []
        for t in e["type"]:
            tt = {"code": t["code"]}
            if t.get("profile"):
                tt["profile"] = t["profile"]
            ts.append(tt)
        o["type"] = ts
    for k, v in e.items():
        if k.startswith("fixed"):
            o["fixed"] = v
        elif k.startswith("pattern"):
            o["pattern"] = v
    b = e.get("binding")
    if b and b.get("strength") == "required" and b.get("valueSet"):
        o["binding"] = strip_version(b["valueSet"])
    s = e.get("slicing")
    if s:
        o["slicing"] = {"discriminator": s.get("discriminator", []), "rules": s.get("rules", "open")}
    cs = [
        {"key": c["key"], "severity": c.get("severity", "error"), "expression": c["expression"]}
        for c in e.get("constraint", [])
        if c.get("expression") and "hl7.org/fhir/StructureDefinition" not in c.get("source", "")
        and not c["key"].startswith(("ele-", "dom-", "ext-", "obs-", "pat-", "per-", "ref-"))
    ]
    if cs:
        o["constraint"] = cs
    return o


def concepts(cs):
    out = []

    def walk(lst):
        for c in lst:
            out.append(c["code"])
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    return out


def expand(vs, vss, css, depth=0):
    """{system: set(codes)} or None if not expandable from the packages."""
    if depth > 5:
        return None
    res = {}
    compose = vs.get("compose", {})
    for inc in compose.get("include", []):
        if inc.get("filter"):
            return None
        part = {}
        system = inc.get("system")
        if inc.get("concept"):
            part = {system: {c["code"] for c in inc["concept"]}}
        elif system:
            cs = css.get(system)
            if system.startswith(EXTERNAL) or not cs or cs.get("content") != "complete":
                return None
            codes = concepts(cs)
            if not codes:
                return None
            part = {system: set(codes)}
        for imp in inc.get("valueSet", []):
            sub = vss.get(strip_version(imp))
            e = expand(sub, vss, css, depth + 1) if sub else None
            if e is None:
                return None
            for s, c in e.items():
                part.setdefault(s, set()).update(c)
        for s, c in part.items():
            res.setdefault(s, set()).update(c)
    for exc in compose.get("exclude", []):
        if exc.get("filter") or not exc.get("concept"):
            return None
        for c in exc["concept"]:
            res.get(exc.get("system"), set()).discard(c["code"])
    return res or None


def main():
    pkgs = [("jp-core", load(sys.argv[1])), ("jp-clins", load(sys.argv[2]))]
    vss, css = {}, {}
    for _, files in pkgs:
        for f in files.values():
            if f.get("resourceType") == "ValueSet" and f.get("url"):
                vss[f["url"]] = f
            elif f.get("resourceType") == "CodeSystem" and f.get("url"):
                css.setdefault(f["url"], f)
    sources = {}
    for short, files in pkgs:
        meta = files.get("package.json", {})
        sds, needed = [], set()
        for fname in sorted(files):
            f = files[fname]
            if f.get("resourceType") != "StructureDefinition":
                continue
            snap = "snapshot" in f
            elems = (f["snapshot"] if snap else f.get("differential", {})).get("element", [])
            m = [min_element(e) for e in elems]
            needed.update(e["binding"] for e in m if "binding" in e)
            sds.append({
                "url": f["url"], "version": f.get("version"), "name": f.get("name"),
                "type": f.get("type"), "kind": f.get("kind"),
                "baseDefinition": f.get("baseDefinition"), "snapshot": snap, "element": m,
                "file": fname,
            })
        out_vs = {}
        for url in sorted(needed):
            vs = vss.get(url)
            if vs is None:
                continue
            e = expand(vs, vss, css)
            if e:
                out_vs[url] = {s: sorted(c) for s, c in e.items()}
        doc = {"package": "%s#%s" % (meta.get("name"), meta.get("version")),
               "structureDefinitions": sds, "valueSets": out_vs}
        with open(os.path.join(HERE, short + ".json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, separators=(",", ":"))
        sources[short] = [(s["file"], s["url"]) for s in sds] + [("ValueSet " + u, "") for u in out_vs]
    for short, lst in sources.items():
        print(short, len(lst))


if __name__ == "__main__":
    main()
