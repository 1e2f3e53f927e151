//! Configuration: defaults < TOML file < `EHR_*` environment (`__` nests: `EHR_DATABASE__URL`).
//!
//! Secrets can come from files (`database.url_file`, i.e. `EHR_DATABASE__URL_FILE`, for
//! Kubernetes secrets). Unknown keys are rejected, so a typo fails loudly at start-up.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every service in one process on the embedded defaults (SQLite).
    All,
    /// The patient-record service alone (PostgreSQL from config).
    PatientRecord,
    /// The gateway alone: identity, tokens, audit, routing to the services over HTTP.
    Gateway,
    /// The orders service alone (lab orders, prescriptions, reservations).
    Orders,
    /// The lab interface alone (HL7 v2 over MLLP, message log, admin API).
    LabInterface,
    /// The data-export service alone (Bulk Data export jobs, import, `$everything`).
    DataExport,
    /// The adapter for the EHR information-sharing service (3 documents, 6 information items).
    ClinsAdapter,
    /// The adapter for the e-prescription service.
    EPrescriptionAdapter,
}

impl Target {
    /// Parses `all`, `gateway` or `patient-record`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Self::All),
            "patient-record" => Some(Self::PatientRecord),
            "gateway" => Some(Self::Gateway),
            "orders" => Some(Self::Orders),
            "lab-interface" => Some(Self::LabInterface),
            "data-export" => Some(Self::DataExport),
            "clins-adapter" => Some(Self::ClinsAdapter),
            "eprescription-adapter" => Some(Self::EPrescriptionAdapter),
            _ => None,
        }
    }

    /// The target's name, as `--target` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::PatientRecord => "patient-record",
            Self::Gateway => "gateway",
            Self::Orders => "orders",
            Self::LabInterface => "lab-interface",
            Self::DataExport => "data-export",
            Self::ClinsAdapter => "clins-adapter",
            Self::EPrescriptionAdapter => "eprescription-adapter",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Directory of the embedded SQLite database.
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// The public URL clients reach this server at (`https://ehr.example-hospital.jp`), used
    /// for `Location`, `fullUrl` and paging links; when absent, taken from each request's `Host`
    /// and `X-Forwarded-Proto`.
    pub public_url: Option<String>,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub gateway: ehr_gateway::GatewaySettings,
    /// The lab interface (MLLP listener, sender retries).
    pub lab: ehr_lab_interface::LabSettings,
    /// Export jobs, their files, import limits.
    pub export: ehr_data_export::ExportSettings,
    /// The EHR information-sharing service (CLINS): transport, retries.
    pub clins: ehr_clins_adapter::ClinsSettings,
    /// The e-prescription service: endpoint, signer, retries.
    pub eprescription: ehr_eprescription_adapter::EPrescriptionSettings,
    pub log: LogConfig,
    /// Traces (OTLP) and metrics (`/metrics`).
    pub telemetry: ehr_telemetry::TelemetrySettings,
    /// Graceful stop on SIGTERM.
    pub shutdown: ShutdownConfig,
}

/// What `serve` does on SIGTERM/SIGINT: report not ready at once, keep serving for `drain_secs`
/// (long enough for load balancers — a Kubernetes Service, the gateway's upstream health checks —
/// to stop sending new requests), then stop accepting, finish the requests in flight, stop the
/// workers (the relay publishes what the outbox holds), flush the audit queue and the traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds between SIGTERM and closing the listener, serving while `/readyz` answers 503.
    pub drain_secs: u64,
    /// Seconds the workers get to stop after the last request.
    pub workers_timeout_secs: u64,
    /// Seconds the requests in flight get to finish after the listener closed; those still
    /// running then are cut off (their clients see the connection close) and the stop goes on.
    pub requests_timeout_secs: u64,
}

/// Database settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…`; when absent, SQLite under `data_dir` (target `all` only).
    #[serde(skip_serializing)]
    pub url: Option<SecretString>,
    /// A file holding the URL (takes precedence over `url`).
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    /// PostgreSQL role switched to per transaction so that row-level security applies; empty
    /// to keep the login role (which must then not own the tables or bypass RLS).
    pub app_role: String,
    /// PostgreSQL statement timeout in milliseconds (0: none).
    pub statement_timeout_ms: u64,
}

/// Token verification settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Trust the development key published in this repository (and let `ehr dev-token` sign
    /// with it). Never in production.
    pub development_key: bool,
    /// The trusted token issuer (`iss`), when not using the development key.
    pub issuer: Option<String>,
    /// The issuer's JWKS URL.
    pub jwks_url: Option<String>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter directive (`info`, `ehr=debug`).
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            max_body_bytes: 16 * 1024 * 1024,
            public_url: None,
            database: DatabaseConfig {
                url: None,
                url_file: None,
                max_connections: 16,
                app_role: ehr_store::APP_ROLE.into(),
                statement_timeout_ms: 30_000,
            },
            auth: AuthConfig { development_key: true, issuer: None, jwks_url: None, jwks_file: None },
            gateway: ehr_gateway::GatewaySettings::default(),
            lab: ehr_lab_interface::LabSettings::default(),
            export: ehr_data_export::ExportSettings::default(),
            clins: ehr_clins_adapter::ClinsSettings::default(),
            eprescription: ehr_eprescription_adapter::EPrescriptionSettings::default(),
            log: LogConfig { format: "text".into(), level: "info".into() },
            telemetry: ehr_telemetry::TelemetrySettings::default(),
            shutdown: ShutdownConfig { drain_secs: 0, workers_timeout_secs: 15, requests_timeout_secs: 30 },
        }
    }
}

/// Configuration errors; each says which setting is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read {what} from {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl Config {
    /// Loads defaults, then the TOML file (if given), then `EHR_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("EHR_").filter(|k| !is_service_link(k.as_str()) && !is_cli_input(k.as_str())).split("__"),
        );
        figment.extract().map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The database URL for `target`, reading `url_file` if set.
    pub fn database_url(&self, target: Target) -> Result<String, ConfigError> {
        if let Some(path) = &self.database.url_file {
            let url = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                what: "database.url_file",
                path: path.clone(),
                source,
            })?;
            return Ok(url.trim().to_owned());
        }
        if let Some(url) = &self.database.url {
            return Ok(url.expose_secret().to_owned());
        }
        match target {
            Target::All => Ok(format!("sqlite://{}?mode=rwc", self.data_dir.join("ehr.db").display())),
            t => Err(ConfigError::Invalid(format!(
                "database.url (or EHR_DATABASE__URL / EHR_DATABASE__URL_FILE) is required for target {}",
                t.name()
            ))),
        }
    }

    /// The gateway's key-encryption key (base64), reading `secret_key_file` if set.
    pub fn secret_key(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.gateway.secret_key_file {
            let key = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                what: "gateway.secret_key_file",
                path: path.clone(),
                source,
            })?;
            return Ok(Some(key.trim().to_owned()));
        }
        Ok(self.gateway.secret_key.as_ref().map(|k| k.expose_secret().to_owned()))
    }

    /// Checks settings whose mistakes would otherwise surface only at the first request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rl = &self.gateway.rate_limit;
        for (name, per_sec, burst) in [
            ("user", rl.user_per_sec, rl.user_burst),
            ("tenant", rl.tenant_per_sec, rl.tenant_burst),
            ("login", rl.login_per_sec, rl.login_burst),
        ] {
            if !per_sec.is_finite() || per_sec < 0.001 || burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "gateway.rate_limit.{name}_per_sec must be at least 0.001 and {name}_burst at least 1"
                )));
            }
        }
        if self.gateway.access_token_secs > ehr_gateway::MAX_ACCESS_TOKEN_SECS {
            tracing::warn!("gateway.access_token_secs is capped at {} s", ehr_gateway::MAX_ACCESS_TOKEN_SECS);
        }
        Ok(())
    }

    /// The Redis URL of the gateway's security state, reading `redis_url_file` if set.
    pub fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.gateway.redis_url_file {
            let url = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                what: "gateway.redis_url_file",
                path: path.clone(),
                source,
            })?;
            return Ok(Some(url.trim().to_owned()));
        }
        Ok(self.gateway.redis_url.as_ref().map(|u| u.expose_secret().to_owned()))
    }

    /// The configuration as loggable JSON, secrets left out.
    pub fn redacted(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Variables read by CLI commands, not configuration (`EHR_ADMIN_PASSWORD` of
/// `ehr admin create-tenant`, `EHR_PASSWORD` of `ehr login`, `EHR_TOKEN` of `ehr connections`,
/// `EHR_BACKUP_PASSPHRASE` of `ehr backup` and `ehr restore`).
fn is_cli_input(key: &str) -> bool {
    key.eq_ignore_ascii_case("admin_password")
        || key.eq_ignore_ascii_case("password")
        || key.eq_ignore_ascii_case("token")
        || key.eq_ignore_ascii_case("backup_passphrase")
}

/// Kubernetes injects "service link" variables for every Service (`EHR_PORT`,
/// `EHR_GATEWAY_SERVICE_HOST`, `EHR_PORT_8080_TCP_ADDR`, …); with `EHR_` as our prefix they would
/// otherwise be rejected as unknown keys and stop the pod. No configuration key contains "port".
fn is_service_link(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "port"
        || k.starts_with("port_")
        || k.ends_with("_port")
        || k.contains("_port_")
        || k.contains("service_host")
        || k.contains("service_port")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn layers_and_unknown_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ehr.toml", "listen = \"0.0.0.0:9000\"\n[database]\nmax_connections = 4\n")?;
            jail.set_env("EHR_DATABASE__MAX_CONNECTIONS", "8");
            let c = Config::load(Some(Path::new("ehr.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "0.0.0.0:9000");
            assert_eq!(c.database.max_connections, 8);
            // Kubernetes service links are not configuration.
            jail.set_env("EHR_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("EHR_GATEWAY_SERVICE_HOST", "10.0.0.2");
            assert!(Config::load(None).is_ok());
            // The bootstrap password of `ehr admin create-tenant` is not configuration.
            jail.set_env("EHR_ADMIN_PASSWORD", "secret");
            assert!(Config::load(None).is_ok());
            jail.set_env("EHR_DATABSE__URL", "x");
            assert!(Config::load(None).is_err(), "a misspelt key must be rejected");
            Ok(())
        });
    }

    #[test]
    fn secrets_come_from_files_and_stay_out_of_logs() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("db-url", "postgres://u:pw-7f3a@h/db\n")?;
            jail.set_env("EHR_DATABASE__URL_FILE", "db-url");
            jail.set_env("EHR_GATEWAY__REDIS_URL", "redis://:pw-9c1d@h:6379");
            jail.set_env("EHR_GATEWAY__SECRET_KEY", "a2V5LTRlNjI=");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.database_url(Target::PatientRecord).map_err(|e| e.to_string())?, "postgres://u:pw-7f3a@h/db");
            let logged = c.redacted();
            for secret in ["pw-7f3a", "pw-9c1d", "a2V5LTRlNjI="] {
                assert!(!logged.contains(secret), "{secret} in {logged}");
            }
            Ok(())
        });
    }

    #[test]
    fn upstreams_take_one_url_an_array_or_a_comma_separated_string() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gateway.toml",
                "[gateway.upstreams]\npatient-record = \"http://pr:8080\"\norders = [\"http://o1:8080\", \"http://o2:8080/\"]\n",
            )?;
            let c = Config::load(Some(Path::new("gateway.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.gateway.upstreams["patient-record"].as_slice(), ["http://pr:8080"]);
            assert_eq!(c.gateway.upstreams["orders"].as_slice(), ["http://o1:8080", "http://o2:8080"]);
            assert_eq!(c.gateway.upstream_check_ms, 1000);

            // From the environment: the comma-separated string (or an inline array).
            jail.set_env(
                "EHR_GATEWAY__UPSTREAMS",
                r#"{orders="http://o1:8080,http://o2:8080",lab-interface=["http://l1:8080","http://l2:8080"]}"#,
            );
            jail.set_env("EHR_GATEWAY__UPSTREAM_CHECK_MS", "250");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.gateway.upstreams["orders"].as_slice(), ["http://o1:8080", "http://o2:8080"]);
            assert_eq!(c.gateway.upstreams["lab-interface"].as_slice(), ["http://l1:8080", "http://l2:8080"]);
            assert_eq!(c.gateway.upstream_check_ms, 250);

            jail.set_env("EHR_GATEWAY__UPSTREAMS", r#"{orders="orders:8080"}"#);
            assert!(Config::load(None).is_err(), "a base URL without a scheme must be refused");
            Ok(())
        });
    }
}
