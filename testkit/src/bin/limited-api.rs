//! `limited-api`: the rate-limited test API of `orch_testkit::limited_api` as a process of its
//! own, for end-to-end tests that drive it over HTTP.
//!
//! Prints its URL (`http://127.0.0.1:PORT`) as the first line on stdout, then serves until
//! killed. Flags: `--rate R` (requests per second, default unlimited), `--burst B` (default 1),
//! `--retry-after S` (seconds sent with 429; default the time to the next token, rounded up),
//! `--port P` (default a free one). `GET /_stats`, `POST /_limit {"rate","burst","retryAfter"}`
//! and `POST /_reset` observe and steer it (see the module docs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use orch_testkit::limited_api::{Limit, LimitedApi};

fn main() {
    let mut limit = Limit::unlimited();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--rate" => limit.rate = number(&value()),
            "--burst" => limit.burst = number(&value()),
            "--retry-after" => limit.retry_after = Some(Duration::from_secs_f64(number(&value()))),
            "--port" => port = value().parse().unwrap_or_else(|_| usage("bad --port")),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let api = LimitedApi::start_on(limit, SocketAddr::from(([127, 0, 0, 1], port))).await;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", api.url()).unwrap();
        stdout.flush().unwrap();
        std::future::pending::<()>().await;
        drop(api);
    });
}

fn number(text: &str) -> f64 {
    match text.parse::<f64>() {
        Ok(n) if n >= 0.0 => n,
        _ => usage(&format!("`{text}` is not a non-negative number")),
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("limited-api: {problem}");
    }
    eprintln!("usage: limited-api [--rate R] [--burst B] [--retry-after SECONDS] [--port P]");
    std::process::exit(2);
}
