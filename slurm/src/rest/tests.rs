//! The client over HTTP, against a *fake* slurmrestd — a thread answering canned responses on
//! 127.0.0.1 — used only for version negotiation, headers, retries and the mapping of status
//! codes to errors; `tests/rest_live.rs` talks to the real one.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use orch_core::ErrorCategory;

use super::test_support::{fixture, submission};
use super::token::Secret;
use super::*;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl";

#[test]
fn a_missing_token_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("jwt");
    match RestApi::new(
        "http://127.0.0.1:9",
        Some("alice".into()),
        TokenSource::File(missing),
        PlainHttp::Loopback,
    ) {
        Err(SlurmError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.executor.slurm.tokenFile");
            assert!(reason.contains("cannot read"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert!(matches!(
        RestApi::new(
            "http://127.0.0.1:9",
            Some("alice".into()),
            TokenSource::File(empty),
            PlainHttp::Loopback
        ),
        Err(SlurmError::Invalid { .. })
    ));
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    assert!(matches!(
        RestApi::new(
            "ftp://slurm",
            Some("alice".into()),
            TokenSource::File(token),
            PlainHttp::Loopback
        ),
        Err(SlurmError::Invalid { field, .. }) if field == "spec.executor.slurm.url"
    ));
}

#[test]
fn the_token_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwt");
    std::fs::write(&path, TOKEN).unwrap();
    let api = RestApi::new(
        "https://slurm:6820/",
        Some("alice".into()),
        TokenSource::File(path),
        PlainHttp::Refused,
    )
    .unwrap();
    let debug = format!("{api:?}");
    assert!(
        !debug.contains(TOKEN) && !debug.contains("c2VjcmV0"),
        "{debug}"
    );
    assert!(
        debug.contains("https://slurm:6820") && debug.contains("alice"),
        "{debug}"
    );
    assert_eq!(format!("{:?}", Secret(TOKEN.into())), "<redacted>");
}

// ---- a fake slurmrestd ----------------------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A fake slurmrestd: answers at most `limit` requests with `handler`, records them.
fn fake(limit: usize, handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let request = Seen {
                method,
                target,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, answer) = handler(&request);
            log.lock().unwrap().push(request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

fn api(url: &str, dir: &Path) -> RestApi {
    let token = dir.join("jwt");
    std::fs::write(&token, TOKEN).unwrap();
    RestApi::new(
        url,
        Some("alice".into()),
        TokenSource::File(token),
        PlainHttp::Loopback,
    )
    .unwrap()
    .with_retries(3, Duration::from_millis(10))
    .with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn negotiation_reads_the_api_description_then_falls_back_to_ping() {
    let dir = tempfile::tempdir().unwrap();
    let doc = fixture("v0.0.41", "openapi_v3_paths.json");
    let (url, seen) = fake(
        8,
        Box::new(move |r| match r.target.as_str() {
            "/openapi/v3" => (200, doc.clone()),
            _ => (404, String::new()),
        }),
    );
    let rest = api(&url, dir.path());
    assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_41);
    assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_41);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "negotiated once");
    assert_eq!(seen[0].header("x-slurm-user-name"), Some("alice"));
    assert_eq!(seen[0].header("x-slurm-user-token"), Some(TOKEN));

    let (url, seen) = fake(
        16,
        Box::new(|r| match r.target.as_str() {
            "/slurm/v0.0.40/ping/" => (200, r#"{"pings": [], "errors": []}"#.into()),
            _ => (404, "Unable to find requested URL".into()),
        }),
    );
    let rest = api(&url, dir.path()).with_retries(1, Duration::ZERO);
    assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_40);
    let targets: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/openapi/v3",
            "/openapi",
            "/slurm/v0.0.42/ping/",
            "/slurm/v0.0.41/ping/",
            "/slurm/v0.0.40/ping/"
        ]
    );
}

#[tokio::test]
async fn status_codes_map_to_error_categories() {
    let dir = tempfile::tempdir().unwrap();
    // 401: the token was refused; the message names the setting, never the token.
    let (url, seen) = fake(4, Box::new(|_| (401, "Authentication failure".into())));
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
    let e = rest.arrays("j").await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.tokenFile"),
        "{text}"
    );
    assert!(
        text.contains("refused the token") && !text.contains(TOKEN),
        "{text}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused token is not retried"
    );

    // 503 on a GET: retried, then transient.
    let (url, seen) = fake(8, Box::new(|_| (503, "busy".into())));
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
    let e = rest.cluster_info().await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3, "three attempts");

    // 429 then success: the retry succeeds.
    let partitions = fixture("v0.0.38", "rest_partitions.json");
    let (url, seen) = fake(
        8,
        Box::new(move |_| {
            static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                (429, String::new())
            } else {
                (200, partitions.clone())
            }
        }),
    );
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
    let info = rest.cluster_info().await.unwrap();
    assert_eq!(info.max_array_size, DEFAULT_MAX_ARRAY_SIZE);
    assert_eq!(info.partitions.len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // Failures that outlast the client's retries: the executor's start tries again.
    let (url, seen) = fake(
        8,
        Box::new(move |_| {
            static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            if CALLS.fetch_add(1, Ordering::SeqCst) < 4 {
                (503, "busy".into())
            } else {
                (200, fixture("v0.0.38", "rest_partitions.json"))
            }
        }),
    );
    let rest = api(&url, dir.path())
        .with_version(ApiVersion::V0_0_38)
        .with_retries(3, Duration::from_millis(1));
    let quick =
        orch_core::backoff::Backoff::doubling(Duration::from_millis(1), Duration::from_millis(2));
    let info = crate::executor::cluster_info(&rest, quick).await.unwrap();
    assert_eq!(info.partitions.len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 5, "3 tries, then 2 more");

    // A failed submit is sent once: the executor looks the array up before trying again.
    let (url, seen) = fake(
        4,
        Box::new(|_| {
            (500, r#"{"errors": [{"error_number": 1800, "error": "Unable to contact slurm controller (connect failure)"}]}"#.into())
        }),
    );
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_41);
    let e = rest.submit(&submission()).await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/slurm/v0.0.41/job/submit")
    );
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["job"]["name"], json!("reviews-1a2b"));

    // 200 with a body that is not JSON: a decode error.
    let (url, _) = fake(4, Box::new(|_| (200, "<html>".into())));
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
    assert!(matches!(
        rest.arrays("j").await,
        Err(SlurmError::Decode { .. })
    ));

    // Nobody listening: unreachable (transient).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let rest = api(&url, dir.path()).with_retries(2, Duration::from_millis(1));
    let e = rest.cluster_info().await.unwrap_err();
    assert!(matches!(e, SlurmError::Unreachable { .. }), "{e}");
    assert!(!e.to_string().contains(TOKEN));
}

#[tokio::test]
async fn an_empty_answer_to_update_time_is_checked_with_a_full_listing() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = fixture("v0.0.40", "jobs.json");
    let (url, seen) = fake(
        8,
        Box::new(move |r| {
            if r.target.contains("update_time=") {
                (
                    200,
                    r#"{"jobs": [], "last_update": {"set": true, "infinite": false, "number": 1735725700}, "errors": [], "warnings": []}"#.into(),
                )
            } else {
                (200, jobs.clone())
            }
        }),
    );
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_40);
    let first = rest.arrays("reviews-1a2b").await.unwrap();
    let again = rest.arrays("reviews-1a2b").await.unwrap();
    assert_eq!(first, again);
    let targets: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/slurm/v0.0.40/jobs/",
            "/slurm/v0.0.40/jobs/?update_time=1735725641",
            "/slurm/v0.0.40/jobs/"
        ]
    );
}

#[tokio::test]
async fn requests_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = fixture("v0.0.41", "jobs.json");
    let unchanged = fixture("v0.0.41", "jobs_unchanged.json");
    let submitted = fixture("v0.0.41", "job_submit.json");
    let update = fixture("v0.0.41", "job_update.json");
    let (url, seen) = fake(
        16,
        Box::new(move |r| match (r.method.as_str(), r.target.as_str()) {
            ("GET", "/slurm/v0.0.41/jobs/") => (200, jobs.clone()),
            ("GET", t) if t.starts_with("/slurm/v0.0.41/jobs/?update_time=") => {
                (200, unchanged.clone())
            }
            ("POST", "/slurm/v0.0.41/job/submit") => (200, submitted.clone()),
            ("POST", "/slurm/v0.0.41/job/120") => (200, update.clone()),
            ("DELETE", _) => (
                200,
                r#"{"status": [], "errors": [], "warnings": []}"#.into(),
            ),
            _ => (404, String::new()),
        }),
    );
    let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_41);
    let first = rest.arrays("reviews-1a2b").await.unwrap();
    let again = rest.arrays("reviews-1a2b").await.unwrap();
    assert_eq!(
        first, again,
        "no change since last_update: the cached answer"
    );
    assert_eq!(first.len(), 2);
    assert_eq!(rest.submit(&submission()).await.unwrap(), 160);
    rest.hold(120).await.unwrap();
    rest.release(120).await.unwrap();
    rest.cancel(120, &[4, 5]).await.unwrap();
    rest.cancel(120, &[]).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.target.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".into(), "/slurm/v0.0.41/jobs/".into()),
            (
                "GET".into(),
                "/slurm/v0.0.41/jobs/?update_time=1735725641".into()
            ),
            ("POST".into(), "/slurm/v0.0.41/job/submit".into()),
            ("POST".into(), "/slurm/v0.0.41/job/120".into()),
            ("POST".into(), "/slurm/v0.0.41/job/120".into()),
            ("DELETE".into(), "/slurm/v0.0.41/jobs/".into()),
            ("DELETE".into(), "/slurm/v0.0.41/job/120".into()),
        ]
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[3].body).unwrap(),
        json!({"hold": true})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[4].body).unwrap(),
        json!({"hold": false})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[5].body).unwrap(),
        json!({"jobs": ["120_4", "120_5"], "signal": "KILL"})
    );
    assert!(
        seen.iter()
            .all(|s| s.header("x-slurm-user-token") == Some(TOKEN))
    );
}

#[test]
fn plain_http_only_to_this_machine_and_only_when_allowed() {
    let reason = |url: &str, mode: PlainHttp| match checked_base(url, mode) {
        Err(SlurmError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.executor.slurm.url");
            reason
        }
        other => panic!("{url} {mode:?}: {other:?}"),
    };
    for mode in [PlainHttp::Refused, PlainHttp::Loopback] {
        assert_eq!(
            checked_base("https://slurm.example:6820/", mode).unwrap(),
            "https://slurm.example:6820"
        );
        assert_eq!(
            checked_base(" https://10.0.0.5/api ", mode).unwrap(),
            "https://10.0.0.5/api"
        );
        // Another machine over http: refused whatever the administrator allows.
        for url in [
            "http://slurm.example:6820",
            "http://10.0.0.5:6820",
            "http://[2001:db8::1]:6820",
            "http://127.0.0.1.example.com",
            "http://localhost.example.com:6820",
            "http://[::ffff:10.0.0.5]",
        ] {
            let r = reason(url, mode);
            assert!(
                r.contains("another machine") && r.contains("https://"),
                "{r}"
            );
        }
        for url in [
            "ftp://slurm",
            "http://",
            "https:///x",
            "slurm:6820",
            "https://a b",
        ] {
            assert!(reason(url, mode).contains("not an https:// URL"), "{url}");
        }
    }
    let loopback = [
        "http://127.0.0.1:6820",
        "http://127.3.4.5:6820/",
        "http://127.1",
        "http://[::1]:6820",
        "http://localhost:6820",
        "http://LocalHost",
    ];
    for url in loopback {
        assert!(checked_base(url, PlainHttp::Loopback).is_ok(), "{url}");
        let r = reason(url, PlainHttp::Refused);
        assert!(
            r.contains("https only") && r.contains("administrator's flag"),
            "{r}"
        );
    }
    assert_eq!(PlainHttp::default(), PlainHttp::Refused);

    // Through the constructor: the refusal names the URL, never the token.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("jwt");
    std::fs::write(&token, TOKEN).unwrap();
    for (url, mode) in [
        ("http://slurm:6820", PlainHttp::Loopback),
        ("http://127.0.0.1:6820", PlainHttp::Refused),
    ] {
        let e = RestApi::new(
            url,
            Some("alice".into()),
            TokenSource::File(token.clone()),
            mode,
        )
        .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains(url) && !text.contains(TOKEN), "{text}");
    }
}

#[test]
fn the_user_is_never_root_by_default() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let both = env(&[("USER", "bob"), ("LOGNAME", "carol")]);
    assert_eq!(resolve_user(Some("alice".into()), both).unwrap(), "alice");
    assert_eq!(resolve_user(None, both).unwrap(), "bob");
    assert_eq!(resolve_user(Some(" ".into()), both).unwrap(), "bob");
    let logname = env(&[("USER", ""), ("LOGNAME", "carol")]);
    assert_eq!(resolve_user(None, logname).unwrap(), "carol");
    for nothing in [env(&[]), env(&[("USER", " "), ("LOGNAME", "")])] {
        match resolve_user(None, nothing) {
            Err(SlurmError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.executor.slurm.user");
                assert!(reason.contains("set spec.executor.slurm.user"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Accepts one connection, reads the request head and answers `answer`.
fn answer_once(answer: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.trim().is_empty() {
            line.clear();
        }
        let _ = stream.write_all(answer.as_bytes());
    });
    url
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_token_goes_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    // Where the redirects point: it must see no connection at all.
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let target = format!(
        "http://{}/collect?stolen=yes",
        elsewhere.local_addr().unwrap()
    );
    for status in [301, 302, 303, 307, 308] {
        let url = answer_once(format!(
            "HTTP/1.1 {status} Moved\r\nLocation: {target}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        ));
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
        let e = rest.cluster_info().await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.url"),
            "{text}"
        );
        assert!(
            text.contains(&format!("HTTP {status}")) && text.contains("to host `127.0.0.1`"),
            "{text}"
        );
        assert!(
            !text.contains("collect") && !text.contains("stolen") && !text.contains(TOKEN),
            "{text}"
        );
    }
    // A relative Location names the same host.
    let url = answer_once(
        "HTTP/1.1 302 Found\r\nLocation: /login?next=x\r\nContent-Length: 0\r\n\r\n".into(),
    );
    let e = api(&url, dir.path())
        .with_version(ApiVersion::V0_0_38)
        .arrays("j")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("to host `127.0.0.1`") && !e.to_string().contains("login"),
        "{e}"
    );
    match elsewhere.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("{e}"),
        Ok((mut stream, _)) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut seen = String::new();
            let _ = stream.read_to_string(&mut seen);
            panic!("the redirect was followed: {seen}");
        }
    }
}

#[tokio::test]
async fn a_shared_token_is_sent_and_its_replacement_too() {
    let shared = SharedToken::new(TOKEN);
    let (url, seen) = fake(
        4,
        Box::new(|_| (200, r#"{"pings": [], "errors": []}"#.into())),
    );
    let rest = RestApi::new(
        &url,
        Some("alice".into()),
        TokenSource::Shared(shared.clone()),
        PlainHttp::Loopback,
    )
    .unwrap()
    .with_version(ApiVersion::V0_0_38);
    assert!(!format!("{rest:?}").contains(TOKEN));
    let ping = || rest.exchange::<Generic>("ping", Method::GET, "/slurm/v0.0.38/ping/", &[], None);
    ping().await.unwrap();
    shared.set("eyJhbGciOiJIUzI1NiJ9.cmVwbGFjZWQ.c2ln");
    ping().await.unwrap();
    let tokens: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            s.header("x-slurm-user-token")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(tokens, [TOKEN, "eyJhbGciOiJIUzI1NiJ9.cmVwbGFjZWQ.c2ln"]);
}
