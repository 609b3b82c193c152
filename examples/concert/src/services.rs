//! The services a run of the application uses: the real ones where their variables
//! are set ([`Env`]), embedded stand-ins where not.

use std::path::PathBuf;
use std::time::Duration;

use reliable_kafka::{EmbeddedKafka, KafkaConfig};

use crate::app::{topic_specs, AppConfig};
use crate::config::Env;
use crate::db::Db;
use crate::store::Store;

/// Brokers of the embedded mock cluster (seed 001 runs 3, so that topics have 3
/// replicas).
pub const EMBEDDED_BROKERS: i32 = 3;

/// The database, key-value store and Kafka cluster of this run: the real services
/// where their variables are set, embedded stand-ins where not.
#[derive(Debug)]
pub struct Services {
    /// The database (`DATABASE_URL`, else a fresh SQLite file).
    pub db: Db,
    /// The key-value store (`REDIS_URL`, else in-process).
    pub store: Store,
    /// The Kafka cluster (`KAFKA_BROKERS`, else the embedded mock cluster).
    pub kafka: KafkaConfig,
    /// The embedded mock cluster, when `KAFKA_BROKERS` is unset (its topics are
    /// created with it: the admin API is not there).
    pub embedded_kafka: Option<EmbeddedKafka>,
    /// The SQLite file created for this run, removed at the end.
    temporary_db: Option<PathBuf>,
}

impl Services {
    /// Connects to the services of `env`, starting the embedded ones where a variable is
    /// unset; logs what is used.
    ///
    /// # Errors
    /// When a service cannot be reached or started.
    pub async fn start(env: &Env) -> anyhow::Result<Services> {
        let temporary_db = env
            .database_url
            .is_none()
            .then(|| std::env::temp_dir().join(format!("concert-{}.db", uuid::Uuid::now_v7().simple())));
        let database_url = match (&env.database_url, &temporary_db) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => format!("sqlite://{}", path.display()),
            (None, None) => unreachable!("a temporary database when DATABASE_URL is unset"),
        };
        let embedded_kafka = match env.kafka {
            Some(_) => None,
            None => {
                let cluster = EmbeddedKafka::start(EMBEDDED_BROKERS)?;
                cluster.create_topics(&topic_specs(&AppConfig::default(), EMBEDDED_BROKERS as usize))?;
                Some(cluster)
            }
        };
        let kafka = match (&env.kafka, &embedded_kafka) {
            (Some(k), _) => k.clone(),
            (None, Some(cluster)) => cluster.config(),
            (None, None) => unreachable!("an embedded cluster when KAFKA_BROKERS is unset"),
        };
        // The first log line says what this run uses.
        tracing::info!(
            database = %match &temporary_db {
                Some(path) => format!("SQLite {} (embedded default; DATABASE_URL unset)", path.display()),
                None => redact(&database_url),
            },
            kafka = %match &embedded_kafka {
                Some(c) => format!(
                    "librdkafka mock cluster of {EMBEDDED_BROKERS} brokers at {}, topics with replication {} (min.insync.replicas and other topic configs are not modelled by the mock; in-process, not durable; KAFKA_BROKERS unset)",
                    c.bootstrap_servers(),
                    AppConfig::default().replication_factor.min(EMBEDDED_BROKERS),
                ),
                None => kafka.brokers().to_owned(),
            },
            store = %match &env.redis_url {
                Some(url) => redact(url),
                None => "in-process key-value store (REDIS_URL unset)".to_owned(),
            },
            "concert services"
        );
        let db = Db::connect(&database_url, 30).await?;
        let ttl = Duration::from_secs(600);
        let store = match &env.redis_url {
            Some(url) => Store::connect(url, ttl, &env.redis_namespace).await?,
            None => Store::in_memory(ttl, &env.redis_namespace),
        };
        Ok(Services { db, store, kafka, embedded_kafka, temporary_db })
    }

    /// Closes the database, stops the embedded cluster and removes the temporary
    /// database file.
    pub async fn stop(self) {
        self.db.close().await;
        drop(self.embedded_kafka);
        if let Some(path) = self.temporary_db {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// `url` without its password.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
