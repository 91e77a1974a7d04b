//! The rate-limit benchmark's client (bench/ratelimit.sh): several worker processes call one
//! API as fast as their limiter lets them, the API (the `limited-api` referee, with the same
//! rate and burst as the limit) counts what it accepts and refuses. Three limiters:
//!
//! - `orch`: orch's shared bucket (leases on a SQLite bucket every process opens), the worker's
//!   own `Limiter`;
//! - `split`: the usual per-worker split, each process limited to `rate / processes` by an
//!   in-process `governor` limiter (with `burst / processes`);
//! - `governor`: one process, all callers behind one in-process `governor` limiter: the ideal a
//!   single machine can have, the yardstick for accuracy.
//!
//! With `--uneven`, half the processes stop halfway: what a per-worker split cannot notice.
//!
//!   ratelimit_bench --mode orch --url URL --rate 50 --burst 20 --processes 4 --seconds 30
//!     --storage DIR
//!
//! The parent prints one JSON line: the mode, calls sent, store writes (orch) and its wall time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use orch_core::backend::update_bucket;
use orch_core::model::{LimitBinding, now_ms};
use orch_core::ratelimit::Bucket;
use orch_worker::throttle::Limiter;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long)]
    mode: String,
    #[arg(long)]
    url: String,
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    burst: u32,
    #[arg(long, default_value_t = 4)]
    processes: u32,
    /// Calls in flight per process.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value = "/tmp/orch-ratelimit-bench")]
    storage: String,
    #[arg(long)]
    uneven: bool,
    /// Set in the child processes: which one this is.
    #[arg(long)]
    child: Option<u32>,
}

const KEY: &str = "ns/default/bench";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match args.child {
        Some(i) => child(&args, i).await,
        None => parent(&args).await,
    }
}

async fn parent(args: &Args) {
    let started = Instant::now();
    let mut writes_before = 0;
    if args.mode == "orch" {
        let b = orch_connect::open_backends(&args.storage, std::env::temp_dir())
            .await
            .unwrap();
        let create = || Bucket::new(KEY, args.rate, args.burst, now_ms());
        let (bucket, ()) = update_bucket(b.rate_limits.as_ref(), KEY, Some(&create), |_| ())
            .await
            .unwrap();
        writes_before = bucket.writes;
    }
    let processes = if args.mode == "governor" {
        1
    } else {
        args.processes
    };
    let me = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for i in 0..processes {
        let mut cmd = tokio::process::Command::new(&me);
        cmd.args(std::env::args().skip(1))
            .args(["--child", &i.to_string()]);
        children.push(cmd.spawn().unwrap());
    }
    let mut calls = 0u64;
    for mut c in children {
        let out = c.wait().await.unwrap();
        assert!(out.success());
    }
    // Each child wrote its count to a file next to the storage.
    for i in 0..processes {
        let path = format!("{}/calls-{i}", args.storage);
        calls += std::fs::read_to_string(&path)
            .map(|t| t.trim().parse::<u64>().unwrap_or(0))
            .unwrap_or(0);
        let _ = std::fs::remove_file(path);
    }
    let mut writes = 0;
    if args.mode == "orch" {
        let b = orch_connect::open_backends(&args.storage, std::env::temp_dir())
            .await
            .unwrap();
        writes = b
            .rate_limits
            .get_bucket(KEY)
            .await
            .unwrap()
            .map_or(0, |b| b.writes)
            - writes_before;
    }
    println!(
        "{{\"mode\": \"{}\", \"uneven\": {}, \"calls\": {calls}, \"writes\": {writes}, \"seconds\": {:.2}}}",
        args.mode,
        args.uneven,
        started.elapsed().as_secs_f64()
    );
}

/// How a child waits for its next call.
enum Gate {
    Orch(Limiter),
    Governor(governor::DefaultDirectRateLimiter),
}

impl Gate {
    async fn ready(&self) {
        match self {
            Gate::Orch(l) => l.acquire().await,
            Gate::Governor(g) => g.until_ready().await,
        }
    }
}

fn governor_gate(rate: f64, burst: f64) -> Gate {
    let period = Duration::from_secs_f64(1.0 / rate);
    let burst = NonZeroU32::new(burst.floor().max(1.0) as u32).unwrap();
    let quota = governor::Quota::with_period(period)
        .unwrap()
        .allow_burst(burst);
    Gate::Governor(governor::RateLimiter::direct(quota))
}

async fn child(args: &Args, i: u32) {
    let gate = match args.mode.as_str() {
        "orch" => {
            let b = orch_connect::open_backends(&args.storage, std::env::temp_dir())
                .await
                .unwrap();
            let binding = LimitBinding {
                name: "bench".into(),
                key: KEY.into(),
                tokens_per_item: 1,
                weight: 1,
            };
            Gate::Orch(Limiter::start(
                &[binding],
                b.rate_limits.clone(),
                "bench-job",
                &format!("bench-{i}-{}", std::process::id()),
            ))
        }
        "split" => governor_gate(
            args.rate / f64::from(args.processes),
            f64::from(args.burst) / f64::from(args.processes),
        ),
        "governor" => governor_gate(args.rate, f64::from(args.burst)),
        other => panic!("unknown mode {other}"),
    };
    let gate = Arc::new(gate);
    let single = args.mode == "governor";
    let callers = if single {
        args.concurrency * args.processes
    } else {
        args.concurrency
    };
    // With --uneven, half the load stops halfway: half the processes, or (one process) half
    // its callers.
    let start = Instant::now();
    let deadline = |c: u32| {
        let stops_early = args.uneven
            && if single {
                c >= callers / 2
            } else {
                i >= args.processes / 2
            };
        let secs = if stops_early {
            args.seconds / 2
        } else {
            args.seconds
        };
        start + Duration::from_secs(secs)
    };
    let client = reqwest::Client::new();
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..callers {
        let until = deadline(c);
        let (gate, client, calls, url) = (
            gate.clone(),
            client.clone(),
            calls.clone(),
            args.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                gate.ready().await;
                if Instant::now() >= until {
                    break;
                }
                let _ = client.get(format!("{url}/items/{i}-{c}-{n}")).send().await;
                calls.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if let Gate::Orch(l) = gate.as_ref() {
        l.stop().await;
    }
    std::fs::create_dir_all(&args.storage).unwrap();
    std::fs::write(
        format!("{}/calls-{i}", args.storage),
        calls.load(Ordering::Relaxed).to_string(),
    )
    .unwrap();
}
