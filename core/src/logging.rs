//! How every orch binary logs: to stderr, filtered by `ORCH_LOG` (`tracing`'s filter syntax, e.g.
//! `debug` or `info,orch_runtime=debug`), as JSON lines with `ORCH_LOG_FORMAT=json` (what
//! production and the operator's chart use) and as text otherwise. One place, so `orch`,
//! `orch-worker` and `orch-operator` answer to the same variables. See docs/architecture.md ("Logs and observability").

use tracing_subscriber::EnvFilter;

/// The variable holding the log filter.
pub const FILTER_VARIABLE: &str = "ORCH_LOG";
/// The variable choosing the format: `json`, or anything else for text.
pub const FORMAT_VARIABLE: &str = "ORCH_LOG_FORMAT";

/// The format of log lines: every binary's `--log-format` (default: `ORCH_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `ORCH_LOG_FORMAT` of this process, `Text` when unset.
    pub fn from_env() -> Self {
        match std::env::var(FORMAT_VARIABLE) {
            Ok(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }

    /// The value of `ORCH_LOG_FORMAT` that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

static CHOSEN: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format this process logs in: what [`init`] was given (a `--log-format` flag included),
/// else `ORCH_LOG_FORMAT`. Passed on to the workers this process starts, so that they log
/// like their driver.
pub fn chosen() -> LogFormat {
    CHOSEN.get().copied().unwrap_or_else(LogFormat::from_env)
}

/// Installs the global subscriber: `ORCH_LOG` if set (and valid), else `default_filter`.
/// Colours only when stderr is a terminal. Does nothing if a subscriber is already installed.
pub fn init(default_filter: &str, format: LogFormat) {
    let _ = CHOSEN.set(format);
    let filter =
        EnvFilter::try_from_env(FILTER_VARIABLE).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
