//! The dashboard in a real browser: headless Chromium, driven through chromedriver, against the
//! real binary with tokens on. What is asserted is what a person sees: a token refused and
//! then taken, a job appearing and turning `succeeded` without a reload, a running job
//! cancelled by a click, a failed job's outcome and logs, a run's graph finishing node by node,
//! and pages that fit a phone. Screenshots of each view go to
//! `target/tmp/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};

use super::*;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Chromium and its driver are (Debian's `chromium` and `chromium-driver`, which
/// `.ci/run` installs): `None` when either is missing.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    Some((
        find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?,
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?,
    ))
}

async fn start_driver(driver: &std::path::Path) -> Driver {
    let port = wasmjobs_tests::free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

async fn open_browser(driver: &Driver, chromium: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Evaluates `script` (a function body that returns a value) in the page.
async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

/// Waits until `script` returns `true`, for at most `within`; panics with `what` and the page's
/// text otherwise.
async fn wait_for(c: &Client, what: &str, script: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        if eval(c, script).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > until {
            let text = eval(c, "return document.body.innerText").await;
            panic!(
                "{what}: not within {within:?}; the page shows:\n{}",
                text.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the state badge in the row or heading `selector`.
fn state_of(selector: &str) -> String {
    format!(
        "const b = document.querySelector('{selector} .state'); return b ? b.textContent : null"
    )
}

/// Clicks the element `css` finds, finding it again if the page redrew it meanwhile.
async fn click(c: &Client, css: &str) {
    for _ in 0..5 {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {}
                Err(e) => panic!("click {css}: {e}"),
            },
            Err(e) => panic!("no {css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} kept being redrawn");
}

/// Types `token` into the token dialog and signs in.
async fn enter_token(c: &Client, token: &str) {
    c.find(Locator::Id("token-input"))
        .await
        .expect("token input")
        .send_keys(token)
        .await
        .expect("type");
    click(c, "#token-save").await;
}

async fn screenshot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_jobs_and_runs_live_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and chromium-driver (.ci/run does)"
        );
        eprintln!(
            "SKIPPED: the dashboard's browser test needs chromium and chromium-driver (apt install chromium chromium-driver)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "dashboard-secret";
    let sha = wasmjobs::http::Token::from_secret("d", secret, wasmjobs::http::Scope::Admin).sha256;
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        format!("[[tokens]]\nname = \"d\"\nsha256 = \"{sha}\"\nscope = \"admin\"\n\n[queues.reports]\nweight = 2\n"),
    )
    .expect("config");
    let db = dir.path().join("d.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let http = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().expect("header"),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .expect("client")
    };
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    upload(&http, &server.url, guests::NOOP, "noop").await;
    let driver = start_driver(&chromedriver).await;
    let c = open_browser(&driver, &chromium).await;
    let long = Duration::from_secs(30);

    // A wrong token is refused in words; the right one opens the overview.
    c.goto(&server.url).await.expect("open the dashboard");
    wait_for(
        &c,
        "the token dialog",
        "return document.getElementById('token-dialog').open",
        long,
    )
    .await;
    screenshot(&c, "token").await;
    enter_token(&c, "not-the-token").await;
    wait_for(
        &c,
        "the wrong token's message",
        "return document.getElementById('token-dialog').open && document.getElementById('token-reason').textContent.includes('The token was refused')",
        long,
    )
    .await;
    enter_token(&c, secret).await;
    wait_for(
        &c,
        "the overview's counts",
        "return !document.getElementById('token-dialog').open && !!document.querySelector('[data-count=\"busy slots\"]') && document.querySelector('[data-count=\"busy slots\"] .n').textContent.endsWith('/ 2')",
        long,
    )
    .await;

    // A job appears in the list and turns succeeded without a reload.
    c.goto(&format!("{}/#/jobs", server.url))
        .await
        .expect("jobs");
    wait_for(
        &c,
        "the jobs table",
        "return !!document.getElementById('jobs')",
        long,
    )
    .await;
    let quick = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "testjob", "input": {"mode": "sleep", "ms": 5000}})],
    )
    .await[0];
    let row = format!("[data-job=\"{quick}\"]");
    wait_for(
        &c,
        "the new job in the list",
        &format!(
            "const s = (() => {{ {} }})(); return s === 'queued' || s === 'running'",
            state_of(&row)
        ),
        long,
    )
    .await;
    wait_for(
        &c,
        "the job turning succeeded",
        &format!("return (() => {{ {} }})() === 'succeeded'", state_of(&row)),
        long,
    )
    .await;
    screenshot(&c, "jobs").await;
    // Filtered by queue: a job of another queue is not listed, and the queue is shown.
    let other = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "testjob", "queue": "reports", "input": {"mode": "greet", "name": "r"}})],
    )
    .await[0];
    c.goto(&format!("{}/#/jobs?queue=reports", server.url))
        .await
        .expect("jobs of a queue");
    wait_for(
        &c,
        "only the queue's job",
        &format!(
            "const rows = [...document.querySelectorAll('#jobs tr[data-job]')]; return rows.length === 1 && rows[0].dataset.job === '{other}' && rows[0].textContent.includes('reports') && document.getElementById('filter-queue').value === 'reports'"
        ),
        long,
    )
    .await;
    // The queues view: pause and resume a queue by a click, as the API then says.
    c.goto(&format!("{}/#/queues", server.url))
        .await
        .expect("queues");
    let queue_state = "const r = document.querySelector('[data-queue=\"reports\"] .queue-state'); return r ? r.textContent : null";
    wait_for(
        &c,
        "the reports queue, active",
        &format!("return (() => {{ {queue_state} }})() === 'active'"),
        long,
    )
    .await;
    screenshot(&c, "queues").await;
    click(&c, "[data-queue=\"reports\"] button").await;
    wait_for(
        &c,
        "the reports queue, paused",
        &format!("return (() => {{ {queue_state} }})() === 'paused'"),
        long,
    )
    .await;
    let paused = |list: Value| {
        list["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|q| q["name"] == "reports")
            .map(|q| q["paused"].clone())
    };
    let listed: Value = http
        .get(format!("{}/v1/queues", server.url))
        .send()
        .await
        .expect("queues")
        .json()
        .await
        .expect("json");
    assert_eq!(paused(listed), Some(Value::Bool(true)));
    click(&c, "[data-queue=\"reports\"] button").await;
    wait_for(
        &c,
        "the reports queue, active again",
        &format!("return (() => {{ {queue_state} }})() === 'active'"),
        long,
    )
    .await;

    // A running job is cancelled by a click.
    let slow = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "testjob", "input": {"mode": "sleep", "ms": 60000}, "retry": {"max_attempts": 1}})],
    )
    .await[0];
    c.goto(&format!("{}/#/jobs/{slow}", server.url))
        .await
        .expect("job page");
    wait_for(
        &c,
        "the job running",
        &format!("return (() => {{ {} }})() === 'running'", state_of("h1")),
        long,
    )
    .await;
    click(&c, "#cancel").await;
    wait_for(
        &c,
        "the job cancelled after the click",
        &format!("return (() => {{ {} }})() === 'cancelled'", state_of("h1")),
        long,
    )
    .await;
    assert!(
        c.find(Locator::Id("retry")).await.is_ok(),
        "a cancelled job offers a retry"
    );

    // A failed job shows its outcome, its error, its logs and its concurrency key.
    let failed = submit_all(
        &http,
        &server.url,
        vec![
            json!({"module": "testjob", "input": {"mode": "panic"}, "retry": {"max_attempts": 1}, "concurrency_key": "acct-7", "concurrency_limit": 2}),
        ],
    )
    .await[0];
    wait_all_final(&http, &server.url, &[failed], long).await;
    c.goto(&format!("{}/#/jobs/{failed}", server.url))
        .await
        .expect("job page");
    wait_for(
        &c,
        "the failed job's outcome, error, logs and concurrency key",
        "const t = (id) => (document.getElementById(id) || {}).textContent || ''; return t('job-outcome') === 'trapped' && t('job-error').includes('boom on purpose') && t('job-logs').includes('boom on purpose') && t('attempts').includes('unreachable') && t('job-key') === 'acct-7 (at most 2 at once)'",
        long,
    )
    .await;
    screenshot(&c, "job").await;

    // A run's graph shows its nodes finishing; a click on a node opens its job.
    let definition = json!({"name": "pair", "nodes": [
        {"name": "a", "module": "testjob"},
        {"name": "b", "module": "testjob"},
        {"name": "c", "module": "noop", "needs": ["a"]}]});
    let r = http
        .post(format!("{}/v1/workflows", server.url))
        .json(&definition)
        .send()
        .await
        .expect("create workflow");
    assert!(r.status().is_success(), "{}", r.status());
    let run: Value = http
        .post(format!("{}/v1/workflows/pair/runs", server.url))
        .json(&json!({"input": {"mode": "sleep", "ms": 1500}}))
        .send()
        .await
        .expect("start run")
        .json()
        .await
        .expect("run");
    c.goto(&format!("{}/#/runs/{}", server.url, run["id"]))
        .await
        .expect("run page");
    let node_state = |n: &str| {
        format!(
            "(document.querySelector('#dag g[data-node=\"{n}\"]') || {{dataset: {{}}}}).dataset.state"
        )
    };
    wait_for(
        &c,
        "node a running while c waits",
        &format!(
            "return {} === 'running' && {} === 'pending'",
            node_state("a"),
            node_state("c")
        ),
        long,
    )
    .await;
    wait_for(
        &c,
        "every node succeeded",
        &format!(
            "return {} === 'succeeded' && {} === 'succeeded' && {} === 'succeeded' && (() => {{ {} }})() === 'succeeded'",
            node_state("a"),
            node_state("b"),
            node_state("c"),
            state_of("h1")
        ),
        long,
    )
    .await;
    screenshot(&c, "run").await;
    click(&c, "#dag g[data-node=\"c\"]").await;
    wait_for(
        &c,
        "node c's job page",
        "return location.hash.startsWith('#/jobs/') && document.querySelector('h1').textContent.startsWith('Job #') && (document.getElementById('job-facts') || {}).textContent.includes('noop')",
        long,
    )
    .await;

    // The other views, then the same pages on a phone's screen: nothing wider than it.
    for (view, name) in [
        ("#/", "overview"),
        ("#/runs", "runs"),
        ("#/workflows", "workflows"),
        ("#/modules", "modules"),
        ("#/schedules", "schedules"),
    ] {
        c.goto(&format!("{}/{view}", server.url))
            .await
            .expect("view");
        wait_for(
            &c,
            name,
            "return !!document.querySelector('main h1') && !document.querySelector('main > p.error') && document.getElementById('notice').hidden",
            long,
        )
        .await;
        if name == "overview" {
            // Seven jobs ended: five succeeded, one failed, one cancelled (reported every 2 s).
            wait_for(
                &c,
                "the overview's counts of ended jobs",
                "const n = (l) => (document.querySelector(`[data-count=\"${l}\"] .n`) || {}).textContent; return n('ended (1 h)') === '7' && n('running') === '0' && document.getElementById('rates').textContent.includes('failure rate 14.3 %')",
                long,
            )
            .await;
        }
        if name == "modules" {
            wait_for(
                &c,
                "the module list",
                "return (document.getElementById('modules') || {textContent: ''}).textContent.includes('testjob')",
                long,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        screenshot(&c, name).await;
    }
    c.set_window_size(390, 844).await.expect("phone size");
    for view in [
        "#/",
        "#/jobs",
        "#/queues",
        &format!("#/jobs/{failed}"),
        &format!("#/runs/{}", run["id"]),
    ] {
        c.goto(&format!("{}/{view}", server.url))
            .await
            .expect("view");
        wait_for(&c, view, "return !!document.querySelector('main h1')", long).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        screenshot(
            &c,
            &format!("phone-{}", view.trim_start_matches("#/").replace('/', "-")),
        )
        .await;
        let fits = eval(
            &c,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
        )
        .await;
        assert_eq!(
            fits,
            Value::Bool(true),
            "{view} is wider than a phone's screen"
        );
    }

    // A cancelled run is retried by a click: it runs again from where it stopped.
    c.set_window_size(1280, 800).await.expect("desktop size");
    let again: Value = http
        .post(format!("{}/v1/workflows/pair/runs", server.url))
        .json(&json!({"input": {"mode": "sleep", "ms": 60000}}))
        .send()
        .await
        .expect("start run")
        .json()
        .await
        .expect("run");
    c.goto(&format!("{}/#/runs/{}", server.url, again["id"]))
        .await
        .expect("run page");
    let run_state = "return (document.querySelector('main h1 .state') || {}).textContent";
    wait_for(
        &c,
        "the run running",
        &format!("{run_state} === 'running'"),
        long,
    )
    .await;
    click(&c, "#view button.danger").await;
    wait_for(
        &c,
        "the run cancelled",
        &format!("{run_state} === 'cancelled' && !!document.getElementById('retry-run')"),
        long,
    )
    .await;
    click(&c, "#retry-run").await;
    wait_for(
        &c,
        "the run running again, its nodes again",
        &format!(
            "{run_state} === 'running' && {} === 'running'",
            node_state("a")
        ),
        long,
    )
    .await;

    // Signing out forgets the token.
    click(&c, "#signout").await;
    wait_for(&c, "the token dialog again", "return document.getElementById('token-dialog').open && !localStorage.getItem('wasmjobs.token')", long).await;
    c.close().await.expect("close the browser");
    drop(driver);
}
