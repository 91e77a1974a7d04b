//! The worker's rate limiter against the real SQLite bucket store: two limiters with their own
//! store handles (as two worker processes would have) share one bucket. Their combined rate
//! must stay at the bucket's rate, never above rate × window + burst, with about one bucket
//! write per 50 tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_core::backend::update_bucket;
use orch_core::model::{LimitBinding, now_ms};
use orch_core::ratelimit::Bucket;
use orch_worker::throttle::Limiter;

const RATE: f64 = 50.0;
const BURST: u32 = 5;
const KEY: &str = "ns/default/api";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_bucket_at_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().to_str().unwrap().to_string();
    let open = || orch_connect::open_backends(&storage, dir.path().join("scratch"));
    let first = open().await.unwrap();
    let now = now_ms();
    let create = || Bucket::new(KEY, RATE, BURST, now);
    update_bucket(first.rate_limits.as_ref(), KEY, Some(&create), |_| ())
        .await
        .unwrap();
    let binding = LimitBinding {
        name: "api".into(),
        key: KEY.into(),
        tokens_per_item: 1,
        weight: 1,
    };

    let started = Instant::now();
    let taken: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut limiters = Vec::new();
    for worker in ["w1", "w2"] {
        let b = open().await.unwrap();
        let limiter = Arc::new(Limiter::start(
            std::slice::from_ref(&binding),
            b.rate_limits.clone(),
            "job-1",
            worker,
        ));
        // Four items in flight per worker.
        for _ in 0..4 {
            let (limiter, taken) = (limiter.clone(), taken.clone());
            tokio::spawn(async move {
                loop {
                    limiter.acquire().await;
                    taken.lock().unwrap().push(started.elapsed().as_secs_f64());
                }
            });
        }
        limiters.push(limiter);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_before = first
        .rate_limits
        .get_bucket(KEY)
        .await
        .unwrap()
        .unwrap()
        .writes;
    let tokens_before = taken.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let writes = first
        .rate_limits
        .get_bucket(KEY)
        .await
        .unwrap()
        .unwrap()
        .writes
        - writes_before;
    let times = taken.lock().unwrap().clone();
    let tokens = times.len() - tokens_before;
    for l in &limiters {
        l.stop().await;
    }

    // After the first seconds (leases settling), the rate is the bucket's within 3 %.
    let steady = times.iter().filter(|&&t| (3.0..10.0).contains(&t)).count() as f64;
    let expected = RATE * 7.0;
    assert!(
        (steady - expected).abs() <= expected * 0.03,
        "{steady} tokens in 7 s, expected {expected}"
    );
    // Never above rate × window + burst, for any one-second window.
    for (i, &t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|&&u| u < t + 1.0).count() as f64;
        assert!(
            in_window <= RATE + f64::from(BURST),
            "{in_window} tokens in the second from {t:.3}"
        );
    }
    // About one write per 50 tokens (two holders renewing out of phase may add one each).
    assert!(
        writes as f64 <= tokens as f64 / 50.0 + 2.0,
        "{writes} bucket writes for {tokens} tokens"
    );
    // A stopped worker's lease is gone at once.
    let bucket = first.rate_limits.get_bucket(KEY).await.unwrap().unwrap();
    assert!(
        bucket.live(now_ms()).next().is_none(),
        "{:?}",
        bucket.leases
    );
}
