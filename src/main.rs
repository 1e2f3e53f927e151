//! `ehr` — one binary, many targets.
//!
//! ```text
//! ehr serve [--target all|gateway|patient-record|orders|lab-interface|data-export|clins-adapter|eprescription-adapter] [--listen ADDR] [--data-dir DIR] [--config FILE]
//! ehr admin create-tenant --id T --name N [--admin-user U] [--role tenant-admin]   (password: EHR_ADMIN_PASSWORD or stdin)
//! ehr audit verify [--tenant T]
//! ehr login --client C --user U [--url http://127.0.0.1:8080] [--scope …]   (password: EHR_PASSWORD or prompt)
//! ehr totp --secret BASE32
//! ehr dev-token --tenant T --scope "user/*.cruds" [--subject S] [--ttl-secs N]
//! ehr export --out DIR [--format ndjson|bundle-json|bundle-xml|csv] [--type T,…] [--patient | --group ID]   (EHR_TOKEN)
//! ehr import [--atomic] FILE_OR_DIR…   (EHR_TOKEN)
//! ehr validate [--profile URL] [--masters DIR] [--json] FILE_OR_DIR…
//! ehr sim clins [--listen ADDR] [--file-root DIR --password-file F]
//! ehr sim eprescription [--listen ADDR] [--trust-cert PEM]… [--issue-signer DIR]
//! ehr migrate [--target …]
//! ehr backup keygen [--out FILE]
//! ehr backup create --tenant T --out FILE [--database all|gateway|clinical] [--key-file F]  (or EHR_BACKUP_PASSPHRASE)
//! ehr backup verify FILE [--key-file F] [--tenant T] [--sha256 HEX]
//! ehr restore FILE [--database all|gateway|clinical] [--sha256 HEX] [--tenant T] [--key-file F]
//! ehr openapi [--out DIR | --check DIR]   (the OpenAPI documents of openapi/README.md)
//! ehr conformance --base-url URL --client C [--user U | --token-env VAR] [--auditor U] [--second-client C --second-user U] [--junit FILE]   (EHR_PASSWORD, EHR_TOTP_SECRET, …)
//! ```

mod backup;
mod handover;
mod login;
mod validate;

use clap::{Parser, Subcommand};
use ehr_app::{Config, Target};
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock, TenantId};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "ehr", version, about = "Standard-spec cloud-native hospital EHR (reference implementation)")]
struct Cli {
    /// A TOML configuration file (defaults < file < EHR_* environment).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run services: all of them on SQLite (default), or one target on PostgreSQL.
    Serve {
        #[arg(long, default_value = "all")]
        target: String,
        /// Listen address [default: 127.0.0.1:8080, or EHR_LISTEN].
        #[arg(long)]
        listen: Option<String>,
        /// SQLite data directory [default: ./data, or EHR_DATA_DIR].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, default_value = "all")]
        target: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Administration from the command line (the first tenant and its administrator).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Log in at a gateway (password, then TOTP; enrols the authenticator at the first login) and
    /// print the token response as JSON.
    Login {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The OAuth client (`<tenant>-cli` from `ehr admin create-tenant`).
        #[arg(long)]
        client: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "offline_access user/*.cruds")]
        scope: String,
    },
    /// Print the current TOTP code of a base32 secret (what an authenticator app shows), for
    /// scripted logins in development and tests.
    Totp {
        #[arg(long)]
        secret: String,
    },
    /// List every external connection configured for the tenant of the token (labs, national
    /// services) with its last activity. The token comes from EHR_TOKEN (`ehr login`'s
    /// access_token; it needs the `Connection` read scope, which tenant administrators hold).
    Connections {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Print the JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the outsourced-lab simulator: it takes OML^O33 orders over MLLP, checks them field by
    /// field, answers ORL^O34, and sends OUL^R22 (or ORU^R01) results back over MLLP.
    LabSim {
        /// Where the simulator accepts orders.
        #[arg(long, default_value = "127.0.0.1:2576")]
        listen: String,
        /// The EHR's MLLP listener for results (`lab.listen`).
        #[arg(long, default_value = "127.0.0.1:2575")]
        results_to: String,
        /// `iso-ir-87` (ISO-2022-JP, the JAHIS default) or `utf-8`.
        #[arg(long, default_value = "iso-ir-87")]
        charset: String,
        /// `oul-r22` or `oru-r01`.
        #[arg(long, default_value = "oul-r22")]
        results_as: String,
        /// The lab's facility (MSH-4 of its messages).
        #[arg(long, default_value = "LAB")]
        facility: String,
        /// Seconds between an accepted order and its results.
        #[arg(long, default_value_t = 2)]
        delay_secs: u64,
    },
    /// Validate FHIR resources (JSON or XML files, or directories of them) as the national
    /// services do: R4 structure, JP Core / JP-CLINS profiles, the JP-CLINS rules and the master
    /// codes. Prints each issue with its FHIRPath location and rule id; exits 1 if any file has
    /// an error, 2 if a file cannot be read.
    Validate {
        /// Also validate against this profile (canonical URL), as if named in meta.profile.
        #[arg(long)]
        profile: Option<String>,
        /// A directory of official master files (drug, disease, JLAC10) to check codes against,
        /// beyond the subset built in.
        #[arg(long)]
        masters: Option<PathBuf>,
        /// Print one OperationOutcome per file (NDJSON) instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a simulator of a national service for tests and demos: `clins` (the EHR
    /// information-sharing service) or `eprescription` (the e-prescription service). It checks
    /// what it receives against the profiles and record layouts and answers as the real service.
    Sim {
        /// `clins` or `eprescription`.
        #[arg(value_parser = ["clins", "eprescription"])]
        service: String,
        /// Where its Web API listens [default: 127.0.0.1:9301 for clins, 127.0.0.1:9302 for
        /// eprescription].
        #[arg(long)]
        listen: Option<String>,
        /// clins: serve the terminal file-drop method too, under this directory.
        #[arg(long, requires = "password_file")]
        file_root: Option<PathBuf>,
        /// clins: a file holding the file-drop encryption password (read as `clins.password_file`
        /// is: without its line ending).
        #[arg(long, requires = "file_root")]
        password_file: Option<PathBuf>,
        /// eprescription: trust this signer certificate (PEM; repeatable), as the real service
        /// trusts HPKI certificates.
        #[arg(long)]
        trust_cert: Vec<PathBuf>,
        /// eprescription: issue a demo signer (software key and certificate, `key.pem` and
        /// `cert.pem` in this directory, created if missing) and trust it — for
        /// `eprescription.signer_key_file` / `signer_cert_file` of `ehr serve`.
        #[arg(long)]
        issue_signer: Option<PathBuf>,
    },
    /// Export the tenant's data (FHIR Bulk Data `$export`) into a directory: NDJSON per type, one
    /// Bundle per patient (JSON or XML), or the CSV layouts of docs/formats/csv.md. Shows the
    /// job's progress; the token comes from EHR_TOKEN (it needs read scopes, e.g.
    /// `system/*.rs` of a backend client).
    Export {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The directory the files (and manifest.json) are written to.
        #[arg(long)]
        out: PathBuf,
        /// `ndjson`, `bundle-json`, `bundle-xml` or `csv`.
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Only these resource types (comma-separated).
        #[arg(long = "type")]
        types: Option<String>,
        /// Only resources changed after this instant (`2026-01-01T00:00:00+09:00`).
        #[arg(long)]
        since: Option<String>,
        /// A search restricting one type (`Observation?category=laboratory`); repeatable.
        #[arg(long = "type-filter")]
        type_filters: Vec<String>,
        /// Patient-level export: only resources in some patient's compartment.
        #[arg(long)]
        patient: bool,
        /// Group-level export: the patients of this Group.
        #[arg(long)]
        group: Option<String>,
        /// CSV: start every file with a UTF-8 byte order mark (for spreadsheet software).
        #[arg(long)]
        bom: bool,
    },
    /// Import files (NDJSON, Bundle JSON/XML, CSV tables; directories are expanded) through
    /// `$import`: each file — each type's CSV tables together — is imported whole or not at all,
    /// and the server's report is printed. The token comes from EHR_TOKEN (create and update
    /// scopes on the imported types).
    Import {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Send every file in one request: all of them are imported, or none.
        #[arg(long)]
        atomic: bool,
        /// Files or directories (e.g. the output directory of `ehr export`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the black-box conformance kit against a server (tests/conformance/README.md):
    /// passwords, TOTP secrets and tokens from the environment; exit 1 when a check fails.
    Conformance(ehr_conformance::Args),
    /// Print a bearer token signed with the development key (refused when it is disabled).
    DevToken {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "user/*.cruds")]
        scope: String,
        #[arg(long, default_value = "dev-user")]
        subject: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
    /// Per-tenant offline backups: encrypted, checksummed archives (docs/operations/backup.md).
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Restore a tenant from an archive of `ehr backup create` into a database where it has no
    /// data: the whole archive is verified first, then written in one transaction.
    Restore(backup::RestoreArgs),
    /// Write the OpenAPI documents of every service (openapi/README.md), or with `--check`
    /// compare a directory with them and exit 1 when it differs (the CI drift check).
    Openapi {
        /// Where to write the documents.
        #[arg(long, default_value = "openapi")]
        out: PathBuf,
        /// Compare this directory with the generated documents instead of writing.
        #[arg(long, conflicts_with = "out")]
        check: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant, its first administrator (who enrols TOTP at first login) and a public
    /// OAuth client `<tenant>-cli`. The password comes from EHR_ADMIN_PASSWORD or standard input.
    CreateTenant {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin_user: Option<String>,
        /// Roles of the administrator (repeatable).
        #[arg(long = "role", default_value = "tenant-admin")]
        roles: Vec<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chains: any changed, removed or inserted AuditEvent is reported, and the
    /// command exits non-zero.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Validation reads files only: no configuration, database or runtime.
    if let Command::Validate { profile, masters, json, files } = &cli.command {
        return validate::run(files, profile.as_deref(), masters.as_deref(), *json);
    }
    // The OpenAPI documents come from the code alone: no configuration either.
    if let Command::Openapi { out, check } = &cli.command {
        return openapi(out, check.as_deref());
    }
    // The conformance kit speaks HTTP to some server: none of our configuration, whose loader
    // would refuse the kit's `EHR_*` secrets (EHR_TOTP_SECRET, EHR_AUDITOR_PASSWORD, …).
    if let Command::Conformance(args) = &cli.command {
        return conformance(args);
    }
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    // Logs for every command; traces (OTLP) only for `serve`, named after its target.
    let traces = match &cli.command {
        Command::Serve { target, .. } => {
            let service = format!("ehr-{}", Target::parse(target).map_or(target.as_str(), |t| t.name()));
            ehr_telemetry::trace::init(&config.log.format, &config.log.level, &config.telemetry, &service)
        }
        _ => ehr_telemetry::trace::init_logs(&config.log.format, &config.log.level),
    };
    let traces = match traces {
        Ok(guard) => guard,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { target, listen, data_dir } => {
                let target = parse_target(&target)?;
                if let Some(l) = listen {
                    config.listen = l;
                }
                if let Some(d) = data_dir {
                    config.data_dir = d;
                }
                serve(config, target).await
            }
            Command::Migrate { target, data_dir } => {
                if let Some(d) = data_dir {
                    config.data_dir = d;
                }
                ehr_app::store(&config, parse_target(&target)?).await.map_err(|e| e.to_string())?;
                println!("migrations applied");
                Ok(())
            }
            Command::Admin { command: AdminCommand::CreateTenant { id, name, admin_user, roles, data_dir } } => {
                if let Some(d) = data_dir {
                    config.data_dir = d;
                }
                create_tenant(&config, &id, &name, admin_user.as_deref(), roles).await
            }
            Command::Audit { command: AuditCommand::Verify { tenant, data_dir } } => {
                if let Some(d) = data_dir {
                    config.data_dir = d;
                }
                audit_verify(&config, tenant.as_deref()).await
            }
            Command::Login { url, client, user, scope } => login::login(&url, &client, &user, &scope).await,
            Command::Totp { secret } => {
                let secret = ehr_auth::TotpSecret::from_base32(&secret).map_err(|e| format!("--secret: {e}"))?;
                println!("{}", secret.code_at(SystemClock.now().timestamp()));
                Ok(())
            }
            Command::Connections { url, json } => connections(&url, json).await,
            Command::LabSim { listen, results_to, charset, results_as, facility, delay_secs } => {
                lab_sim(listen, results_to, &charset, &results_as, facility, delay_secs).await
            }
            Command::Export { url, out, format, types, since, type_filters, patient, group, bom } => {
                let args = handover::ExportArgs { url, out, format, types, since, type_filters, patient, group, bom };
                handover::export(args).await
            }
            Command::Import { url, atomic, paths } => handover::import(&url, &paths, atomic).await,
            Command::Validate { .. } | Command::Openapi { .. } => Ok(()),
            Command::Sim { service, listen, file_root, password_file, trust_cert, issue_signer } => {
                let options = SimArgs { listen, file_root, password_file, trust_cert, issue_signer };
                sim(&service, options).await
            }
            Command::Conformance(_) => Ok(()),
            Command::DevToken { tenant, scope, subject, ttl_secs } => {
                dev_token(&config, &tenant, &scope, &subject, ttl_secs)
            }
            Command::Backup { command } => backup::run(&mut config, command).await,
            Command::Restore(args) => backup::restore(&mut config, args).await,
        }
    });
    // After `serve` stopped its workers: the last spans (the shutdown's too) leave now.
    traces.shutdown();
    if let Some(&code) = FORCED_EXIT.get() {
        // A second stop signal: the runtime is not waited for (a task still busy stays so).
        std::process::exit(i32::from(code));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(&msg),
    }
}

/// What `ehr sim` was given.
struct SimArgs {
    listen: Option<String>,
    file_root: Option<PathBuf>,
    password_file: Option<PathBuf>,
    trust_cert: Vec<PathBuf>,
    issue_signer: Option<PathBuf>,
}

/// The signer certificates (DER) the e-prescription simulator trusts: the given PEM files, and
/// the demo signer of `--issue-signer` (created in that directory when missing).
fn trusted_signers(args: &SimArgs) -> Result<Vec<Vec<u8>>, String> {
    use ehr_eprescription::sign::SoftwareSigner;
    let read = |path: &PathBuf| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut trusted = Vec::new();
    for path in &args.trust_cert {
        trusted.push(
            ehr_eprescription::der::pem_decode(&read(path)?, "CERTIFICATE")
                .map_err(|e| format!("--trust-cert {}: {e}", path.display()))?,
        );
    }
    if let Some(dir) = &args.issue_signer {
        let (key_path, cert_path) = (dir.join("key.pem"), dir.join("cert.pem"));
        if !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("--issue-signer {}: {e}", dir.display()))?;
            let signer = SoftwareSigner::generate("電子処方箋 デモ署名者", SystemClock.now())
                .map_err(|e| format!("cannot create the demo signer: {e}"))?;
            let key = signer.key_pem().map_err(|e| e.to_string())?;
            // The key first (never over an existing one): a certificate is never left without it.
            write_owner_only(&key_path, &key)?;
            std::fs::write(&cert_path, signer.cert_pem()).map_err(|e| format!("{}: {e}", cert_path.display()))?;
            eprintln!("issued a demo signer: {} and {}", key_path.display(), cert_path.display());
        }
        let signer = SoftwareSigner::from_pem(&read(&key_path)?, &read(&cert_path)?)
            .map_err(|e| format!("--issue-signer {}: {e}", dir.display()))?;
        trusted.push(ehr_eprescription::der::pem_decode(&signer.cert_pem(), "CERTIFICATE").map_err(|e| e.to_string())?);
    }
    Ok(trusted)
}

/// Writes a file readable by its owner only (a private key).
fn write_owner_only(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).and_then(|mut f| f.write_all(text.as_bytes())).map_err(|e| format!("{}: {e}", path.display()))
}

/// `ehr sim clins|eprescription`: a national-service simulator until Ctrl-C.
async fn sim(service: &str, args: SimArgs) -> Result<(), String> {
    match service {
        "clins" => {
            if !args.trust_cert.is_empty() || args.issue_signer.is_some() {
                return Err("--trust-cert and --issue-signer are options of `ehr sim eprescription`".into());
            }
            // Exactly as the adapter reads `clins.password_file` (only the line ending is not
            // part of the password), or the two would derive different keys from one file.
            let password = match &args.password_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("--password-file {}: {e}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => None,
            };
            let listen = args.listen.unwrap_or_else(|| "127.0.0.1:9301".into());
            ehr_clins::sim::run(ehr_clins::sim::SimOptions { listen, file_root: args.file_root, password }).await
        }
        "eprescription" => {
            if args.file_root.is_some() || args.password_file.is_some() {
                return Err("the e-prescription simulator serves the Web API only: --file-root and --password-file \
                            are options of `ehr sim clins`"
                    .into());
            }
            let trusted_certificates = trusted_signers(&args)?;
            let listen = args.listen.unwrap_or_else(|| "127.0.0.1:9302".into());
            ehr_eprescription::sim::run(ehr_eprescription::sim::SimOptions {
                listen,
                file_root: None,
                password: None,
                trusted_certificates,
            })
            .await
        }
        other => Err(format!("unknown national service `{other}` (expected clins or eprescription)")),
    }
}

/// `ehr conformance`: the kit on a runtime of its own; exit 1 when a check failed.
fn conformance(args: &ehr_conformance::Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(ehr_conformance::main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(&msg),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ehr: error: {msg}");
    ExitCode::FAILURE
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).ok_or_else(|| {
        format!(
            "unknown target `{s}` (expected all, gateway, patient-record, orders, lab-interface, data-export, \
             clins-adapter or eprescription-adapter)"
        )
    })
}

/// The gateway's database: the one of target `all` unless a URL is configured.
async fn gateway_store(config: &Config) -> Result<ehr_store::Store, String> {
    let target =
        if config.database.url.is_some() || config.database.url_file.is_some() { Target::Gateway } else { Target::All };
    ehr_app::store(config, target).await.map_err(|e| e.to_string())
}

async fn create_tenant(
    config: &Config,
    id: &str,
    name: &str,
    admin: Option<&str>,
    roles: Vec<String>,
) -> Result<(), String> {
    let tenant = TenantId::parse(id).map_err(|e| format!("--id: {e}"))?;
    let password = match admin {
        None => None,
        Some(_) => Some(match std::env::var("EHR_ADMIN_PASSWORD") {
            Ok(p) => p,
            Err(_) => {
                eprintln!("password for the administrator (one line on standard input):");
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the password: {e}"))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            }
        }),
    };
    let store = gateway_store(config).await?;
    let now = SystemClock.now().timestamp();
    let admin_user = admin;
    let admin = admin.zip(password.as_deref()).map(|(u, p)| (u, p, roles));
    let done = ehr_gateway::ops::bootstrap_tenant(&store, &config.gateway, now, &tenant, name, admin)
        .await
        .map_err(|e| e.to_string())?;
    println!("tenant: {}", tenant.as_str());
    if let Some(id) = done.admin_id {
        println!("administrator: {} (id {id}); TOTP enrolment at first login", admin_user.unwrap_or_default());
    }
    println!("client_id: {}\nredirect_uri: {}", done.client_id, done.redirect_uri);
    Ok(())
}

async fn audit_verify(config: &Config, tenant: Option<&str>) -> Result<(), String> {
    let tenant = tenant.map(TenantId::parse).transpose().map_err(|e| format!("--tenant: {e}"))?;
    let store = gateway_store(config).await?;
    let reports = ehr_gateway::ops::verify_audit(&store, tenant.as_ref()).await.map_err(|e| e.to_string())?;
    let mut broken = 0;
    for (t, report) in &reports {
        if report.problems.is_empty() {
            println!("{}: ok ({} events)", t.as_str(), report.checked);
        } else {
            broken += 1;
            println!("{}: {} problem(s) in {} events", t.as_str(), report.problems.len(), report.checked);
            for p in &report.problems {
                println!("  {p:?}");
            }
        }
    }
    if broken > 0 {
        return Err(format!("the audit trail of {broken} tenant(s) has been tampered with"));
    }
    Ok(())
}

async fn serve(config: Config, target: Target) -> Result<(), String> {
    tracing::info!(config = %config.redacted(), ?target, "starting");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut app = ehr_app::build(&config, target, clock).await.map_err(|e| e.to_string())?;
    let router = std::mem::replace(&mut app.router, axum::Router::new());
    if let Some(listen) = &config.telemetry.metrics_listen {
        // A listener of its own: only the monitoring system is to reach it.
        let bound = ehr_app::serve_metrics(&app, listen).await.map_err(|e| e.to_string())?;
        tracing::info!(addr = %bound, "metrics at /metrics");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(addr = %config.listen, backend = app.store.backend_name(), "listening; FHIR at /fhir");
    // Every stop signal of the whole stop, in order: the first starts the graceful stop, a second
    // one (at any step) cuts it short.
    let signals = {
        let (seen, signals) = tokio::sync::watch::channel(Vec::<&'static str>::new());
        let mut stop = StopSignals::new();
        tokio::spawn(async move {
            loop {
                let name = stop.next().await;
                seen.send_modify(|seen| seen.push(name));
            }
        });
        signals
    };
    let (closed, listener_closed) = tokio::sync::oneshot::channel::<()>();
    let served = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown({
            let draining = app.draining.clone();
            let drain = std::time::Duration::from_secs(config.shutdown.drain_secs);
            let signals = signals.clone();
            async move {
                shutdown_signal(move || draining.start(), drain, signals).await;
                let _ = closed.send(());
            }
        });
    let mut signals = signals;
    let requests_timeout = config.shutdown.requests_timeout_secs;
    // The requests in flight get `requests_timeout` after the listener closed (0: no limit).
    let requests_cut_off = async {
        match listener_closed.await {
            Ok(()) if requests_timeout > 0 => {
                tokio::time::sleep(std::time::Duration::from_secs(requests_timeout)).await
            }
            _ => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = std::future::IntoFuture::into_future(served) => {
            let served = served.map_err(|e| format!("server error: {e}"));
            tracing::info!("shutting down: requests in flight finished; stopping the background workers");
            served
        }
        () = requests_cut_off => {
            tracing::error!(
                requests_timeout_secs = requests_timeout,
                "shutting down: requests in flight not finished in time, no longer waited for; stopping the background workers"
            );
            Ok(())
        }
        signal = nth_signal(&mut signals, 2) => return forced_stop(&app, signal, &mut signals).await,
    };
    // Drained: stop the workers (the consumers, the lab sender and the listener finish the item
    // in hand; the relay, last, publishes what is in the outbox), then write the queued audit
    // events.
    let second = tokio::select! {
        () = app.stop_workers(std::time::Duration::from_secs(config.shutdown.workers_timeout_secs)) => None,
        signal = nth_signal(&mut signals, 2) => Some(signal),
    };
    if let Some(signal) = second {
        return forced_stop(&app, signal, &mut signals).await;
    }
    tracing::info!("shutting down: background workers stopped");
    if let Some(gateway) = &app.gateway {
        // Bounded: with the database gone, the writer retries forever and shutdown must end.
        tokio::select! {
            flushed = tokio::time::timeout(std::time::Duration::from_secs(30), gateway.audit.flush()) => match flushed {
                Ok(()) => tracing::info!("audit trail flushed"),
                Err(_) => {
                    tracing::error!("audit trail not flushed within 30 s (database unreachable?): queued events are lost")
                }
            },
            signal = nth_signal(&mut signals, 2) => {
                tracing::error!(signal, "second signal: audit trail not flushed; queued events are lost");
                let _ = FORCED_EXIT.set(exit_code_of(signal));
            }
        }
    }
    served
}

/// Set by `serve` when a second stop signal cut the stop short: the exit code, 128 + the
/// signal's number as a shell reports it (SIGINT 130, SIGTERM 143). `main` exits with it after
/// flushing the traces.
static FORCED_EXIT: std::sync::OnceLock<u8> = std::sync::OnceLock::new();

/// Longest wait for the queued audit events after a second stop signal.
const FORCED_AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The exit code after a second `signal`.
fn exit_code_of(signal: &str) -> u8 {
    if signal == "SIGINT" { 130 } else { 143 }
}

/// The `n`-th stop signal's name (1 is the first); never resolves before.
async fn nth_signal(signals: &mut tokio::sync::watch::Receiver<Vec<&'static str>>, n: usize) -> &'static str {
    let name = signals.wait_for(|seen| seen.len() >= n).await.ok().map(|seen| seen[n - 1]);
    match name {
        Some(name) => name,
        None => std::future::pending().await,
    }
}

/// The stop after a second signal: the requests in flight are not waited for (their connections
/// close when the process exits), nor are the background workers (what they had not finished is
/// done again by another instance or after the next start, as after a crash); the queued audit
/// events get at most [`FORCED_AUDIT_FLUSH`] (a third signal ends that wait too), then `main`
/// flushes the traces and exits 130 (SIGINT) or 143 (SIGTERM).
async fn forced_stop(
    app: &ehr_app::App,
    signal: &'static str,
    signals: &mut tokio::sync::watch::Receiver<Vec<&'static str>>,
) -> Result<(), String> {
    tracing::warn!(
        signal,
        "second signal: stopping at once (requests in flight and background workers are not waited for)"
    );
    let _ = FORCED_EXIT.set(exit_code_of(signal));
    if let Some(gateway) = &app.gateway {
        tokio::select! {
            flushed = tokio::time::timeout(FORCED_AUDIT_FLUSH, gateway.audit.flush()) => match flushed {
                Ok(()) => tracing::info!("audit trail flushed"),
                Err(_) => tracing::error!(
                    timeout_secs = FORCED_AUDIT_FLUSH.as_secs(),
                    "audit trail not flushed in time after the second signal: queued events are lost"
                ),
            },
            third = nth_signal(signals, 3) => {
                tracing::error!(signal = third, "third signal: audit trail not flushed; queued events are lost")
            }
        }
    }
    Ok(())
}

/// Resolves when the listener is to close; axum then stops accepting and finishes the requests
/// in flight. At the first SIGTERM or SIGINT (counted in `signals` by `serve`), `draining()`
/// makes `/readyz` answer 503 and the process keeps serving for `drain`, so that load balancers
/// (a Kubernetes Service, the gateway's upstream health checks) stop sending before the listener
/// closes. A second signal is `serve`'s: it stops at once, whatever the step.
async fn shutdown_signal(
    draining: impl FnOnce(),
    drain: std::time::Duration,
    mut signals: tokio::sync::watch::Receiver<Vec<&'static str>>,
) {
    let first = nth_signal(&mut signals, 1).await;
    draining();
    if drain.is_zero() {
        tracing::info!(signal = first, "shutting down: /readyz answers 503 (draining)");
    } else {
        tracing::info!(
            signal = first,
            drain_secs = drain.as_secs(),
            "shutting down: /readyz answers 503 (draining), still serving"
        );
        tokio::time::sleep(drain).await;
    }
    tracing::info!("shutting down: listener closed, finishing the requests in flight");
}

/// SIGTERM and SIGINT, listened to once for the whole stop (so a second signal is not missed
/// between two waits).
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot listen for the signal; it stops the process at once");
                    None
                }
            };
            Self { term: listen(SignalKind::terminate(), "SIGTERM"), int: listen(SignalKind::interrupt(), "SIGINT") }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next stop signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.term.as_mut()) => "SIGTERM",
                () = recv(self.int.as_mut()) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn dev_token(config: &Config, tenant: &str, scope: &str, subject: &str, ttl_secs: i64) -> Result<(), String> {
    let issuer_configured =
        config.auth.issuer.is_some() || config.auth.jwks_url.is_some() || config.auth.jwks_file.is_some();
    if !config.auth.development_key || issuer_configured {
        return Err(format!("{}; tokens come from the issuer", ehr_auth::AuthError::NoDevKey));
    }
    TenantId::parse(tenant).map_err(|e| format!("--tenant: {e}"))?;
    let now = SystemClock.now().timestamp();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: subject.into(),
        exp: now + ttl_secs.clamp(1, 86_400),
        iat: now,
        tenant: tenant.into(),
        scope: scope.into(),
        jti: Some(uuid_like(now)),
        ..Claims::default()
    };
    let token = DevSigner::new().and_then(|s| s.sign(&claims)).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

fn uuid_like(now: i64) -> String {
    format!("dev-{now}-{}", std::process::id())
}

/// `ehr connections`: the tenant's external connections as a table (or JSON).
async fn connections(url: &str, json: bool) -> Result<(), String> {
    let token =
        std::env::var("EHR_TOKEN").map_err(|_| "set EHR_TOKEN to an access token (see `ehr login`)".to_owned())?;
    let resp = reqwest::Client::new()
        .get(format!("{}/admin/connections", url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
    if !status.is_success() {
        let why = body["issue"][0]["diagnostics"].as_str().unwrap_or("request refused");
        return Err(format!("{status}: {why}"));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let list = body["connections"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<8} {:<9} {:<24} {:<22} {:<28} {:<8} LAST ACTIVITY",
        "KIND", "DIRECTION", "NAME", "PROTOCOL", "ADDRESS", "ACTIVE"
    );
    for c in &list {
        let last = c["lastActivityAt"].as_i64().and_then(chrono_millis).unwrap_or_else(|| "never".to_owned());
        println!(
            "{:<8} {:<9} {:<24} {:<22} {:<28} {:<8} {}",
            c["kind"].as_str().unwrap_or(""),
            c["direction"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
            c["protocol"].as_str().unwrap_or(""),
            c["address"].as_str().unwrap_or("-"),
            c["active"].as_bool().unwrap_or(false),
            last,
        );
    }
    if list.is_empty() {
        println!("(no external connections configured)");
    }
    Ok(())
}

fn chrono_millis(ms: i64) -> Option<String> {
    let secs = ms.div_euclid(1000);
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(u64::try_from(secs).ok()?))?;
    Some(httpdate::fmt_http_date(t))
}

/// `ehr lab-sim`: the outsourced-lab simulator, until Ctrl-C.
async fn lab_sim(
    listen: String,
    results_to: String,
    charset: &str,
    results_as: &str,
    facility: String,
    delay_secs: u64,
) -> Result<(), String> {
    let charset = match charset {
        "iso-ir-87" | "iso-2022-jp" => ehr_lab_sim::LabCharset::IsoIr87,
        "utf-8" => ehr_lab_sim::LabCharset::Utf8,
        other => return Err(format!("--charset {other}: expected iso-ir-87 or utf-8")),
    };
    let result_message = match results_as {
        "oul-r22" => ehr_lab_sim::ResultMessage::OulR22,
        "oru-r01" => ehr_lab_sim::ResultMessage::OruR01,
        other => return Err(format!("--results-as {other}: expected oul-r22 or oru-r01")),
    };
    let listen = listen.parse().map_err(|e| format!("--listen {listen}: {e}"))?;
    let config = ehr_lab_sim::LabSimConfig {
        listen,
        results_to: Some(results_to),
        charset,
        result_message,
        result_delay_ms: Some(delay_secs * 1000),
        sending_facility: facility,
        ..ehr_lab_sim::LabSimConfig::default()
    };
    println!("lab simulator: orders on {}, results to {}", config.listen, config.results_to.as_deref().unwrap_or("-"));
    ehr_lab_sim::run(config).await.map_err(|e| e.to_string())
}

/// `ehr openapi`: writes the documents to `out`, or checks `check` against them.
fn openapi(out: &std::path::Path, check: Option<&std::path::Path>) -> ExitCode {
    if let Some(dir) = check {
        let problems = ehr_app::openapi::check(dir);
        if problems.is_empty() {
            println!("{}: the OpenAPI documents match the code", dir.display());
            return ExitCode::SUCCESS;
        }
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("the committed OpenAPI documents differ from the code: run `ehr openapi --out {}`", dir.display());
        return ExitCode::FAILURE;
    }
    match ehr_app::openapi::write(out) {
        Ok(files) => {
            for f in files {
                println!("{}", out.join(f).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot write the OpenAPI documents to {}: {e}", out.display())),
    }
}
