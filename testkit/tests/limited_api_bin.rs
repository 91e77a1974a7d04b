//! The `limited-api` binary as other crates' end-to-end tests use it: started as a process,
//! steered and observed over HTTP.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use orch_testkit::limited_api::{LimitedApiProcess, Stats};

/// One HTTP/1.1 request; the status and the body.
fn request(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let host = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[test]
fn the_binary_serves_limits_and_reports_over_http() {
    let api = LimitedApiProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_limited-api")),
        &["--rate", "0", "--burst", "2", "--retry-after", "0.5"],
    );
    assert!(api.url().starts_with("http://127.0.0.1:"), "{}", api.url());
    let statuses: Vec<u16> = (0..3)
        .map(|i| request(api.url(), "GET", &format!("/items/{i}"), "").0)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let (status, _) = request(
        api.url(),
        "POST",
        "/_limit",
        r#"{"rate": 1000, "burst": 5, "retryAfter": 1}"#,
    );
    assert_eq!(status, 200);
    // The bucket was empty: the new rate fills it from now on (a token per millisecond).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (status, body) = request(api.url(), "POST", "/items/x", r#"{"a": 1}"#);
    assert_eq!(status, 200);
    assert!(body.contains(r#""body":{"a":1}"#), "{body}");
    let (_, body) = request(api.url(), "GET", "/_stats", "");
    let stats: Stats = serde_json::from_str(&body).unwrap();
    assert_eq!((stats.accepted, stats.rejected), (3, 1));
    assert_eq!(stats.ids, ["0", "1", "x"]);
    assert_eq!(request(api.url(), "POST", "/_reset", "").0, 200);
    let (_, body) = request(api.url(), "GET", "/_stats", "");
    assert_eq!(
        serde_json::from_str::<Stats>(&body).unwrap(),
        Stats::default()
    );
}
