//! The `/ops` page in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), against the reference app on real PostgreSQL, Redis and
//! the broker: the page is loaded while users run, its figures are checked against the
//! database, and a parked dead letter is replayed with the page's button; its
//! notification must then be delivered exactly once. A screenshot is saved as
//! `target/ops-page.png`.
//!
//! Uses the seed documents' topic and group names: in the `scenario` test group.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use concert::app::{App, Flows};
use concert::db::Db;
use concert::scenario::{drive_wave, ScenarioConfig};
use concert::store::Store;
use concert::webhook::ReceiverBehaviour;
use fantoccini::{Client, ClientBuilder, Locator};
use reliable_kafka_tests::*;

/// `chromedriver` on a free port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (install Debian's chromium and chromium-driver, as .ci/run does)"));
    Driver(child, port)
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"],
        }),
    );
    for _ in 0..100 {
        let mut builder = ClientBuilder::rustls().expect("rustls");
        let url = format!("http://127.0.0.1:{port}");
        if let Ok(c) = builder.capabilities(caps.clone()).connect(&url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver on port {port} does not answer");
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Clicks the element `css` finds. The page re-renders its tables every few seconds,
/// so an element found just before a refresh is stale by the click: it is found again
/// (a stale element takes no click, so retrying cannot click twice).
async fn click(c: &Client, css: &str) {
    for _ in 0..20 {
        match c.find(Locator::Css(css)).await.unwrap().click().await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("click on {css}: {e}"),
        }
    }
    panic!("{css} went stale 20 times in a row");
}

async fn notifications(pool: &sqlx::PgPool, payment_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM notification WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_page_shows_the_database_figures_and_replays_a_parked_record_once() {
    let driver = chromedriver();
    delete_topics(&kafka(), &concert::app::topics()).await;
    let (pg, schema) = isolated_pool().await;
    let pool: Db = pg.clone().into();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = Store::connect(&redis, Duration::from_secs(600), &schema).await.unwrap();
    // No declined payments: every payment notifies, and every 50th payment's webhook
    // always fails (dead-lettered, re-driven 3 times, parked).
    let cfg = ScenarioConfig {
        users: 120,
        failure_rate: 0.0,
        concurrency: 8,
        flows: Flows::All,
        inject_faults: true,
        progress: false,
        ..Default::default()
    };
    let app = App::start(pool.clone(), store, kafka(), &cfg.app_config()).await.unwrap();
    let base = app.api.url();
    let c = browser(driver.1).await;
    c.goto(&format!("{base}/ops")).await.unwrap();

    // Users run while the page is open.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let wave = drive_wave(&pool, &http, &base, &cfg, &indicatif::ProgressBar::hidden()).await.unwrap();
    assert_eq!(wave.errors, 0);
    let settled = eventually(Duration::from_secs(180), || async {
        let parked = pool.parked_messages().await.unwrap().len();
        let pending = pool.outbox_backlog().await.unwrap().pending;
        parked >= 2 && pending == 0 && app.consumers_idle_for(Duration::from_secs(3))
    })
    .await;
    assert!(settled, "the parked records did not appear, or the consumers did not settle");
    // From now on the webhook accepts everything: a replayed record succeeds.
    app.receiver.as_ref().unwrap().0.set_behaviour(ReceiverBehaviour::default());

    // The page's figures are the database's (it refreshes every second).
    let parked = pool.parked_messages().await.unwrap();
    let backlog = pool.outbox_backlog().await.unwrap();
    let shown = eventually(Duration::from_secs(20), || async {
        text(&c, "#parked-count").await == parked.len().to_string()
            && text(&c, "#outbox-pending").await == backlog.pending.to_string()
            && text(&c, "#outbox-parked").await == backlog.parked.to_string()
            && c.find_all(Locator::Css("#parked tr[data-parked-id]")).await.map(|r| r.len()).unwrap_or(0)
                == parked.len()
    })
    .await;
    assert!(
        shown,
        "page shows parked={} pending={}, the database {} and {}",
        text(&c, "#parked-count").await,
        text(&c, "#outbox-pending").await,
        parked.len(),
        backlog.pending
    );
    let dead_letters = text(&c, "#dead-letters").await;
    assert!(
        dead_letters.contains("payment-notification.DLQ") && dead_letters.contains("retries-exhausted"),
        "{dead_letters}"
    );
    let groups = text(&c, "#groups").await;
    assert!(groups.contains("telegram-notification"), "{groups}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ops-page.png");
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot of {} bytes", png.len());
    std::fs::write(&target, &png).unwrap();

    // Replay the oldest parked record with its button.
    let victim = parked.last().unwrap().clone();
    let payload: serde_json::Value = serde_json::from_slice(victim.payload.as_deref().unwrap()).unwrap();
    let payment_id = payload["payment_id"].as_i64().unwrap();
    assert_eq!(notifications(&pg, payment_id).await, 0, "a parked payment was never notified");
    click(&c, &format!("#parked tr[data-parked-id=\"{}\"] button.replay", victim.id)).await;
    let receiver = &app.receiver.as_ref().unwrap().0;
    let replayed = eventually(Duration::from_secs(60), || async {
        let gone_from_page = c
            .find_all(Locator::Css(&format!("#parked tr[data-parked-id=\"{}\"]", victim.id)))
            .await
            .unwrap()
            .is_empty();
        let db = pool.parked_messages().await.unwrap();
        gone_from_page
            && !db.iter().any(|p| p.id == victim.id)
            && db.len() == parked.len() - 1
            && notifications(&pg, payment_id).await == 1
    })
    .await;
    assert!(replayed, "the replayed record is still parked, or its notification did not happen");
    // Once: a little later, still one notification and one webhook call.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(notifications(&pg, payment_id).await, 1);
    assert_eq!(receiver.accepted().get(&payment_id), Some(&1));
    let audit: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rk_audit WHERE operator = 'ops-page' AND action = 'parked.replay'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(audit, 1);
    c.close().await.unwrap();
    app.stop().await.unwrap();
}
