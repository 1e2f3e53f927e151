//! `ehr backup keygen|create|verify` and `ehr restore`: per-tenant offline backups, straight on
//! the configured database (not through the HTTP API). The archive format and the operations
//! are `ehr-backup`'s; this module parses flags, finds the key, handles the files and prints.
//! Procedure and format: docs/operations/backup.md.

use clap::{Args, Subcommand};
use ehr_app::Config;
use ehr_backup::{BackupKey, Checked, Database, KdfCosts, Secret, Zeroizing};
use ehr_core::{Clock, SystemClock, TenantId};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable holding a backup passphrase (instead of a key file).
const PASSPHRASE_VAR: &str = "EHR_BACKUP_PASSPHRASE";

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Print a new archive key: base64 of 32 random bytes, for `--key-file`
    /// (`ehr backup keygen > backup.key`, or `--out FILE`, written with mode 0600). Keep it
    /// apart from the archives.
    Keygen {
        /// Write the key to this new file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the encrypted archive of one tenant: its registry row, OAuth clients, lab
    /// endpoints, users, recovery codes, every resource with its whole history, and its audit
    /// chain, read in one database snapshot. Prints the archive's SHA-256 to record off-line.
    /// The key comes from --key-file or the passphrase in EHR_BACKUP_PASSPHRASE.
    Create {
        #[arg(long)]
        tenant: String,
        /// The archive to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        database: DatabaseArg,
        /// Write the archive even when the tenant's audit chain does not verify (recorded as it is).
        #[arg(long)]
        allow_broken_audit: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Verify an archive: structure and checksum; with the key also every chunk's
    /// authentication, every record, the counts and the audit chain. Needs no database.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Refuse an archive of another tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// The SHA-256 recorded when the archive was written.
        #[arg(long)]
        sha256: Option<String>,
    },
}

#[derive(Args)]
pub struct KeyArgs {
    /// The archive key file (`ehr backup keygen`); without it, the passphrase in
    /// EHR_BACKUP_PASSPHRASE.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct DatabaseArg {
    /// Which database of the deployment `database.url` names: `all` (target all: one database
    /// for every service), or in microservices mode `gateway` (identity, OAuth clients, audit
    /// chain) or `clinical` (resources, history, lab endpoints) — two archives per tenant there.
    /// Required when `database.url` is set; without it, `all` (the SQLite file of target all).
    #[arg(long, value_name = "all|gateway|clinical")]
    database: Option<String>,
}

impl DatabaseArg {
    fn resolve(&self, config: &Config) -> Result<Database, String> {
        match &self.database {
            Some(d) => Database::parse(d).ok_or_else(|| format!("--database: `{d}` is not all, gateway or clinical")),
            None if config.database.url.is_some() || config.database.url_file.is_some() => Err(
                "give --database all|gateway|clinical: which database `database.url` names (in microservices mode a \
                 tenant is in two, the gateway's and the clinical one, each backed up and restored on its own)"
                    .into(),
            ),
            None => Ok(Database::All),
        }
    }
}

/// `ehr restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The archive (`ehr backup create`).
    file: PathBuf,
    /// Refuse an archive of another tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// The SHA-256 recorded off-line when the archive was written (`ehr backup create` printed
    /// it): compared with the file before anything else.
    #[arg(long)]
    sha256: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    database: DatabaseArg,
    /// Restore an archive whose audit chain does not verify, as it is.
    #[arg(long)]
    allow_broken_audit: bool,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The key of `--key-file`, or the passphrase of EHR_BACKUP_PASSPHRASE, or none.
fn secret(args: &KeyArgs) -> Result<Option<Secret>, String> {
    let passphrase = std::env::var(PASSPHRASE_VAR).ok().map(|p| {
        let raw = Zeroizing::new(p);
        Zeroizing::new(raw.trim_end_matches(['\r', '\n']).to_owned())
    });
    match (&args.key_file, passphrase) {
        (Some(_), Some(_)) => Err(format!("give either --key-file or {PASSPHRASE_VAR}, not both")),
        (Some(path), None) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| format!("--key-file {}: {e}", path.display()))?,
            );
            warn_if_readable_by_others(path);
            let key = BackupKey::from_base64(&text).map_err(|e| format!("--key-file {}: {e}", path.display()))?;
            Ok(Some(Secret::Key(key)))
        }
        (None, Some(p)) => Ok(Some(Secret::Passphrase(p))),
        (None, None) => Ok(None),
    }
}

fn required(args: &KeyArgs) -> Result<Secret, String> {
    secret(args)?.ok_or_else(|| {
        format!("give the archive key with --key-file FILE (`ehr backup keygen` makes one) or a passphrase in {PASSPHRASE_VAR}")
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!("warning: the key file {} is readable by others than its owner (chmod 600 it)", path.display());
    }
    // Our effective uid is the owner of /proc/self (Linux); elsewhere the check is skipped.
    if let Ok(me) = std::fs::metadata("/proc/self")
        && meta.uid() != me.uid()
    {
        eprintln!(
            "warning: the key file {} belongs to uid {}, not to the user running ehr (uid {}): whoever owns it \
             can change its permissions",
            path.display(),
            meta.uid(),
            me.uid()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

fn parse_tenant(t: &str) -> Result<TenantId, String> {
    TenantId::parse(t).map_err(|e| format!("--tenant: {e}"))
}

/// `ehr backup …`.
pub async fn run(config: &mut Config, command: BackupCommand) -> Result<(), String> {
    match command {
        BackupCommand::Keygen { out } => keygen(out.as_deref()),
        BackupCommand::Create { tenant, out, key, database, allow_broken_audit, data_dir } => {
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            let database = database.resolve(config)?;
            create(config, &parse_tenant(&tenant)?, &out, &key, database, allow_broken_audit).await
        }
        BackupCommand::Verify { file, key, tenant, sha256 } => {
            verify(&file, &key, tenant.as_deref(), sha256.as_deref())
        }
    }
}

fn keygen(out: Option<&Path>) -> Result<(), String> {
    let key = BackupKey::generate();
    match out {
        Some(path) => {
            super::write_owner_only(path, &Zeroizing::new(format!("{}\n", key.to_base64().as_str())))?;
            eprintln!(
                "wrote the archive key {} (key id {}); keep it apart from the archives",
                path.display(),
                key.id()
            );
        }
        None => {
            println!("{}", key.to_base64().as_str());
            eprintln!("key id {}; keep the key apart from the archives", key.id());
        }
    }
    Ok(())
}

async fn create(
    config: &Config,
    tenant: &TenantId,
    out: &Path,
    key: &KeyArgs,
    database: Database,
    allow_broken_audit: bool,
) -> Result<(), String> {
    let secret = required(key)?;
    if out.exists() {
        return Err(format!("{} exists; an archive is never overwritten", out.display()));
    }
    let store = super::gateway_store(config).await?;
    let options = ehr_backup::CreateOptions {
        tenant: tenant.clone(),
        secret,
        now: SystemClock.now(),
        allow_broken_audit,
        kdf_costs: KdfCosts::default(),
        database,
    };
    // Written beside the target and linked to its name when complete: an interrupted backup
    // never leaves a file under the archive's name, and the link (unlike a rename) fails when
    // that name exists, so nothing is overwritten even if it appeared meanwhile.
    let partial = out.with_file_name(format!(
        "{}.partial",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let file = create_owner_only(&partial)?;
    let result = ehr_backup::create(&store, std::io::BufWriter::new(file), &options).await;
    let finished = result.map_err(|e| e.to_string()).and_then(|(created, w)| {
        let file = w.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| format!("{}: {e}", partial.display()))?;
        drop(file);
        std::fs::hard_link(&partial, out).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!("{} exists; an archive is never overwritten", out.display()),
            _ => format!("{}: {e}", out.display()),
        })?;
        Ok(created)
    });
    let _ = std::fs::remove_file(&partial);
    let created = finished?;
    sync_dir(out).map_err(|e| format!("{}: syncing its directory: {e}", out.display()))?;
    let h = &created.header;
    println!("backup of tenant {} written to {}", h.tenant, out.display());
    println!("  read from the {} database ({}): {}", h.database.name(), h.source_backend, counts(&h.counts));
    println!("  {}", audit_line(&created.audit, h.audit.seq));
    println!(
        "  {} bytes in {} chunks, AES-256-GCM, key id {}{}",
        created.written.bytes,
        created.written.chunks,
        h.key_id,
        if h.kdf.is_some() { " (passphrase, argon2id)" } else { "" }
    );
    println!("sha256: {}", created.written.sha256);
    let _ = std::io::stdout().flush();
    for w in &created.warnings {
        eprintln!("WARNING: {w}");
    }
    eprintln!("record this checksum apart from the archive; `ehr backup verify FILE --sha256 …` compares it");
    Ok(())
}

/// Makes the directory entries of `path`'s directory durable (the new link, the removed
/// partial file).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Opens a new file readable by its owner only.
fn create_owner_only(path: &Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn counts(c: &ehr_store::backup::BackupCounts) -> String {
    format!(
        "{} tenant row, {} OAuth clients, {} lab endpoints, {} users, {} recovery codes, {} resources, \
         {} history versions, {} audit events",
        c.tenant, c.clients, c.lab_endpoints, c.users, c.recovery_codes, c.resources, c.history, c.audit_links
    )
}

fn database_line(h: &ehr_backup::Header) -> String {
    format!("the {} database's sections (schema level {})", h.database.name(), h.schema)
}

fn audit_line(audit: &ehr_store::AuditVerification, head: i64) -> String {
    if audit.is_ok() {
        format!("audit chain: ok ({} events, head at {head})", audit.checked)
    } else {
        format!("audit chain: {} problem(s) in {} events (kept as they are)", audit.problems.len(), audit.checked)
    }
}

fn verify(file: &Path, key: &KeyArgs, tenant: Option<&str>, sha256: Option<&str>) -> Result<(), String> {
    if let Some(t) = tenant {
        parse_tenant(t)?;
    }
    let secret = secret(key)?;
    let verified =
        ehr_backup::verify(file, secret.as_ref(), tenant, sha256).map_err(|e| format!("{}: {e}", file.display()))?;
    let s = &verified.scanned;
    let h = &s.header;
    println!(
        "{}: archive of tenant {}, created {} by ehr {} ({}), key id {}{}",
        file.display(),
        h.tenant,
        h.created_at,
        h.app_version,
        h.source_backend,
        h.key_id,
        if h.kdf.is_some() { " (passphrase)" } else { "" }
    );
    println!("  holds {}", database_line(h));
    println!("  structure and checksum: ok ({} bytes, {} chunks)", s.bytes, s.chunks);
    if sha256.is_some() {
        println!("  matches the recorded SHA-256");
    }
    match &verified.checked {
        Some(checked) => print_checked(checked),
        None => println!(
            "  content: not checked (give --key-file or {PASSPHRASE_VAR} to authenticate every chunk and check every record)"
        ),
    }
    println!("sha256: {}", s.sha256);
    Ok(())
}

fn print_checked(checked: &Checked) {
    println!("  content: ok, every chunk authenticated and every record checked");
    println!("  {}", counts(&checked.counts));
    println!("  {}", audit_line(&checked.audit, checked.header.audit.seq));
}

/// `ehr restore`.
pub async fn restore(config: &mut Config, args: RestoreArgs) -> Result<(), String> {
    if let Some(d) = args.data_dir.clone() {
        config.data_dir = d;
    }
    let expect_tenant = args.tenant.as_deref().map(parse_tenant).transpose()?;
    let database = args.database.resolve(config)?;
    let secret = required(&args.key)?;
    let options = ehr_backup::RestoreOptions {
        secret,
        expect_tenant,
        expect_sha256: args.sha256.clone(),
        database,
        allow_broken_audit: args.allow_broken_audit,
        now: SystemClock.now(),
    };
    let file = &args.file;
    // The whole archive is verified before the database is connected (and migrated) or its
    // directory created.
    let prepared = ehr_backup::prepare_restore(file, &options).map_err(|e| format!("{}: {e}", file.display()))?;
    let store = super::gateway_store(config).await?;
    let restored = ehr_backup::restore(&store, &prepared).await.map_err(|e| format!("{}: {e}", file.display()))?;
    let c = &restored.checked;
    println!("restored tenant {} from {} into the {} database", c.header.tenant, file.display(), store.backend_name());
    println!("  {}: {}", database_line(&c.header), counts(&c.counts));
    println!("  {} (verified again in the database)", audit_line(&restored.audit_after, c.header.audit.seq));
    if args.sha256.is_some() {
        println!("  matches the recorded SHA-256");
    }
    println!("sha256: {}", c.sha256);
    let _ = std::io::stdout().flush();
    eprintln!(
        "note: TOTP secrets are sealed under gateway.secret_key; they open only where it is the source's \
         (otherwise reset the users' MFA)"
    );
    Ok(())
}
