//! What the benchmark binaries share: a configuration for the real application on a throw-away
//! SQLite file or PostgreSQL database, rate limits out of the way, and its removal afterwards.

use ehr_app::Config;
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
