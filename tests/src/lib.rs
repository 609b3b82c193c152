//! Shared helpers of the integration tests: an isolated PostgreSQL schema, unique
//! topic and group names, and a plain consumer to read what was published.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::ClientConfig;
use reliable_kafka::KafkaConfig;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// `DATABASE_URL`, or the local server of the development machines.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A name no other test uses: `<prefix>-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A pool whose connections use a fresh schema (`search_path`), with the crate's
/// tables migrated into it. Returns the pool and the schema name.
pub async fn isolated_pool() -> (PgPool, String) {
    init_tracing();
    let schema = format!("rkt_{}", uuid::Uuid::new_v4().simple());
    let base: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    let mut admin = base.connect().await.expect("connect to PostgreSQL (DATABASE_URL)");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.unwrap();
    let pool = pool_in_schema(&schema, 10).await;
    reliable_kafka::migrate(&pool).await.expect("migrate");
    (pool, schema)
}

/// A pool on an existing schema.
pub async fn pool_in_schema(schema: &str, max: u32) -> PgPool {
    let base: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    PgPoolOptions::new().max_connections(max).connect_with(base.options([("search_path", schema)])).await.expect("pool")
}

/// `KAFKA_BROKERS` (default 127.0.0.1:9092) with settings that make group joins fast.
pub fn kafka() -> KafkaConfig {
    test_settings(KafkaConfig::from_env())
}

/// Settings for fast rebalances in tests.
pub fn test_settings(c: KafkaConfig) -> KafkaConfig {
    c.set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "1000")
}

/// Creates `topic` with `partitions` partitions (and its `.DLQ` with the same count).
pub async fn create_topics(kafka: &KafkaConfig, topic: &str, partitions: i32) {
    let dlq = format!("{topic}.DLQ");
    kafka.ensure_topics(&[(topic, partitions, 1), (&dlq, partitions, 1)]).await.expect("create topics");
}

/// Deletes `topics` (those that exist), so that a test that must use fixed topic
/// names starts from empty topics on a broker that outlives test runs.
pub async fn delete_topics(kafka: &KafkaConfig, topics: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().expect("admin client");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Unknown topics answer UnknownTopicOrPartition: nothing to delete.
    let _ = admin.delete_topics(&names, &opts).await.expect("delete topics");
    drop(admin);
}

/// Reads `topic` from the beginning with a fresh group until `n` records arrived (or
/// `timeout`), then keeps reading for `linger` to catch extra (duplicate) records.
pub async fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    timeout: Duration,
    linger: Duration,
) -> Vec<OwnedMessage> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", kafka.brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    let consumer: StreamConsumer = cc.create().expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut linger_until: Option<Instant> = None;
    loop {
        let until = linger_until.unwrap_or(deadline);
        let now = Instant::now();
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, consumer.recv()).await {
            Ok(Ok(m)) => {
                out.push(m.detach());
                if out.len() >= n && linger_until.is_none() {
                    linger_until = Some(Instant::now() + linger);
                }
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => break,
        }
    }
    drop(consumer);
    out
}

/// The value of header `name` as UTF-8.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Counts of each value of header `name`.
pub fn count_by_header(msgs: &[OwnedMessage], name: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for msg in msgs {
        *m.entry(header(msg, name).unwrap_or_default()).or_default() += 1;
    }
    m
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last
/// result.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts rows of a query returning one `bigint`.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// The event of the consumer tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, reliable_kafka::Event)]
#[event(topic = "unused.by.tests", key = key)]
pub struct Work {
    /// Record key.
    pub key: String,
    /// Sequence number.
    pub n: u32,
}

/// How a [`Recorder`] behaves.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Succeeds.
    Succeed,
    /// Fails transiently on the first `k` attempts of each record, then succeeds.
    FailFirst(u32),
    /// Fails transiently on the first `k` calls of the handler (across deliveries).
    FailCalls(u32),
    /// Always fails transiently.
    AlwaysTransient,
    /// Fails permanently.
    Permanent,
    /// Panics.
    Panic,
    /// Runs a failing SQL statement, ignores its error and returns `Ok`.
    SwallowDbError,
    /// Sleeps for the given time before succeeding.
    Sleep(Duration),
    /// Fails permanently for the record whose `n` is this, succeeds for the others.
    PermanentFor(u32),
    /// Answers `RetryAfter` with this wait for the record whose `n` is this, succeeds
    /// for the others.
    RetryAfterFor(u32, Duration),
    /// Fails transiently on the first `k` attempts of the record whose `n` is the
    /// first value, succeeds for the others: `TransientFor(n, k)`.
    TransientFor(u32, u32),
}

/// A handler that inserts a row into `effects` (no unique constraint, so a second
/// effect of the same message would show) and then behaves as its [`Mode`] says.
pub struct Recorder {
    /// Topic consumed.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Retry policy.
    pub backoff: reliable_kafka::BackOff,
    /// Behaviour.
    pub mode: Mode,
    /// Handler invocations.
    pub calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Retry topics instead of the back-off, when set.
    pub retry_topics: Option<reliable_kafka::RetryTopics>,
    /// Every call: message id, attempt, key, topic, when.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<Call>>>,
}

/// One call of a [`Recorder`].
#[derive(Debug, Clone)]
pub struct Call {
    /// The record's message id.
    pub message_id: uuid::Uuid,
    /// `ctx.attempt()`.
    pub attempt: u32,
    /// The record's key.
    pub key: String,
    /// The topic it was consumed from.
    pub topic: String,
    /// When the handler was called.
    pub at: Instant,
}

impl Recorder {
    /// A recorder on `topic`/`group` with a fast fixed back-off of `attempts` attempts.
    pub fn new(topic: &str, group: &str, mode: Mode, attempts: u32) -> Self {
        Recorder {
            topic: topic.to_owned(),
            group: group.to_owned(),
            backoff: reliable_kafka::FixedBackOff::new(Duration::from_millis(20), attempts).unwrap().into(),
            mode,
            calls: Default::default(),
            retry_topics: None,
            log: Default::default(),
        }
    }
}

/// A [`Recorder`] that fails its first two attempts of each record and retries
/// through the retry topics `{topic}-retry-1000` and `{topic}-retry-2000`.
pub fn retrying_recorder(topic: &str, group: &str) -> Recorder {
    let mut r = Recorder::new(topic, group, Mode::FailFirst(2), 1);
    r.retry_topics = Some(reliable_kafka::RetryTopics::new([Duration::from_secs(1), Duration::from_secs(2)]));
    r
}

/// A fresh SQLite database file in the temporary directory, with the crate's tables.
pub async fn sqlite_pool() -> sqlx::SqlitePool {
    init_tracing();
    let dir = std::env::temp_dir().join("reliable-kafka-tests");
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join(format!("{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    let reliable_kafka::AnyPool::Sqlite(pool) = reliable_kafka::AnyPool::connect(&url, 8).await.expect("open SQLite")
    else {
        unreachable!("sqlite URL")
    };
    reliable_kafka::migrate(&pool).await.expect("migrate");
    pool
}

/// `MYSQL_URL` (a server, no database), or the local MariaDB of the development
/// machines.
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// A fresh MySQL/MariaDB database (`rkt_<uuid>`) with the crate's tables.
pub async fn mysql_pool() -> sqlx::MySqlPool {
    mysql_database().await.0
}

/// A fresh MySQL/MariaDB database (`rkt_<uuid>`) with the crate's tables: a pool and
/// its URL.
pub async fn mysql_database() -> (sqlx::MySqlPool, String) {
    init_tracing();
    let server = mysql_url();
    let db = format!("rkt_{}", uuid::Uuid::new_v4().simple());
    let mut admin: sqlx::MySqlConnection =
        sqlx::Connection::connect(&server).await.expect("connect to MySQL (MYSQL_URL)");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await.unwrap();
    let url = format!("{}/{db}", server.trim_end_matches('/'));
    let reliable_kafka::AnyPool::MySql(pool) = reliable_kafka::AnyPool::connect(&url, 10).await.expect("open MySQL")
    else {
        unreachable!("mysql URL")
    };
    reliable_kafka::migrate(&pool).await.expect("migrate");
    (pool, url)
}

/// The effects table of [`Recorder`] on MySQL.
pub async fn create_effects_table_mysql(pool: &sqlx::MySqlPool) {
    sqlx::query(
        "CREATE TABLE effects (id BIGINT AUTO_INCREMENT PRIMARY KEY, message_id BINARY(16) NOT NULL, \
         `key` TEXT NOT NULL, n INT NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The effects table of [`Recorder`] on SQLite.
pub async fn create_effects_table_sqlite(pool: &sqlx::SqlitePool) {
    sqlx::query("CREATE TABLE effects (id INTEGER PRIMARY KEY, message_id BLOB NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// Inserts one effect per `(work, record)` with one multi-row statement (`unnest`).
///
/// # Errors
/// The insert's error.
pub async fn insert_effects(
    conn: &mut sqlx::PgConnection,
    events: &[(Work, reliable_kafka::RecordInfo)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = events.iter().map(|(_, r)| r.message_id).collect();
    let keys: Vec<&str> = events.iter().map(|(e, _)| e.key.as_str()).collect();
    let ns: Vec<i32> = events.iter().map(|(e, _)| e.n as i32).collect();
    sqlx::query("INSERT INTO effects (message_id, key, n) SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])")
        .bind(&ids)
        .bind(&keys)
        .bind(&ns)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The effects table of [`Recorder`].
pub async fn create_effects_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL, key text NOT NULL, n integer NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// Implements [`reliable_kafka::EventHandler`] for [`Recorder`] on one backend.
macro_rules! impl_recorder {
    ($db:ty, $insert:expr) => {
        impl reliable_kafka::EventHandler<$db> for Recorder {
            type Event = Work;

            fn options(&self) -> reliable_kafka::HandlerOptions {
                let o = reliable_kafka::HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone());
                match &self.retry_topics {
                    Some(r) => o.retry_topics(r.clone()),
                    None => o.backoff(self.backoff),
                }
            }

            fn handle<'a>(
                &'a self,
                event: Work,
                ctx: &'a mut reliable_kafka::HandlerContext<$db>,
            ) -> futures::future::BoxFuture<'a, Result<(), reliable_kafka::HandlerError>> {
                Box::pin(async move {
                    let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let id = ctx.message_id();
                    self.log.lock().unwrap().push(Call {
                        message_id: id,
                        attempt: ctx.attempt(),
                        key: event.key.clone(),
                        topic: ctx.record().topic.clone(),
                        at: Instant::now(),
                    });
                    sqlx::query($insert).bind(id).bind(&event.key).bind(event.n as i32).execute(ctx.tx()).await?;
                    match self.mode {
                        Mode::Panic => panic!("handler bug for n = {}", event.n),
                        Mode::SwallowDbError => {
                            let _ = sqlx::query("SELECT 1 / 0").execute(ctx.tx()).await;
                        }
                        Mode::Sleep(d) => tokio::time::sleep(d).await,
                        _ => {}
                    }
                    if let Mode::RetryAfterFor(n, after) = self.mode {
                        if event.n == n {
                            return Err(reliable_kafka::HandlerError::retry_after(
                                after,
                                std::io::Error::other("rate limited"),
                            ));
                        }
                    }
                    let fail = match self.mode {
                        Mode::Succeed => None,
                        Mode::FailFirst(k) if ctx.attempt() <= k => Some(true),
                        Mode::FailFirst(_) => None,
                        Mode::FailCalls(k) if call <= k => Some(true),
                        Mode::FailCalls(_) => None,
                        Mode::AlwaysTransient => Some(true),
                        Mode::Permanent => Some(false),
                        Mode::PermanentFor(n) => (event.n == n).then_some(false),
                        Mode::TransientFor(n, k) => (event.n == n && ctx.attempt() <= k).then_some(true),
                        Mode::Panic | Mode::SwallowDbError | Mode::Sleep(_) | Mode::RetryAfterFor(..) => None,
                    };
                    match fail {
                        None => Ok(()),
                        Some(true) => Err(reliable_kafka::HandlerError::transient(std::io::Error::other(format!(
                            "downstream unavailable (attempt {})",
                            ctx.attempt()
                        )))),
                        Some(false) => {
                            Err(reliable_kafka::HandlerError::permanent(std::io::Error::other("seat does not exist")))
                        }
                    }
                })
            }
        }
    };
}
impl_recorder!(reliable_kafka::Postgres, "INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)");
impl_recorder!(reliable_kafka::Sqlite, "INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)");
impl_recorder!(reliable_kafka::MySql, "INSERT INTO effects (message_id, `key`, n) VALUES (?, ?, ?)");

/// Produces one record with the given headers, bypassing the outbox.
pub async fn produce_raw(kafka: &KafkaConfig, topic: &str, key: &str, payload: &[u8], hdrs: &[(&str, &[u8])]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let mut h = OwnedHeaders::new();
    for (k, v) in hdrs {
        h = h.insert(Header { key: k, value: Some(*v) });
    }
    producer
        .send(FutureRecord::to(topic).key(key).payload(payload).headers(h), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// Produces `work` with a valid envelope and message id `id` to `partition`.
pub async fn produce_work_to(kafka: &KafkaConfig, topic: &str, partition: i32, id: uuid::Uuid, work: &Work) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use reliable_kafka::headers as h;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let (id, payload) = (id.to_string(), serde_json::to_vec(work).unwrap());
    let headers = OwnedHeaders::new()
        .insert(Header { key: h::MESSAGE_ID, value: Some(&id) })
        .insert(Header { key: h::EVENT_TYPE, value: Some("Work") })
        .insert(Header { key: h::SCHEMA_VERSION, value: Some("1") });
    let record = FutureRecord::to(topic).partition(partition).key(&work.key).payload(&payload).headers(headers);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
}

/// The sum of the high watermarks of `topic`'s partitions: records written to it.
pub fn records_in(kafka: &KafkaConfig, topic: &str) -> i64 {
    let c: rdkafka::consumer::BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let t = Duration::from_secs(10);
    let Ok(md) = c.fetch_metadata(Some(topic), t) else { return 0 };
    let partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    drop(md);
    partitions.into_iter().filter_map(|p| c.fetch_watermarks(topic, p, t).ok()).map(|(_, hi)| hi).sum()
}

/// Produces `work` with a valid envelope and message id `id`.
pub async fn produce_work(kafka: &KafkaConfig, topic: &str, id: uuid::Uuid, work: &Work) {
    use reliable_kafka::headers as h;
    let id = id.to_string();
    let payload = serde_json::to_vec(work).unwrap();
    produce_raw(
        kafka,
        topic,
        &work.key,
        &payload,
        &[(h::MESSAGE_ID, id.as_bytes()), (h::EVENT_TYPE, b"Work"), (h::SCHEMA_VERSION, b"1")],
    )
    .await;
}

/// Produces each `(id, work)` with a valid envelope, in order, with one producer.
pub async fn produce_works(kafka: &KafkaConfig, topic: &str, items: &[(uuid::Uuid, Work)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use reliable_kafka::headers as h;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(items.len());
    for (id, work) in items {
        let id = id.to_string();
        let payload = serde_json::to_vec(work).unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header { key: h::MESSAGE_ID, value: Some(&id) })
            .insert(Header { key: h::EVENT_TYPE, value: Some("Work") })
            .insert(Header { key: h::SCHEMA_VERSION, value: Some("1") });
        let record = FutureRecord::to(topic).key(&work.key).payload(&payload).headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    for p in pending {
        p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
}

/// One record exactly as it goes on the wire: any key, payload and headers bytes.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Payload bytes (`None`: a null payload, as in a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers, in order (a `None` value is a null header).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Produces `records` in order with one plain producer, bypassing the framework.
pub async fn produce_raw_many(kafka: &KafkaConfig, topic: &str, records: &[RawRecord]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: v.as_deref() });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &r.payload {
            record = record.payload(p.as_slice());
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    for p in pending {
        p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
}

/// A tansu broker of a test's own, on a free port with its storage in a temporary
/// directory: a broker the test may stop and start (the shared one of `KAFKA_BROKERS`
/// must keep serving the other tests). The binary is `$TANSU`, else `tansu` on `PATH`,
/// else `~/.cargo/bin/tansu` (where `.ci/run` installs it).
pub struct OwnBroker {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    /// Starts the broker and waits until it listens.
    ///
    /// # Panics
    /// When tansu cannot be found or started.
    pub fn start() -> OwnBroker {
        let dir = std::env::temp_dir().join(unique("rk-own-tansu"));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut b = OwnBroker { dir, port, child: None };
        b.resume();
        b
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    ///
    /// # Panics
    /// When it does not listen within 20 s.
    pub fn resume(&mut self) {
        let tansu = std::env::var_os("TANSU").map(std::path::PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
            let installed = home.join(".cargo/bin/tansu");
            if installed.exists() {
                installed
            } else {
                "tansu".into()
            }
        });
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).unwrap();
        let child = std::process::Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start tansu ({}): {e}; install it as .ci/run does", tansu.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {} within 20 s", self.address());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The reference app's way to a payment over its HTTP API, for user `user` and seat
/// `user`: a queue token, a reservation with it, then the checkout. Returns the
/// reservation id and the checkout's idempotency key.
///
/// # Panics
/// When a request fails or an answer is not the expected JSON.
pub async fn checkout_over_http(http: &reqwest::Client, base: &str, user: i64) -> (i64, String) {
    use concert::api::{CheckoutResponse, TokenResponse, QUEUE_TOKEN_HEADER};
    use serde_json::json;
    let t: TokenResponse = http
        .post(format!("{base}/api/queue/tokens"))
        .json(&json!({ "user_id": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r: concert::booking::Reservation = http
        .post(format!("{base}/api/reservations"))
        .header(QUEUE_TOKEN_HEADER, t.token)
        .json(&json!({ "user_id": user, "seat_id": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c: CheckoutResponse =
        http.post(format!("{base}/api/reservations/{}/checkout", r.id)).send().await.unwrap().json().await.unwrap();
    (r.id, c.idempotency_key.to_string())
}
