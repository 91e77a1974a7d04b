//! `orch dashboard` in a real headless Chromium, driven over WebDriver by Debian's
//! chromedriver: a running job's page updates its counts in place, a failed item's error is
//! two clicks from the jobs list, a task's log is one click from its cell, and the page of a
//! job of 100,000 tasks shows every task (its render time is printed, not asserted: a timing
//! on a shared machine is no verdict). The tests also write the
//! screenshots the README shows (`ORCH_UPDATE_SCREENSHOTS=1` writes them into docs/images).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, fixture};
use fantoccini::{Client, ClientBuilder, Locator};
use orch_core::model::{TaskRecord, TaskState};

/// chromedriver and chromium, or `None` outside CI when they are not installed.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("chromedriver"), find("chromium")) {
        (Some(driver), Some(browser)) => Some((driver, browser)),
        _ => {
            orch_testkit::components::missing(
                "Chromium and its chromedriver",
                "apt-get install chromium chromium-driver",
            );
            None
        }
    }
}

/// A chromedriver process and a headless Chromium session through it; both end on drop.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let (driver_path, browser_path) = browser_programs()?;
        let port = orch_testkit::moto::free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": browser_path,
                // As root in a sandbox with no network: no sandbox, no GPU, no calls home.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps.as_object().unwrap().clone());
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no browser session: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Some(Browser {
            driver,
            client: Some(client),
            _profile: profile,
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// The first element `css` finds, waiting for it.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client()
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    async fn eval(&self, script: &str) -> serde_json::Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    /// The text of the first element `css` finds, waiting for it. Read in the page in one
    /// step: the page replaces what changed every 2 seconds, so an element found first may
    /// be gone when asked for its text.
    async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null",
            serde_json::to_string(css).unwrap()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let serde_json::Value::String(text) = self.eval(&script).await {
                return text;
            }
            assert!(Instant::now() < deadline, "no `{css}` on the page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element `css` finds, as a user would; found again if the page
    /// replaced it between finding and clicking.
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(e) if e.is_stale_element_reference() => {}
                Err(e) => panic!("cannot click `{css}`: {e}"),
            }
        }
        panic!("`{css}` kept being replaced");
    }

    /// Waits until the page has shown `view` (`jobs`, `job`, `task`) at least `updates` times.
    async fn wait_view(&self, view: &str, updates: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self
                .eval("return [document.body.dataset.view || '', Number(document.body.dataset.updates || 0)]")
                .await;
            if seen[0] == view && seen[1].as_u64().unwrap_or(0) >= updates {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {view} view did not show: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &png).unwrap();
        if std::env::var_os("ORCH_UPDATE_SCREENSHOTS").is_some() {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/images");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(name), &png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Ends the Chromium process; chromedriver goes with its kill below.
            tokio::task::block_in_place(|| rt.block_on(async { client.close().await.is_ok() }));
        }
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}

/// `orch dashboard` over `storage`, on a free port; its URL.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(s: &Scratch, storage: &str) -> Server {
        let mut child = s
            .orch_cmd(&["dashboard", "--storage", storage, "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn number(text: &str) -> u64 {
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_page_updates_in_place_and_its_failed_items_are_two_clicks_away() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let s = Scratch::new();
    s.jsonl("in.jsonl", 3_000);
    let job = s.write(
        "job.yaml",
        &common::local_job_yaml(
            "watched",
            &format!(
                "{{exec: {{command: [python3, {}]}}, concurrency: 2}}",
                fixture("flaky.py")
            ),
            3,
            "  tolerance: {maxFailedItemsPercent: 5}\n",
        )
        .replace("batch: {size: 250}", "batch: {size: 100}"),
    );
    // Ids divisible by 100 fail for good ("bad record N"); 10 ms an item: about 15 s.
    let mut run = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .env("ORCH_TEST_SLEEP", "0.01")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_db = s.path(".orch").join(orch_core::layout::state_db());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state_db.exists() {
        assert!(Instant::now() < deadline, "the job never stored its state");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = Server::start(&s, ".orch");

    browser.client().goto(&server.url).await.unwrap();
    browser.click("a.job-link").await;
    browser.wait_view("job", 1).await;
    let loaded_at = browser
        .eval("return document.documentElement.dataset.loadedAt")
        .await;
    let first = number(&browser.text("#items-done").await);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut shown = Vec::new();
    loop {
        let now = number(&browser.text("#items-done").await);
        if shown.last() != Some(&now) {
            shown.push(now);
        }
        if now == 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the job's end: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        first < 3_000 && shown.len() >= 3,
        "the counts were to change while the page was watched: {shown:?}"
    );
    assert!(
        shown.windows(2).all(|w| w[0] < w[1]),
        "items done only grow: {shown:?}"
    );
    assert_eq!(
        browser
            .eval("return document.documentElement.dataset.loadedAt")
            .await,
        loaded_at,
        "the page was reloaded"
    );
    assert!(run.wait().unwrap().success());
    browser.wait_view("job", 1).await;
    let status = s.status(&job);
    let failed = status["items"]["failed"].as_u64().unwrap();
    assert_eq!(failed, 30);
    // The page agrees with `orch status` once the job has ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    while number(&browser.text("#items-failed").await) != failed {
        assert!(Instant::now() < deadline, "the failed count never matched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.screenshot("dashboard-job.png").await;

    // From the jobs list: the job (one click), its error kind (two): the items and their errors.
    browser.client().goto(&server.url).await.unwrap();
    browser.wait_view("jobs", 1).await;
    browser.screenshot("dashboard-jobs.png").await;
    browser.click("a.job-link").await;
    browser
        .click("button.error-kind[data-kind='permanent']")
        .await;
    let message = browser.text("#sample-table .sample-message").await;
    let item: u64 = message
        .strip_prefix("bad record ")
        .unwrap_or_else(|| panic!("not the handler's error: {message:?}"))
        .parse()
        .unwrap();
    assert_eq!(item % 100, 0, "only ids divisible by 100 fail: {message}");
    let samples = browser
        .client()
        .find_all(Locator::Css("#sample-table .sample"))
        .await
        .unwrap();
    assert_eq!(samples.len(), 30, "every failed item is listed");

    // A task's cell leads to its attempts and its log.
    browser.click("#grid").await;
    browser.wait_view("task", 1).await;
    let log = browser.text("#log").await;
    assert!(log.contains("task"), "the task's log is shown: {log:?}");
    let attempts = browser
        .client()
        .find_all(Locator::Css("#attempts tr"))
        .await
        .unwrap();
    assert!(!attempts.is_empty(), "the task's attempts are listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_of_a_job_of_100k_tasks_shows_every_task() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let s = Scratch::new();
    let storage = s.path("big");
    std::fs::create_dir_all(&storage).unwrap();
    const TASKS: u32 = 100_000;
    let states = [
        TaskState::Succeeded,
        TaskState::Running,
        TaskState::Pending,
        TaskState::Failed,
    ];
    {
        let backends = orch_connect::open_backends(storage.to_str().unwrap(), s.path("scratch"))
            .await
            .unwrap();
        let job = orch_testkit::contract::sample_job("big-0000beef", TASKS);
        let tasks: Vec<TaskRecord> = (0..TASKS)
            .map(|i| {
                let mut t = TaskRecord::new(&job.id, i, 10, 1_000);
                // A quarter of each state, in runs of 7 so the grid has a pattern.
                t.state = states[(i / 7) as usize % states.len()];
                t.attempt = u32::from(t.state != TaskState::Pending);
                t
            })
            .collect();
        backends.state.create_job(&job, &tasks).await.unwrap();
    }
    let server = Server::start(&s, storage.to_str().unwrap());
    browser
        .client()
        .goto(&format!("{}#/job/big-0000beef", server.url))
        .await
        .unwrap();
    browser.wait_view("job", 1).await;
    let render_ms = browser
        .eval("return window.orchFirstRenderMs")
        .await
        .as_f64()
        .unwrap();
    eprintln!("a job of {TASKS} tasks: first render {render_ms:.0} ms after navigation");
    // Every task has its cell, and the legend counts them by state.
    let cells = browser
        .eval("const g = document.getElementById('grid'); return (g.width / g.dataset.cell) * (g.height / g.dataset.cell)")
        .await
        .as_f64()
        .unwrap();
    assert!(cells >= f64::from(TASKS), "{cells} cells for {TASKS} tasks");
    for (state, expected) in [("succeeded", 25_004), ("failed", 24_997)] {
        let shown = number(
            &browser
                .text(&format!("#legend [data-state='{state}']"))
                .await,
        );
        assert_eq!(shown, expected, "{state} tasks in the legend");
    }
}
