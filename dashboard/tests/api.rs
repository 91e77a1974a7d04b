//! The dashboard's API over a real embedded storage (SQLite, files), served on a loopback
//! port and asked over HTTP: what the pages read, and who may act.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_core::model::{TaskRecord, TaskState};
use orch_dashboard::Dashboard;
use serde_json::Value;

struct Served {
    url: String,
    backends: orch_core::platform::Backends,
    _dir: tempfile::TempDir,
}

async fn serve(actions: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let backends = orch_connect::open_backends(
        dir.path().join("storage").to_str().unwrap(),
        dir.path().join("scratch"),
    )
    .await
    .unwrap();
    let job = orch_testkit::contract::sample_job("api-00000001", 4);
    let tasks: Vec<TaskRecord> = [
        TaskState::Succeeded,
        TaskState::Running,
        TaskState::Failed,
        TaskState::Pending,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, state)| {
        let mut t = TaskRecord::new(&job.id, i as u32, 10, 1_000);
        t.state = state;
        t
    })
    .collect();
    let mut tasks = tasks;
    tasks[0].items_ok = 8;
    tasks[0].items_failed = 2;
    tasks[0].items_failed_by_kind.insert("permanent".into(), 2);
    tasks[1].items_ok = 4;
    backends.state.create_job(&job, &tasks).await.unwrap();
    let dashboard = Dashboard::new(backends.clone(), actions, None).loopback_only();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orch_dashboard::serve(
        dashboard,
        listener,
        std::future::pending(),
    ));
    Served {
        url,
        backends,
        _dir: dir,
    }
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, header: bool) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url);
    if header {
        req = req.header("x-orch-action", "1");
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_pages_read_counts_states_and_errors_from_the_rows() {
    let s = serve(false).await;
    let (code, jobs) = get(&format!("{}/api/jobs", s.url)).await;
    assert_eq!(code, 200);
    assert_eq!(jobs["actions"], false);
    let job = &jobs["jobs"][0];
    assert_eq!(job["id"], "api-00000001");
    // Done: the succeeded task's 10, the running one's 4 by its heartbeat, the failed task's 10.
    assert_eq!(job["itemsDone"], 24, "{job}");
    assert_eq!(job["itemsFailed"], 12, "{job}");
    assert_eq!(job["tasksRunning"], 1);

    let (code, page) = get(&format!("{}/api/jobs/api-00000001", s.url)).await;
    assert_eq!(code, 200);
    assert_eq!(page["grid"], "srfp");
    assert_eq!(page["tasksByState"]["failed"], 1);
    assert_eq!(page["errorsByKind"]["permanent"], 2);
    assert_eq!(page["errorsByKind"]["task"], 10);

    let (code, task) = get(&format!("{}/api/jobs/api-00000001/tasks/1", s.url)).await;
    assert_eq!(code, 200);
    assert_eq!(task["task"]["state"], "running");

    // Unknown jobs and tasks, and ids that are no job id, are 404s with a reason.
    for path in ["nope-00000000", "api-00000001/tasks/9", "..%2F..%2Fetc"] {
        let (code, body) = get(&format!("{}/api/jobs/{path}", s.url)).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("no job")
                || body["error"].as_str().unwrap().contains("no task")
        );
    }
}

#[tokio::test]
async fn a_read_only_dashboard_refuses_every_action() {
    let s = serve(false).await;
    let (code, body) = post(
        &format!("{}/api/jobs/api-00000001/actions/pause", s.url),
        true,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let job = s
        .backends
        .state
        .get_job("api-00000001")
        .await
        .unwrap()
        .unwrap();
    assert!(!job.spec.spec.suspend);
}

#[tokio::test]
async fn actions_need_their_header_and_write_what_the_commands_write() {
    let s = serve(true).await;
    let pause = format!("{}/api/jobs/api-00000001/actions/pause", s.url);
    // A form on another site cannot set the header: refused.
    let (code, _) = post(&pause, false).await;
    assert_eq!(code, 400);
    let (code, body) = post(&pause, true).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], true);
    let job = s
        .backends
        .state
        .get_job("api-00000001")
        .await
        .unwrap()
        .unwrap();
    assert!(job.spec.spec.suspend);
    let (_, page) = get(&format!("{}/api/jobs/api-00000001", s.url)).await;
    assert_eq!(page["job"]["suspended"], true);

    let (code, body) = post(
        &format!("{}/api/jobs/api-00000001/actions/cancel", s.url),
        true,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let job = s
        .backends
        .state
        .get_job("api-00000001")
        .await
        .unwrap()
        .unwrap();
    assert!(job.cancel_requested);

    let (code, _) = post(
        &format!("{}/api/jobs/api-00000001/actions/explode", s.url),
        true,
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_loads_nothing_from_elsewhere() {
    let s = serve(false).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", s.url)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let headers = r.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'")
        );
        let body = r.text().await.unwrap();
        // Every script, style sheet and request is the server's own (relative addresses).
        for absolute in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "fetch('http",
            "src=\"//",
        ] {
            assert!(!body.contains(absolute), "{path} loads from elsewhere");
        }
    }
}

#[tokio::test]
async fn a_loopback_dashboard_refuses_requests_for_another_host_name() {
    // What a page of evil.example sends once its name points at 127.0.0.1 (DNS rebinding).
    let s = serve(true).await;
    let client = reqwest::Client::new();
    for path in ["/api/jobs", "/"] {
        let r = client
            .get(format!("{}{path}", s.url))
            .header("host", "evil.example:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
    }
    let r = client
        .post(format!("{}/api/jobs/api-00000001/actions/pause", s.url))
        .header("host", "evil.example")
        .header("x-orch-action", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let job = s
        .backends
        .state
        .get_job("api-00000001")
        .await
        .unwrap()
        .unwrap();
    assert!(!job.spec.spec.suspend, "nothing was paused");
    // Its own name still works.
    let r = client
        .get(format!("{}/api/jobs", s.url))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
