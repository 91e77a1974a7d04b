#![allow(clippy::unwrap_used)]
use orch_worker::handler::{ExecConfig, ExecHandler, Handler};
use std::sync::Arc;
use std::time::Instant;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for conc in [1usize, 8, 64] {
        let mut cfg = ExecConfig::new(vec!["python3".into(), "echo.py".into()], &dir);
        cfg.concurrency = conc;
        let h = Arc::new(ExecHandler::start(cfg).unwrap());
        let n = 50_000;
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..conc {
            let h = h.clone();
            set.spawn(async move {
                for i in 0..n / conc {
                    let item =
                        serde_json::value::to_raw_value(&serde_json::json!({"i": i, "w": w}))
                            .unwrap();
                    assert!(h.call(&item).await.is_ok());
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        eprintln!(
            "conc {conc}: {:.0} items/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
        h.shutdown().await;
    }
}
