//! `orch dashboard`: the web dashboard of a storage's jobs, served from this machine (the
//! pages and the API are `orch_dashboard`; this only opens the stores and listens). See
//! docs/observability.md ("Dashboard").

use std::io::Write;
use std::net::SocketAddr;

use clap::Args;

use crate::Failure;
use crate::status::{local_log_dir, open_stores};

#[derive(Args)]
pub struct DashboardArgs {
    /// Storage directory or URI whose jobs to show (default ./.orch).
    #[arg(long)]
    pub storage: Option<String>,
    /// Where to listen (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Offer no actions (pause, resume, cancel, retry); only look.
    #[arg(long)]
    pub read_only: bool,
}

pub fn dashboard(args: DashboardArgs) -> Result<u8, Failure> {
    let rt = crate::runtime()?;
    let (root, backends) = open_stores(&rt, args.storage.clone(), "")?;
    // Anyone who can reach the port can use it: acting on jobs only from this machine.
    let actions = !args.read_only && args.addr.ip().is_loopback();
    let local_logs = local_log_dir(&root);
    let mut dashboard = orch_dashboard::Dashboard::new(backends, actions, local_logs);
    if args.addr.ip().is_loopback() {
        dashboard = dashboard.loopback_only();
    }
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| {
                Failure::usage(format!("--addr {}: cannot listen there: {e}", args.addr))
            })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Failure::usage(format!("--addr {}: {e}", args.addr)))?;
        let mut out = std::io::stdout();
        writeln!(
            out,
            "orch dashboard of {} on http://{bound}/{}",
            crate::run::display_uri(&root.to_uri()),
            if actions {
                ""
            } else {
                " (read-only: actions are offered on a loopback address only)"
            }
        )
        .and_then(|()| out.flush())
        .ok();
        let stop = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        orch_dashboard::serve(dashboard, listener, stop)
            .await
            .map_err(|e| Failure {
                code: 1,
                message: format!("the dashboard stopped: {e}"),
            })
    })?;
    Ok(0)
}
