//! What the benchmark binaries share: a configuration for the real application on a throw-away
//! SQLite file or PostgreSQL database, rate limits out of the way, and its removal afterwards;
//! the synthetic HL7 result messages and the process's peak memory.

use ehr_app::Config;
use ehr_hl7v2::jahis::MessageHeader;
use ehr_hl7v2::{
    Charset, CodedElement, Coding, ControlId, Observation, OrderResults, Patient, PersonName, Sex, Specimen, Timestamp,
    build_oul_r22,
};
use sea_orm::{ConnectionTrait, Database};
use std::path::PathBuf;

/// A benchmark's application configuration, its scratch directory and, on PostgreSQL, the
/// database created for it.
pub struct Scratch {
    pub config: Config,
    pub dir: PathBuf,
    postgres: Option<(String, String)>,
}

impl Scratch {
    /// A fresh scratch directory (`<tmp>/<prefix>-<uuid>`) and database: SQLite in the directory,
    /// or a new database on the server of `postgres_url` (an admin URL ending in `/<db>`); Redis
    /// (the gateway's state and the event bus) when `redis_url` is given. Rate limits are lifted:
    /// the load generator is one client far above a person's rate.
    pub async fn new(prefix: &str, postgres_url: Option<&str>, redis_url: Option<&str>) -> Result<Self, String> {
        let mut config = Config::default();
        config.gateway.rate_limit.user_per_sec = 1e6;
        config.gateway.rate_limit.user_burst = 1_000_000;
        config.gateway.rate_limit.tenant_per_sec = 1e6;
        config.gateway.rate_limit.tenant_burst = 1_000_000;
        // 32 bytes of zeros, base64: a throwaway key for a throwaway database.
        config.gateway.secret_key = Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned().into());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        config.data_dir = dir.clone();
        let mut postgres = None;
        match postgres_url {
            None => config.database.url = Some(format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display()).into()),
            Some(admin) => {
                let name = format!("ehr_bench_{}", uuid::Uuid::new_v4().simple());
                let conn = Database::connect(admin).await.map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}")).await.map_err(|e| e.to_string())?;
                let (base, _) = admin.rsplit_once('/').ok_or("postgres url")?;
                config.database.url = Some(format!("{base}/{name}").into());
                postgres = Some((admin.to_owned(), name));
            }
        }
        if let Some(url) = redis_url {
            config.gateway.redis_url = Some(url.to_owned().into());
            config.gateway.redis_prefix = format!("bench-{}:", uuid::Uuid::new_v4().simple());
        }
        Ok(Self { config, dir, postgres })
    }

    /// The URL of the PostgreSQL database created for the benchmark (none on SQLite).
    pub fn postgres_database_url(&self) -> Option<String> {
        let (admin, name) = self.postgres.as_ref()?;
        let (base, _) = admin.rsplit_once('/')?;
        Some(format!("{base}/{name}"))
    }

    /// Removes the directory and drops the database (best effort). Call after the application
    /// stopped: PostgreSQL refuses to drop a database in use (`WITH (FORCE)` ends the rest).
    pub async fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((admin, name)) = self.postgres
            && let Ok(conn) = Database::connect(admin.as_str()).await
        {
            let _ = conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// Peak resident set size of this process in KiB (`VmHWM`), since the last [`reset_peak`].
pub fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak resident set size to the current one (Linux: `5` to clear_refs).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The tests of the synthetic result messages: (JLAC10 code, name, unit).
const TESTS: &[(&str, &str, &str)] = &[
    ("3B035000002327201", "AST", "U/L"),
    ("3B045000002327201", "ALT", "U/L"),
    ("3B090000002327101", "γ-GT", "U/L"),
    ("3C015000002327101", "クレアチニン", "mg/dL"),
    ("3C020000002327101", "尿酸", "mg/dL"),
    ("3C025000002327101", "尿素窒素", "mg/dL"),
    ("3F050000002327101", "総コレステロール", "mg/dL"),
    ("3F015000002327101", "中性脂肪", "mg/dL"),
    ("3D046000001906202", "HbA1c", "%"),
    ("3J010000002327101", "総ビリルビン", "mg/dL"),
];

/// A JAHIS OUL^R22 result message for order `placer` of patient `patient_id` with `n` numeric
/// results and control id `control`.
pub fn results_message(placer: &str, patient_id: &str, n: usize, control: &str) -> Result<String, String> {
    let patient = Patient {
        id: patient_id.to_owned(),
        kanji_name: Some(PersonName::new("山田", "花子")),
        kana_name: Some(PersonName::new("ヤマダ", "ハナコ")),
        birth_date: Timestamp::new("19700102").ok(),
        sex: Some(Sex::Female),
        ..Patient::default()
    };
    let observations = (0..n)
        .map(|i| {
            let (code, name, unit) = TESTS[i % TESTS.len()];
            Observation {
                set_id: (i + 1).to_string(),
                value_type: "NM".into(),
                code: CodedElement {
                    primary: Coding::new(code, name, "JC10"),
                    alternate: Some(Coding::new(format!("L{i:04}"), name, "99LAB")),
                },
                sub_id: if i >= TESTS.len() { (i / TESTS.len()).to_string() } else { String::new() },
                values: vec![format!("{}.{}", 20 + i, i % 10)],
                units: Some(Coding::new(unit, unit, "99LAB")),
                reference_range: Some("10-40".into()),
                abnormal_flags: Vec::new(),
                status: "F".into(),
                observed_at: Timestamp::new("20261125110000").ok(),
                notes: Vec::new(),
            }
        })
        .collect();
    let order = OrderResults {
        placer_order_number: placer.to_owned(),
        filler_order_number: format!("F{control}"),
        service: CodedElement { primary: Coding::new("3B035000002327201", "AST", "JC10"), alternate: None },
        specimen: Some(Specimen {
            id: None,
            kind: Coding::new("023", "血清", "JC10"),
            collected_at: Timestamp::new("20261125091000").ok(),
        }),
        observations,
        ..OrderResults::default()
    };
    let header = MessageHeader::new(
        ("LABSYS", "LABCO"),
        ("HIS", "HOSP"),
        ControlId::new(control).map_err(|e| e.to_string())?,
        Timestamp::new("20261125120000").map_err(|e| e.to_string())?,
        Charset::Iso2022Jp,
    );
    build_oul_r22(&patient, &[order], &header).map_err(|e| e.to_string())
}
