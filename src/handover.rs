//! `ehr export` and `ehr import`: data hand-over from a terminal (standard-spec requirement ④).
//!
//! Both speak the public HTTP API only, as any client would: `export` kicks off a FHIR Bulk Data
//! `$export`, follows its status (`X-Progress`, `Retry-After`) with a progress bar, and downloads
//! the manifest's files; `import` posts files to `$import` — each file (or each resource type's
//! set of CSV tables) in its own all-or-nothing request, or all of them in one with `--atomic` —
//! and prints the server's report. The token comes from `EHR_TOKEN`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `ehr export` asks for.
pub struct ExportArgs {
    pub url: String,
    pub out: PathBuf,
    pub format: String,
    pub types: Option<String>,
    pub since: Option<String>,
    pub type_filters: Vec<String>,
    pub patient: bool,
    pub group: Option<String>,
    pub bom: bool,
}

fn token() -> Result<String, String> {
    std::env::var("EHR_TOKEN").map_err(|_| "set EHR_TOKEN to an access token (see `ehr login`)".to_owned())
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().map_err(|e| format!("HTTP client: {e}"))
}

/// The `_outputFormat` of a `--format` name.
fn output_format(name: &str) -> Result<&'static str, String> {
    Ok(match name {
        "ndjson" => "application/fhir+ndjson",
        "bundle-json" | "json" => "application/fhir+json",
        "bundle-xml" | "xml" => "application/fhir+xml",
        "csv" => "text/csv",
        other => return Err(format!("--format {other}: expected ndjson, bundle-json, bundle-xml or csv")),
    })
}

/// Why the server refused, from an OperationOutcome (or the status alone).
async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let why: Vec<String> = body["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
                .map(|i| {
                    let at = i["expression"][0].as_str().map(|e| format!("{e}: ")).unwrap_or_default();
                    format!("{at}{}", i["diagnostics"].as_str().unwrap_or("(no details)"))
                })
                .collect()
        })
        .unwrap_or_default();
    if why.is_empty() { format!("{status}") } else { format!("{status}: {}", why.join("; ")) }
}

/// A one-line progress display on standard error: redrawn in place on a terminal, a line every
/// few seconds otherwise (logs of a batch job).
struct Progress {
    tty: bool,
    last: Instant,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self { tty: std::io::stderr().is_terminal(), last: Instant::now() - Duration::from_secs(60), drawn: false }
    }

    /// `fraction` in 0..=1 when known.
    fn show(&mut self, fraction: Option<f64>, text: &str) {
        let bar = match fraction {
            Some(f) => {
                let f = f.clamp(0.0, 1.0);
                let filled = (f * 30.0).round() as usize;
                format!("[{}{}] {:>3.0}% ", "#".repeat(filled), "-".repeat(30 - filled), f * 100.0)
            }
            None => String::new(),
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{bar}{text}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(err, "{bar}{text}");
            self.last = Instant::now();
        }
    }

    fn done(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// The first `n/m` pair in an `X-Progress` text, as a fraction.
fn fraction_of(progress: &str) -> Option<f64> {
    progress.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')').find_map(|word| {
        let (a, b) = word.split_once('/')?;
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        (b > 0.0).then(|| a / b)
    })
}

/// `ehr export`: kick-off, status with a progress bar, download of every file.
pub async fn export(args: ExportArgs) -> Result<(), String> {
    let token = token()?;
    let http = client()?;
    let base = format!("{}/fhir", args.url.trim_end_matches('/'));
    let path = match (&args.group, args.patient) {
        (Some(_), true) => return Err("--patient and --group exclude each other".into()),
        (Some(g), false) => format!("{base}/Group/{g}/$export"),
        (None, true) => format!("{base}/Patient/$export"),
        (None, false) => format!("{base}/$export"),
    };
    let mut query = vec![("_outputFormat".to_owned(), output_format(&args.format)?.to_owned())];
    if let Some(t) = &args.types {
        query.push(("_type".into(), t.clone()));
    }
    if let Some(s) = &args.since {
        query.push(("_since".into(), s.clone()));
    }
    for f in &args.type_filters {
        query.push(("_typeFilter".into(), f.clone()));
    }
    if args.bom {
        query.push(("_bom".into(), "true".into()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;

    let resp = http
        .get(&path)
        .query(&query)
        .bearer_auth(&token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.url))?;
    if resp.status() != reqwest::StatusCode::ACCEPTED {
        return Err(format!("export refused: {}", refusal(resp).await));
    }
    let status_url = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or("the server answered 202 without Content-Location")?
        .to_owned();
    eprintln!("export job: {status_url}");

    let mut progress = Progress::new();
    let manifest = loop {
        let resp = http
            .get(&status_url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("status of the export job: {e}"))?;
        match resp.status().as_u16() {
            202 => {
                let text = resp.headers().get("x-progress").and_then(|v| v.to_str().ok()).unwrap_or("in progress");
                progress.show(fraction_of(text), text);
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1)
                    .clamp(1, 10);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            200 => {
                progress.done();
                break resp.json::<Value>().await.map_err(|e| format!("unreadable manifest: {e}"))?;
            }
            _ => {
                progress.done();
                return Err(format!("export failed: {}", refusal(resp).await));
            }
        }
    };
    std::fs::write(args.out.join("manifest.json"), serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?)
        .map_err(|e| format!("writing manifest.json: {e}"))?;

    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let mut total_bytes = 0u64;
    for (n, out) in outputs.iter().enumerate() {
        let url = out["url"].as_str().ok_or("a manifest output without url")?;
        let name = url.rsplit('/').next().filter(|s| !s.is_empty() && !s.contains("..")).ok_or("bad file url")?;
        let mut resp =
            http.get(url).bearer_auth(&token).send().await.map_err(|e| format!("downloading {name}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("downloading {name}: {}", refusal(resp).await));
        }
        let path = args.out.join(name);
        let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("downloading {name}: {e}"))? {
            file.write_all(&chunk).map_err(|e| format!("{}: {e}", path.display()))?;
            bytes += chunk.len() as u64;
            progress.show(
                Some((n as f64) / (outputs.len() as f64)),
                &format!("file {}/{} {name} {} KiB", n + 1, outputs.len(), bytes / 1024),
            );
        }
        file.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
        total_bytes += bytes;
    }
    progress.done();
    // CSV child tables count their rows, not resources: only main tables (`<Type>.csv`,
    // `<Type>-<n>.csv`) count.
    let resources: u64 = outputs
        .iter()
        .filter(|o| {
            let name = o["url"].as_str().and_then(|u| u.rsplit('/').next()).unwrap_or_default();
            !name.ends_with(".csv") || !name.trim_end_matches(".csv").contains('.')
        })
        .filter_map(|o| o["count"].as_u64())
        .sum();
    println!(
        "exported {resources} resources in {} files ({} KiB) to {}",
        outputs.len(),
        total_bytes / 1024,
        args.out.display()
    );
    Ok(())
}

/// One `$import` request: the files it carries.
struct Upload {
    label: String,
    files: Vec<PathBuf>,
}

/// Files (directories expanded, `manifest.json` skipped) grouped into uploads: each NDJSON,
/// JSON or XML file alone, each resource type's CSV tables together.
fn uploads(paths: &[PathBuf]) -> Result<Vec<Upload>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    let mut csv: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name == "manifest.json" {
            continue;
        }
        match extension(&f) {
            "csv" => csv.entry(name.split('.').next().unwrap_or_default().to_owned()).or_default().push(f),
            "ndjson" | "json" | "xml" => out.push(Upload { label: name, files: vec![f] }),
            _ => return Err(format!("{}: not an import file (.ndjson, .json, .xml or .csv)", f.display())),
        }
    }
    out.extend(
        csv.into_iter().map(|(ty, files)| Upload { label: format!("{ty} (CSV, {} tables)", files.len()), files }),
    );
    Ok(out)
}

fn extension(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or_default()
}

fn media_type(p: &Path) -> &'static str {
    match extension(p) {
        "ndjson" => "application/fhir+ndjson",
        "json" => "application/fhir+json",
        "xml" => "application/fhir+xml",
        _ => "text/csv",
    }
}

/// `ehr import`: posts the files to `$import` and prints each report; fails if any was refused.
pub async fn import(url: &str, paths: &[PathBuf], atomic: bool) -> Result<(), String> {
    let token = token()?;
    let http = client()?;
    let endpoint = format!("{}/fhir/$import", url.trim_end_matches('/'));
    let mut groups = uploads(paths)?;
    if groups.is_empty() {
        return Err("nothing to import".into());
    }
    if atomic {
        let files = groups.drain(..).flat_map(|g| g.files).collect();
        groups.push(Upload { label: "all files (one transaction)".into(), files });
    }
    let mut progress = Progress::new();
    let mut refused = 0usize;
    let count = groups.len();
    for (n, group) in groups.iter().enumerate() {
        progress.show(Some(n as f64 / count as f64), &format!("{}/{count} {}", n + 1, group.label));
        let mut form = reqwest::multipart::Form::new();
        for f in &group.files {
            let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("file").to_owned();
            let part = reqwest::multipart::Part::bytes(bytes)
                .file_name(name)
                .mime_str(media_type(f))
                .map_err(|e| e.to_string())?;
            form = form.part("file", part);
        }
        let resp = http
            .post(&endpoint)
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        progress.done();
        let status = resp.status();
        let report: Value = resp.json().await.unwrap_or(Value::Null);
        let issues = report["issue"].as_array().cloned().unwrap_or_default();
        if status.is_success() {
            for i in &issues {
                println!("{}: {}", group.label, i["diagnostics"].as_str().unwrap_or("imported"));
            }
            if issues.is_empty() {
                println!("{}: imported", group.label);
            }
        } else {
            refused += 1;
            println!("{}: REFUSED ({status}), nothing stored from it:", group.label);
            for i in &issues {
                let at = i["expression"][0].as_str().map(|e| format!("{e}: ")).unwrap_or_default();
                println!("  {at}{}", i["diagnostics"].as_str().unwrap_or("(no details)"));
            }
        }
    }
    progress.done();
    if refused > 0 {
        return Err(format!("{refused} of {count} imports refused (see the report above)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_fractions_come_from_the_first_pair() {
        assert_eq!(fraction_of("Patient 1200/5000 resources, 2 of 14 types"), Some(0.24));
        assert_eq!(fraction_of("queued"), None);
        assert_eq!(fraction_of("0/0"), None);
    }

    #[test]
    fn formats_map_to_output_formats() {
        assert_eq!(output_format("ndjson"), Ok("application/fhir+ndjson"));
        assert_eq!(output_format("bundle-xml"), Ok("application/fhir+xml"));
        assert!(output_format("yaml").is_err());
    }
}
