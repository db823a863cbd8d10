//! Running as several processes for months (real Postgres): one leader at a time, taken over
//! when it is killed; experiment statistics folded incrementally that equal a recomputation
//! over the whole log (late feedback, replays and backfill included) and decide the same;
//! the request log's partitions made ahead, rows moved out of the default partition, days
//! past retention dropped with their feedback; the migration moving an existing log.

mod common;

use std::time::{Duration, Instant};

use agp_rerank::experiment::{self, ArmMetrics};
use agp_rerank::store::experiment_stats as stats;
use agp_rerank::store::experiments::{self as experiments_db, ExperimentRow};
use agp_rerank::store::partitions;
use agp_rerank::store::rerank::{self as log_db, RerankLogRow};
use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use common::proc::{Proc, free_port, wait_ready};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A deterministic generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn log_row(
    id: &str,
    user: &str,
    version: i32,
    order: &[String],
    at: DateTime<Utc>,
    rng: &mut Rng,
) -> RerankLogRow {
    RerankLogRow {
        id: id.into(),
        created_at: at,
        project: "default".into(),
        user_id: user.into(),
        candidates: json!(order),
        result_order: json!(order),
        prompt_version: Some(version),
        prompt_versions: json!({"p_gen": version}),
        profile_id: None,
        model: Some("m".into()),
        fallback: (rng.below(10) == 0).then(|| "llm_error".to_string()),
        repaired: false,
        latency_ms: 1 + rng.below(60) as i32,
        usage: json!({"llm_calls": rng.below(3), "prompt_tokens": rng.below(400), "completion_tokens": rng.below(50)}),
        blend: json!({"version": 1}),
        history: json!(["h1"]),
        teams: None,
    }
}

/// A p_gen experiment between versions 1 and 2 that never decides on its own.
async fn start_experiment(app: &common::TestApp) -> ExperimentRow {
    for t in ["second {{history}}", "third {{history}}"] {
        let (s, b) = app
            .post("/v1/prompts/p_gen/versions", json!({"template": t}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/experiments",
            json!({"control": 1, "treatment": 2, "treatment_share": 0.5,
                   "settings": {"min_users": 1000000, "max_users": 10000000, "srm_alpha": 0,
                                "k": 3, "guardrails": {"min_requests": 10000000}}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().parse().unwrap();
    experiments_db::get(&app.pool, "default", id)
        .await
        .unwrap()
        .unwrap()
}

/// Every figure of two arms' metrics, equal up to float rounding.
fn assert_same(folded: &ArmMetrics, whole: &ArmMetrics) {
    let a = serde_json::to_value(folded).unwrap();
    let b = serde_json::to_value(whole).unwrap();
    for (k, x) in a.as_object().unwrap() {
        let (x, y) = (x.as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs())),
            "{k}: folded {x} vs whole log {y}\nfolded {a}\nwhole {b}"
        );
    }
}

/// The figures from the stored statistics against a recomputation over the whole log, and
/// the decision each gives.
async fn check_against_whole_log(pool: &PgPool, e: &ExperimentRow) -> (usize, usize) {
    stats::fold_pending(pool, "default", e, Duration::from_secs(10))
        .await
        .unwrap();
    let (c, t) = stats::metrics(pool, e).await.unwrap();
    let observed = experiments_db::observed_full(pool, "default", e)
        .await
        .unwrap();
    let (ot, oc): (Vec<_>, Vec<_>) = observed.iter().partition(|o| o.treatment);
    let wc = experiment::arm_metrics(e.control, &oc, e.settings.k);
    let wt = experiment::arm_metrics(e.treatment, &ot, e.settings.k);
    assert_same(&c, &wc);
    assert_same(&t, &wt);
    let mut settings = e.settings.clone();
    settings.min_users = 2;
    let plan = experiment::Plan {
        settings: &settings,
        design: e.design,
        share: e.treatment_share,
        cost_factor: 1.0,
        previous_p: 1.0,
        previous_srm_p: 1.0,
    };
    let folded = experiment::look(&c, &t, &plan);
    let whole = experiment::look(&wc, &wt, &plan);
    assert_eq!(folded.outcome, whole.outcome, "{folded:?} vs {whole:?}");
    assert!((folded.p_value - whole.p_value).abs() < 1e-9);
    (c.requests, t.requests)
}

#[tokio::test]
async fn folded_statistics_equal_the_whole_log_with_late_feedback_replays_and_backfill() {
    let app = common::spawn_app().await;
    let pool = &app.pool;
    let before_start = Utc::now() - Days::seconds(5);
    let e = start_experiment(&app).await;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let items: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
    let mut logged: Vec<RerankLogRow> = Vec::new();
    let mut feedback_sent = 0;

    // Rows that must never count: before the start, and a version outside the experiment.
    let mut outside = Vec::new();
    for n in 0..20 {
        let mut order = items.clone();
        order.rotate_left(n % 12);
        let at = if n % 2 == 0 { before_start } else { Utc::now() };
        let version = if n % 2 == 0 { 1 } else { 3 };
        outside.push(log_row(
            &format!("out{n}"),
            "u-out",
            version,
            &order[..6],
            at,
            &mut rng,
        ));
    }
    log_db::insert_rerank_logs(pool, &outside).await.unwrap();

    // Rows drained while the start committed never entered the inbox: the first fold finds
    // them (written here past the inbox, with plain SQL).
    for n in 0..15 {
        let mut order = items.clone();
        order.rotate_left(n % 12);
        let r = log_row(
            &format!("early{n}"),
            &format!("u{}", n % 7),
            1 + (n % 2) as i32,
            &order[..6],
            Utc::now(),
            &mut rng,
        );
        sqlx::query(
            "INSERT INTO rerank_requests (id, project, user_id, candidates, result_order, prompt_versions,
                                          latency_ms, usage, created_at, blend, history)
             VALUES ($1, 'default', $2, $3, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.id)
        .bind(&r.user_id)
        .bind(&r.result_order)
        .bind(&r.prompt_versions)
        .bind(r.latency_ms)
        .bind(&r.usage)
        .bind(r.created_at)
        .bind(&r.blend)
        .bind(&r.history)
        .execute(pool)
        .await
        .unwrap();
        let mut r = r;
        r.fallback = None;
        r.prompt_version = None;
        r.model = None;
        logged.push(r);
    }

    for round in 0..6 {
        // New requests of 40 users split by the label's hash (any split will do here).
        let mut batch = Vec::new();
        for n in 0..(30 + rng.below(40)) {
            let user = format!("u{}", rng.below(40));
            let version = if rng.below(2) == 0 { 1 } else { 2 };
            let mut order = items.clone();
            let shift = rng.below(12) as usize;
            order.rotate_left(shift);
            let r = log_row(
                &format!("r{round}-{n}"),
                &user,
                version,
                &order[..6],
                Utc::now(),
                &mut rng,
            );
            batch.push(r);
        }
        log_db::insert_rerank_logs(pool, &batch).await.unwrap();
        // A replayed journal batch inserts nothing and counts nothing.
        log_db::insert_rerank_logs(pool, &batch[..batch.len() / 2])
            .await
            .unwrap();
        logged.extend(batch);
        // Feedback on any request so far: late for the ones folded in earlier rounds; some
        // duplicates and some kinds that are not positive.
        for _ in 0..25 {
            let r = &logged[rng.below(logged.len() as u64) as usize];
            let order: Vec<String> = serde_json::from_value(r.result_order.clone()).unwrap();
            let item = &order[rng.below(order.len() as u64) as usize];
            let kind = ["click", "purchase", "view"][rng.below(3) as usize];
            for _ in 0..=rng.below(2) {
                log_db::insert_feedback(
                    pool,
                    "default",
                    &r.id,
                    r.created_at,
                    &r.user_id,
                    item,
                    kind,
                )
                .await
                .unwrap();
                feedback_sent += 1;
            }
        }
        if round % 2 == 1 {
            check_against_whole_log(pool, &e).await;
        }
    }
    let (c, t) = check_against_whole_log(pool, &e).await;
    assert_eq!(
        c + t,
        logged.len(),
        "every request of the arms counted once"
    );
    assert!(feedback_sent > 100);
    assert_eq!(stats::pending(pool, e.id).await.unwrap(), 0);

    // A look through the API reads the same figures, and the ended experiment drops what
    // only folding needed.
    let (s, b) = app.get(&format!("/v1/experiments/{}", e.id)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["result"]["control"]["requests"].as_u64(),
        Some(c as u64),
        "{b}"
    );
    assert_eq!(
        b["result"]["treatment"]["requests"].as_u64(),
        Some(t as u64),
        "{b}"
    );
    let (s, b) = app
        .post(&format!("/v1/experiments/{}/stop", e.id), json!({}))
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("stopped")));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM experiment_users")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn feedback_on_a_request_counts_in_its_experiment_through_the_api() {
    let app = common::spawn_app().await;
    let e = start_experiment(&app).await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let mut ids = Vec::new();
    for u in 0..30 {
        let (s, b) = app
            .post(
                "/v1/rerank",
                json!({"user_id": format!("u{u}"), "candidates": [{"id": "i0"}, {"id": "i1"}, {"id": "i2"}]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        ids.push((
            format!("u{u}"),
            b["id"].as_str().unwrap().to_string(),
            b["results"][1]["id"].clone(),
        ));
    }
    for (user, id, second) in &ids {
        let (s, b) = app
            .post(
                "/v1/feedback",
                json!({"request_id": id, "user_id": user, "item_id": second, "kind": "click"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["recorded"], true);
    }
    let (s, b) = app.get(&format!("/v1/experiments/{}", e.id)).await;
    assert_eq!(s, 200, "{b}");
    let r = &b["result"];
    let requests =
        r["control"]["requests"].as_u64().unwrap() + r["treatment"]["requests"].as_u64().unwrap();
    assert_eq!(requests, 30, "{b}");
    for arm in ["control", "treatment"] {
        if r[arm]["requests"].as_u64() > Some(0) {
            assert_eq!(r[arm]["mrr"], 0.5, "every click on the second item: {b}");
            assert_eq!(r[arm]["user_click_through"], 1.0, "{b}");
        }
    }
    // The same outcome again is refused as a duplicate and changes nothing.
    let (user, id, second) = &ids[0];
    let (s, b) = app
        .post(
            "/v1/feedback",
            json!({"request_id": id, "user_id": user, "item_id": second, "kind": "click"}),
        )
        .await;
    assert_eq!((s, &b["recorded"]), (200, &json!(false)), "{b}");
    check_against_whole_log(&app.pool, &e).await;
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn partitions_are_made_ahead_and_days_past_retention_are_dropped_with_their_feedback() {
    let (pool, _) = common::fresh_db().await;
    let today = Utc::now().date_naive();
    let days = partitions::days(&pool).await.unwrap();
    for d in 0..=partitions::DAYS_AHEAD {
        assert!(days.contains(&(today + Days::days(d))), "{days:?}");
    }
    assert!(days.contains(&(today - Days::days(1))));

    // Rows of a day without a partition land in the default partition; making the day's
    // partition moves them there.
    let mut rng = Rng(7);
    let order: Vec<String> = (0..4).map(|i| format!("i{i}")).collect();
    let old = Utc::now() - Days::days(40);
    let mut rows = Vec::new();
    for n in 0..50 {
        rows.push(log_row(&format!("old{n}"), "u", 1, &order, old, &mut rng));
        rows.push(log_row(
            &format!("new{n}"),
            "u",
            1,
            &order,
            Utc::now(),
            &mut rng,
        ));
    }
    log_db::insert_rerank_logs(&pool, &rows).await.unwrap();
    for r in &rows {
        log_db::insert_feedback(&pool, "default", &r.id, r.created_at, "u", "i0", "click")
            .await
            .unwrap();
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests_default").await,
        50
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM feedback_default").await,
        50
    );
    let made = partitions::ensure(&pool, old.date_naive(), old.date_naive())
        .await
        .unwrap();
    assert_eq!(made, vec![old.date_naive()]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests_default").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM feedback_default").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests").await,
        100
    );
    // Feedback still finds its request (the lookup the handler does).
    let found = log_db::logged_request(&pool, "default", "old3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.created_at.date_naive(), old.date_naive());

    // Thirty days kept: the 40-day-old day goes, with its feedback; today stays.
    let bytes_before = partitions::table_bytes(&pool, "rerank_requests")
        .await
        .unwrap();
    let m = partitions::maintain(&pool, today, 30).await.unwrap();
    assert_eq!(m.dropped, vec![old.date_naive()], "{m:?}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests").await,
        50
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM feedback").await, 50);
    assert!(
        partitions::table_bytes(&pool, "rerank_requests")
            .await
            .unwrap()
            < bytes_before
    );
    // Idempotent.
    assert_eq!(
        partitions::maintain(&pool, today, 30).await.unwrap(),
        Default::default()
    );

    // Forty days later, everything of today is past retention, and the days ahead exist.
    let later = today + Days::days(40);
    let m = partitions::maintain(&pool, later, 30).await.unwrap();
    assert!(m.dropped.contains(&today), "{m:?}");
    assert!(
        m.made
            .contains(&(later + Days::days(partitions::DAYS_AHEAD))),
        "{m:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM feedback").await, 0);
    let days = partitions::days(&pool).await.unwrap();
    let horizon = partitions::horizon(later, 30);
    assert!(days.iter().all(|d| *d >= horizon), "{days:?}");

    // A row older than retention that reaches the default partition (a journal replay of a
    // very old file) is deleted by the next pass.
    let ancient = log_row(
        "ancient",
        "u",
        1,
        &order,
        Utc::now() - Days::days(400),
        &mut rng,
    );
    log_db::insert_rerank_logs(&pool, &[ancient]).await.unwrap();
    let m = partitions::maintain(&pool, today, 30).await.unwrap();
    assert_eq!(m.deleted_default_rows, 1, "{m:?}");
}

#[tokio::test]
async fn the_migration_moves_an_existing_log_and_its_feedback_into_partitions() {
    let (admin, _) = common::fresh_db().await;
    // A database with the schema as it was before partitioning.
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = admin.connect_options().as_ref().clone().database(&name);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(url)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().as_ref() < "20261204")
    {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let at = [
        "2026-10-01T10:00:00Z",
        "2026-11-15T23:59:59Z",
        "2026-11-16T00:00:00Z",
    ];
    for (n, t) in at.iter().enumerate() {
        sqlx::query(
            "INSERT INTO rerank_requests (id, project, user_id, candidates, result_order, latency_ms, created_at)
             VALUES ($1, 'default', 'u', '[\"a\",\"b\"]', '[\"b\",\"a\"]', 3, $2::timestamptz)",
        )
        .bind(format!("rr{n}"))
        .bind(t)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO feedback (project, request_id, user_id, item_id, kind) VALUES ('default', $1, 'u', 'a', 'click')",
        )
        .bind(format!("rr{n}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    agp_rerank::app::prepare_database(&pool).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests").await,
        3
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM feedback").await, 3);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rerank_requests_default").await,
        0
    );
    let days = partitions::days(&pool).await.unwrap();
    for d in ["2026-10-01", "2026-11-15", "2026-11-16"] {
        assert!(days.contains(&day(d)), "{d}: {days:?}");
    }
    let in_day: i64 = count(&pool, "SELECT count(*) FROM rerank_requests_p20261115").await;
    assert_eq!(in_day, 1, "the day boundary is UTC midnight");
    let joined = count(
        &pool,
        "SELECT count(*) FROM feedback f JOIN rerank_requests r ON r.id = f.request_id AND r.created_at = f.request_at",
    )
    .await;
    assert_eq!(joined, 3, "feedback carries its request's time");
    // New feedback ids continue after the old ones.
    let r = log_db::logged_request(&pool, "default", "rr1")
        .await
        .unwrap()
        .unwrap();
    log_db::insert_feedback(&pool, "default", "rr1", r.created_at, "u", "b", "click")
        .await
        .unwrap();
    assert_eq!(count(&pool, "SELECT max(id) FROM feedback").await, 4);
}

/// `agp serve` on a shared database, with its own journal folder.
fn serve(db_url: &str, data_dir: &std::path::Path, port: u16) -> Proc {
    let mut c = common::proc::agp(data_dir);
    c.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--workers",
        "0",
    ])
    .env("DATABASE_URL", db_url)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::inherit());
    Proc::spawned(c.spawn().expect("spawn agp serve"))
}

async fn leader_of(client: &reqwest::Client, port: u16) -> Option<String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let b: Value = r.json().await.ok()?;
    b["checks"]["leader"].as_str().map(str::to_string)
}

async fn looks(pool: &PgPool, id: uuid::Uuid) -> i32 {
    sqlx::query_scalar("SELECT looks FROM experiments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_leads_and_another_takes_over_within_seconds_when_it_is_killed() {
    let app = common::spawn_app().await;
    let e = start_experiment(&app).await;
    let client = reqwest::Client::new();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let mut procs: Vec<Option<Proc>> = Vec::new();
    for i in 0..2 {
        let mut p = serve(&app.db_url, dirs[i].path(), ports[i]);
        wait_ready(&client, &format!("http://127.0.0.1:{}", ports[i]), &mut p).await;
        procs.push(Some(p));
    }
    // Exactly one leads; the other names it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let said = [
            leader_of(&client, ports[0]).await,
            leader_of(&client, ports[1]).await,
        ];
        let leading: Vec<usize> = (0..2)
            .filter(|&i| said[i].as_deref() == Some("this process"))
            .collect();
        if leading.len() == 1 {
            let other = said[1 - leading[0]].clone().unwrap_or_default();
            assert!(
                other.contains(&format!("127.0.0.1:{}", ports[leading[0]])),
                "{other}"
            );
            break leading[0];
        }
        assert!(leading.len() < 2, "two leaders: {said:?}");
        assert!(Instant::now() < deadline, "nobody leads: {said:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The leader looks at the running experiment on its own (no read needed).
    let first = looks(&app.pool, e.id).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        looks(&app.pool, e.id).await > first,
        "the leader looks every 5 s"
    );

    // kill -9: the survivor takes over within seconds and keeps looking.
    let mut killed = procs[leader].take().unwrap().take();
    // SAFETY: killing our own child process.
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let _ = killed.wait();
    let survivor = 1 - leader;
    loop {
        if leader_of(&client, ports[survivor]).await.as_deref() == Some("this process") {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "not taken over within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed_at.elapsed();
    eprintln!("leader taken over {} ms after kill -9", took.as_millis());
    let after = looks(&app.pool, e.id).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(looks(&app.pool, e.id).await > after, "the new leader looks");
    common::proc::terminate(procs[survivor].take().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_postgres_away_stops_in_bounded_time_and_the_next_process_drains_the_journal()
{
    use sqlx::ConnectOptions;
    let (direct, db_url) = common::fresh_db().await;
    let opts: sqlx::postgres::PgConnectOptions = db_url.parse().unwrap();
    let proxy = common::proxy::PgProxy::start(opts.get_host().to_string(), opts.get_port()).await;
    let via_proxy = opts.clone().port(proxy.port).to_url_lossy().to_string();
    let llm = agp_rerank::llm::test_server::TestLlm::start(common::reversing_llm).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        let mut c = common::proc::agp(dir.path());
        c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &via_proxy)
            .env("AGP_LLM_BASE_URL", &llm.base_url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        Proc::spawned(c.spawn().expect("spawn agp serve"))
    };
    let mut server = start();
    wait_ready(&client, &base, &mut server).await;
    let items: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    let r = client
        .put(format!("{base}/v1/items"))
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/interactions"))
        .json(&json!({"interactions": [{"user_id": "u1", "item_id": "i0"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = json!({"user_id": "u1", "candidates": [{"id": "i1"}, {"id": "i2"}, {"id": "i3"}]});
    let rerank = || async {
        let r = client
            .post(format!("{base}/v1/rerank"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        b["id"].as_str().unwrap().to_string()
    };
    rerank().await;
    proxy.set_down(true);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(rerank().await);
    }
    // SIGTERM while Postgres is away: the drain is given up after its bound, exit 0.
    let stopping = Instant::now();
    common::proc::terminate(server).await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(20), "stopped after {took:?}");
    let in_log = |ids: Vec<String>| {
        let direct = direct.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rerank_requests WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_one(&direct)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        in_log(ids.clone()).await,
        0,
        "the rows were still in the journal"
    );
    // Postgres back, a new process on the data dir: the rows arrive.
    proxy.set_down(false);
    let mut next = start();
    wait_ready(&client, &base, &mut next).await;
    let since = Instant::now();
    while in_log(ids.clone()).await < 3 {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "journal rows never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "SIGTERM with Postgres away: stopped in {} ms",
        took.as_millis()
    );
    common::proc::terminate(next).await;
}
