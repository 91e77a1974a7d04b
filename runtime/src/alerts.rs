//! Delivery of a job's alerts: the rules of [`orch_core::alerts`] decide when a job needs a
//! person; this module tells them. It exists so that the driver of a job (`orch run` and the
//! operator run the same one) can send each notice to Slack, a webhook, email — and, through
//! [`AlertOptions::sinks`], wherever its caller adds (the operator's Kubernetes Events) —
//! without a slow or broken channel ever slowing or failing the job. See
//! docs/observability.md ("Alerts").
//!
//! - [`JobAlerts`] is what the driver holds: the rule engine, fed on every tick, and a
//!   delivery task it hands notices to through a channel (never awaited on a tick);
//! - [`AlertSink`] is one place notices go; [`sinks_from_spec`] builds the job's own from
//!   `spec.alerts.channels`, reading their secrets where the spec says they are held;
//! - [`RateCap`] caps the notifications of one job per period (`spec.alerts.throttle`).
//!
//! Secrets (webhook URLs, which carry Slack's token, and SMTP passwords) are read once when the
//! job's driver starts and never written anywhere: logs and errors name the channel and where
//! its secret is held, never the value.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use orch_core::alerts::{
    AlertConfig, AlertEngine, AlertRule, AlertState, DEFAULT_THROTTLE_MAX, DEFAULT_THROTTLE_PER,
    Notice, Severity,
};
use orch_core::load::LoadedJob;
use orch_core::model::{JobRecord, Millis, TaskRecord};
use orch_core::spec::{
    AlertThrottleSpec, AlertsSpec, EmailChannelSpec, SecretKeyRef, SecretValueSpec, SmtpSecurity,
    secret_env_var,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::error::{Error, Result};

/// How long one delivery (one notice to one channel) may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Notices waiting for delivery; more are dropped (and logged) rather than held.
const QUEUE: usize = 256;

/// What the caller of the driver adds to the job's alerts.
#[derive(Clone, Default)]
pub struct AlertOptions {
    /// Places every notice goes besides the job's own channels (the operator's Kubernetes
    /// Events).
    pub sinks: Vec<Arc<dyn AlertSink>>,
    /// Reads `secretKeyRef` values (the operator: from the job's namespace). Default: the
    /// variable `ORCH_SECRET_<NAME>_<KEY>`, as workers outside Kubernetes read them.
    pub secrets: Option<Arc<dyn SecretReader>>,
    /// Refuse `env` and `file` references: the operator's environment and files hold its own
    /// credentials, never a tenant's (its policy refuses such a job before; this is the second
    /// lock).
    pub secret_refs_only: bool,
    /// What the job's alerts remember from one driver to the next of the same caller (the
    /// operator's supervisor, which restarts a failed driver): clones share it.
    pub memory: AlertMemory,
}

/// The state of a job's alerts kept between its drivers: the rules' (what fires) and the cap's
/// (what was sent). A driver started again after a failure then announces nothing its
/// predecessor announced, and stays within the same cap. Kept only while the spec's alerts are
/// the same. Clones share it.
#[derive(Clone, Default)]
pub struct AlertMemory(Arc<Mutex<Option<Remembered>>>);

struct Remembered {
    engine: AlertEngine,
    throttle: Option<AlertThrottleSpec>,
    cap: Arc<Mutex<RateCap>>,
}

impl AlertMemory {
    fn take(&self) -> Option<Remembered> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn keep(&self, remembered: Remembered) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(remembered);
    }
}

/// One notification as it leaves: a notice of the rules, with its job. This is the JSON a
/// `webhook` channel receives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The job id.
    pub job: String,
    /// The job's `metadata.name`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub rule: AlertRule,
    pub state: AlertState,
    pub severity: Severity,
    pub summary: String,
    pub details: Map<String, Value>,
    /// When the rule saw it, RFC 3339 (UTC).
    pub at: String,
    /// Notifications the cap dropped since the last one sent.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Alert {
    fn new(job: &str, name: &str, namespace: Option<&str>, notice: Notice) -> Alert {
        Alert {
            job: job.to_string(),
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            rule: notice.rule,
            state: notice.state,
            severity: notice.severity,
            summary: notice.summary,
            details: notice.details,
            at: rfc3339(notice.at),
            suppressed: 0,
        }
    }

    /// One line: `[orch] FIRING stalled: job reviews-1c9e4b2a` (an email's subject).
    pub fn title(&self) -> String {
        let what = match (self.rule, self.state) {
            (AlertRule::Finished, _) => "ENDED",
            (_, AlertState::Firing) => "FIRING",
            (_, AlertState::Resolved) => "RESOLVED",
        };
        format!("[orch] {what} {}: job {}", self.rule, self.job)
    }

    /// The message as text: the title, the summary, and where the job is.
    pub fn text(&self) -> String {
        let mut text = format!("{}\n\n{}\n", self.title(), self.summary);
        let object = match &self.namespace {
            Some(ns) => format!("OrchJob {ns}/{}", self.name),
            None => format!("job file name {}", self.name),
        };
        text.push_str(&format!(
            "\n{object}, at {}; details: orch status {}\n",
            self.at, self.job
        ));
        if self.suppressed > 0 {
            text.push_str(&format!(
                "({} earlier notification(s) of this job were dropped by spec.alerts.throttle)\n",
                self.suppressed
            ));
        }
        text
    }
}

fn rfc3339(at: Millis) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

/// One place notices go.
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// What it is, for log lines: `slack (spec.alerts.channels[0])`. Never a URL.
    fn channel(&self) -> String;
    /// Delivers one notification; called with a timeout, from the job's delivery task.
    async fn send(&self, alert: &Alert) -> Result<()>;
}

/// Reads the value of a Secret key for an alert channel.
#[async_trait]
pub trait SecretReader: Send + Sync {
    /// The value, or why it cannot be read (never the value, nor part of it).
    async fn read(&self, secret: &SecretKeyRef) -> std::result::Result<String, String>;
}

/// `secretKeyRef` outside Kubernetes: the variable `ORCH_SECRET_<NAME>_<KEY>` of this
/// process, the same one a worker reads for a handler's Secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

#[async_trait]
impl SecretReader for EnvSecrets {
    async fn read(&self, secret: &SecretKeyRef) -> std::result::Result<String, String> {
        let variable = secret_env_var(secret);
        match std::env::var(&variable) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(format!(
                "Secret {}/{} is read from the variable {variable} outside Kubernetes, which is not set",
                secret.name, secret.key
            )),
        }
    }
}

/// The value a [`SecretValueSpec`] points at; `base` is the job file's directory (for a
/// relative `file`).
async fn resolve(
    value: &SecretValueSpec,
    base: &Path,
    secrets: &dyn SecretReader,
    refs_only: bool,
) -> std::result::Result<String, String> {
    if refs_only && value.secret_key_ref.is_none() {
        return Err("here only a `secretKeyRef` is read".into());
    }
    let read = match (&value.env, &value.file, &value.secret_key_ref) {
        (Some(name), _, _) => match std::env::var(name) {
            Ok(v) => Ok(v),
            Err(_) => Err(format!("the variable {name} is not set")),
        },
        (_, Some(path), _) => tokio::fs::read_to_string(base.join(path))
            .await
            .map_err(|e| format!("cannot read the file {path}: {e}")),
        // The operator asks the API server: a driver's start is never held longer than this.
        (_, _, Some(r)) => tokio::time::timeout(DELIVERY_TIMEOUT, secrets.read(r))
            .await
            .unwrap_or_else(|_| Err("no answer in time".into())),
        _ => Err("no place to read it from".into()),
    }?;
    let value = read.trim().to_string();
    if value.is_empty() {
        return Err("it holds nothing".into());
    }
    Ok(value)
}

/// A Slack incoming webhook or a generic JSON webhook.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    slack: bool,
    label: String,
}

impl WebhookSink {
    /// `url` is a secret: errors say `label`, never the URL.
    pub fn new(url: &str, slack: bool, label: String) -> Result<WebhookSink> {
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| Error::AlertSetup {
                channel: label.clone(),
                message: "the value held for `url` is not an http:// or https:// URL".into(),
            })?;
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // A redirect would carry the notification somewhere the job file did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::AlertSetup {
                channel: label.clone(),
                message: e.without_url().to_string(),
            })?;
        Ok(WebhookSink {
            client,
            url: parsed,
            slack,
            label,
        })
    }
}

impl WebhookSink {
    /// Where it posts, for errors: the host (and port), never the path or query, which hold
    /// the token.
    fn host(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }
}

/// `text` as Slack shows it literally: its markup (`<!channel>`, `<http://x|link>`) is made of
/// `&`, `<` and `>`, which Slack wants escaped as HTML entities. Summaries quote handler and
/// item errors, so any text from a job goes through this.
fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Slack's message: text with its own markup (`*bold*`, `` `code` ``).
fn slack_text(alert: &Alert) -> String {
    let icon = match (alert.rule, alert.state, alert.severity) {
        (AlertRule::Finished, _, Severity::Info) => ":checkered_flag:",
        (AlertRule::Finished, _, _) => ":x:",
        (_, AlertState::Firing, _) => ":rotating_light:",
        (_, AlertState::Resolved, _) => ":white_check_mark:",
    };
    let mut text = format!(
        "{icon} *{}* `{}` job `{}`: {}",
        match (alert.rule, alert.state) {
            (AlertRule::Finished, _) => "ENDED",
            (_, AlertState::Firing) => "FIRING",
            (_, AlertState::Resolved) => "RESOLVED",
        },
        alert.rule,
        slack_escape(&alert.job),
        slack_escape(&alert.summary)
    );
    if alert.suppressed > 0 {
        text.push_str(&format!(
            " _({} earlier notification(s) dropped by the cap)_",
            alert.suppressed
        ));
    }
    text
}

#[async_trait]
impl AlertSink for WebhookSink {
    fn channel(&self) -> String {
        self.label.clone()
    }

    async fn send(&self, alert: &Alert) -> Result<()> {
        let body = if self.slack {
            serde_json::json!({ "text": slack_text(alert) })
        } else {
            serde_json::to_value(alert).map_err(|e| Error::AlertDelivery {
                channel: self.label.clone(),
                message: e.to_string(),
            })?
        };
        let failed = |message: String| Error::AlertDelivery {
            channel: self.label.clone(),
            message,
        };
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            // reqwest puts the URL in its errors: it is the secret here.
            .map_err(|e| failed(format!("{}: {}", self.host(), e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the status: the body of an error page may echo the request (its path, a
        // segment of it, decoded or not), which holds the token.
        Err(failed(format!("{} answered {status}", self.host())))
    }
}

/// Email through an SMTP server.
pub struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    label: String,
}

impl EmailSink {
    /// `password` is the resolved secret (with `spec.smtp.username`).
    pub fn new(
        spec: &EmailChannelSpec,
        password: Option<String>,
        label: String,
    ) -> Result<EmailSink> {
        let setup = |message: String| Error::AlertSetup {
            channel: label.clone(),
            message,
        };
        let smtp = &spec.smtp;
        let builder = match smtp.security {
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| setup(e.to_string()))?,
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    .map_err(|e| setup(e.to_string()))?
            }
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
            }
        };
        let port = smtp.port.unwrap_or(match smtp.security {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::None => 25,
        });
        let mut builder = builder.port(port).timeout(Some(DELIVERY_TIMEOUT));
        if let Some(user) = &smtp.username {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.unwrap_or_default()));
        }
        let mailbox = |text: &str| {
            text.parse::<Mailbox>()
                .map_err(|e| setup(format!("`{text}` is not an email address: {e}")))
        };
        Ok(EmailSink {
            transport: builder.build(),
            from: mailbox(&spec.from)?,
            to: spec
                .to
                .iter()
                .map(|t| mailbox(t))
                .collect::<Result<Vec<_>>>()?,
            label,
        })
    }
}

#[async_trait]
impl AlertSink for EmailSink {
    fn channel(&self) -> String {
        self.label.clone()
    }

    async fn send(&self, alert: &Alert) -> Result<()> {
        let failed = |message: String| Error::AlertDelivery {
            channel: self.label.clone(),
            message,
        };
        let mut message = lettre::Message::builder()
            .from(self.from.clone())
            .subject(alert.title())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .body(alert.text())
            .map_err(|e| failed(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(())
    }
}

/// The job's own channels (`spec.alerts.channels`), their secrets read now. A channel that
/// cannot be set up (a secret not where the spec says, a URL that is not one) is left out with
/// a warning naming it: alerts never stop a job.
pub async fn sinks_from_spec(
    spec: &AlertsSpec,
    base: &Path,
    secrets: &dyn SecretReader,
    refs_only: bool,
) -> Vec<Arc<dyn AlertSink>> {
    let mut out: Vec<Arc<dyn AlertSink>> = Vec::new();
    for (i, channel) in spec.channels.iter().enumerate() {
        let at = format!("spec.alerts.channels[{i}]");
        let built: Result<Arc<dyn AlertSink>> = async {
            let secret = |label: &str, place: &SecretValueSpec, why: String| Error::AlertSetup {
                channel: label.to_string(),
                message: format!("cannot read its secret from {}: {why}", place.describe()),
            };
            if let Some(hook) = channel.slack.as_ref().or(channel.webhook.as_ref()) {
                let slack = channel.slack.is_some();
                let label = format!("{} ({at})", if slack { "slack" } else { "webhook" });
                let url = resolve(&hook.url, base, secrets, refs_only)
                    .await
                    .map_err(|why| secret(&label, &hook.url, why))?;
                return Ok(Arc::new(WebhookSink::new(&url, slack, label)?) as Arc<dyn AlertSink>);
            }
            if let Some(email) = &channel.email {
                let label = format!("email ({at})");
                let password = match &email.smtp.password {
                    Some(p) => Some(
                        resolve(p, base, secrets, refs_only)
                            .await
                            .map_err(|why| secret(&label, p, why))?,
                    ),
                    None => None,
                };
                return Ok(Arc::new(EmailSink::new(email, password, label)?) as Arc<dyn AlertSink>);
            }
            Err(Error::AlertSetup {
                channel: at.clone(),
                message: "names no channel".into(),
            })
        }
        .await;
        match built {
            Ok(sink) => out.push(sink),
            Err(e) => warn!(error = %e, "an alert channel is left out"),
        }
    }
    out
}

/// What the cap says of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it, saying how many were dropped since the last one sent.
    Send { suppressed: u64 },
    /// Over the cap: drop it.
    Drop,
}

/// At most `max` notifications of one job per `per` (a sliding window). A `resolved` whose
/// `firing` was sent always goes (and counts), so that nobody is left with an alarm that
/// ended unseen; one whose `firing` was dropped is dropped too. What is dropped is counted
/// and said in the next notification sent.
#[derive(Debug)]
pub struct RateCap {
    max: usize,
    per: Duration,
    sent: VecDeque<Instant>,
    dropped: u64,
    /// Rules whose `firing` went out and whose `resolved` has not yet.
    open: HashSet<AlertRule>,
}

impl RateCap {
    pub fn new(max: u32, per: Duration) -> RateCap {
        RateCap {
            max: max.max(1) as usize,
            per,
            sent: VecDeque::new(),
            dropped: 0,
            open: HashSet::new(),
        }
    }

    /// The cap of `spec.alerts.throttle`, or the default (20 per hour).
    pub fn from_spec(spec: Option<&AlertsSpec>) -> RateCap {
        let throttle = spec.and_then(|a| a.throttle.as_ref());
        RateCap::new(
            throttle.map_or(DEFAULT_THROTTLE_MAX, |t| t.max),
            throttle
                .and_then(|t| t.per.as_ref())
                .and_then(|p| p.as_duration().ok())
                .unwrap_or(DEFAULT_THROTTLE_PER),
        )
    }

    pub fn admit(&mut self, now: Instant, rule: AlertRule, state: AlertState) -> Admission {
        while self
            .sent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= self.per)
        {
            self.sent.pop_front();
        }
        let room = self.sent.len() < self.max;
        let go = match state {
            AlertState::Resolved => self.open.remove(&rule),
            AlertState::Firing if room => {
                if rule != AlertRule::Finished {
                    self.open.insert(rule);
                }
                true
            }
            AlertState::Firing => false,
        };
        if go {
            self.sent.push_back(now);
            Admission::Send {
                suppressed: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Admission::Drop
        }
    }
}

/// A driver's alerts for its job: the rules, and the task that delivers what they say.
pub struct JobAlerts {
    engine: AlertEngine,
    memory: AlertMemory,
    throttle: Option<AlertThrottleSpec>,
    cap: Arc<Mutex<RateCap>>,
    job: String,
    name: String,
    namespace: Option<String>,
    queue: Option<mpsc::Sender<Alert>>,
    delivery: Option<tokio::task::JoinHandle<()>>,
}

impl JobAlerts {
    /// Reads the job's channels and starts its delivery task. `job` is the job file as given
    /// now (so edited alerts take effect when a job resumes); `id` the job's id.
    pub async fn start(job: &LoadedJob, id: &str, options: &AlertOptions) -> JobAlerts {
        let spec = job.file.spec.alerts.as_ref();
        let base = job.path.parent().unwrap_or(Path::new("."));
        let reader: Arc<dyn SecretReader> = options
            .secrets
            .clone()
            .unwrap_or_else(|| Arc::new(EnvSecrets));
        let mut sinks = match spec {
            Some(spec) => {
                sinks_from_spec(spec, base, reader.as_ref(), options.secret_refs_only).await
            }
            None => Vec::new(),
        };
        sinks.extend(options.sinks.iter().cloned());
        let config = AlertConfig::from_spec(&job.file.spec);
        let throttle = spec.and_then(|a| a.throttle.clone());
        let (engine, cap) = match options.memory.take() {
            Some(r) if *r.engine.config() == config && r.throttle == throttle => (r.engine, r.cap),
            _ => (
                AlertEngine::new(config),
                Arc::new(Mutex::new(RateCap::from_spec(spec))),
            ),
        };
        let (queue, delivery) = if sinks.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(QUEUE);
            let span = info_span!("alerts");
            let task = tokio::spawn(deliver(rx, sinks, cap.clone()).instrument(span));
            (Some(tx), Some(task))
        };
        JobAlerts {
            engine,
            memory: options.memory.clone(),
            throttle,
            cap,
            job: id.to_string(),
            name: job.file.metadata.name.clone(),
            namespace: job.file.metadata.namespace.clone(),
            queue,
            delivery,
        }
    }

    /// One tick's rows: what the rules say is logged and queued for delivery at once; never
    /// waits.
    pub fn observe(&mut self, now: Millis, job: &JobRecord, tasks: &[TaskRecord]) {
        for notice in self.engine.observe(now, job, tasks) {
            let alert = Alert::new(&self.job, &self.name, self.namespace.as_deref(), notice);
            match alert.severity {
                Severity::Warning => warn!(
                    rule = alert.rule.as_str(),
                    state = alert.state.as_str(),
                    summary = %alert.summary,
                    "alert"
                ),
                Severity::Info => info!(
                    rule = alert.rule.as_str(),
                    state = alert.state.as_str(),
                    summary = %alert.summary,
                    "alert"
                ),
            }
            if let Some(queue) = &self.queue
                && queue.try_send(alert).is_err()
            {
                warn!("alert delivery is behind; a notification was dropped");
            }
        }
    }

    /// Lets the delivery task send what is queued, for at most `wait`; then stops it.
    pub async fn finish(mut self, wait: Duration) {
        drop(self.queue.take());
        if let Some(mut task) = self.delivery.take()
            && tokio::time::timeout(wait, &mut task).await.is_err()
        {
            warn!(
                wait_s = wait.as_secs(),
                "alert delivery did not finish in time; the rest is dropped"
            );
            task.abort();
        }
    }
}

impl Drop for JobAlerts {
    fn drop(&mut self) {
        // A driver that ends without `finish` (an error): what is queued still goes, the task
        // ends with the queue.
        drop(self.queue.take());
        self.memory.keep(Remembered {
            engine: self.engine.clone(),
            throttle: self.throttle.clone(),
            cap: self.cap.clone(),
        });
    }
}

/// The delivery task: each notification past the cap goes to every sink at once, each
/// within [`DELIVERY_TIMEOUT`]; a failure is logged and forgotten.
async fn deliver(
    mut rx: mpsc::Receiver<Alert>,
    sinks: Vec<Arc<dyn AlertSink>>,
    cap: Arc<Mutex<RateCap>>,
) {
    while let Some(mut alert) = rx.recv().await {
        let admission = cap.lock().unwrap_or_else(|e| e.into_inner()).admit(
            Instant::now(),
            alert.rule,
            alert.state,
        );
        match admission {
            Admission::Drop => {
                warn!(
                    rule = alert.rule.as_str(),
                    state = alert.state.as_str(),
                    "notification dropped: over the cap of spec.alerts.throttle"
                );
                continue;
            }
            Admission::Send { suppressed } => alert.suppressed = suppressed,
        }
        let alert = Arc::new(alert);
        let mut sends = tokio::task::JoinSet::new();
        for sink in &sinks {
            let (sink, alert) = (sink.clone(), alert.clone());
            sends.spawn(async move {
                let outcome = tokio::time::timeout(DELIVERY_TIMEOUT, sink.send(&alert)).await;
                (sink.channel(), outcome)
            });
        }
        while let Some(done) = sends.join_next().await {
            match done {
                Ok((_, Ok(Ok(())))) => {}
                Ok((channel, Ok(Err(e)))) => {
                    warn!(channel, rule = alert.rule.as_str(), error = %e, "alert not delivered")
                }
                Ok((channel, Err(_))) => warn!(
                    channel,
                    rule = alert.rule.as_str(),
                    timeout_s = DELIVERY_TIMEOUT.as_secs(),
                    "alert not delivered: no answer in time"
                ),
                Err(e) => warn!(error = %e, "an alert delivery panicked"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn the_cap_sends_at_most_max_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut cap = RateCap::new(2, H);
        let rules = [
            AlertRule::Stalled,
            AlertRule::ErrorRate,
            AlertRule::TaskFailed,
        ];
        assert_eq!(
            cap.admit(t0, rules[0], AlertState::Firing),
            Admission::Send { suppressed: 0 }
        );
        assert_eq!(
            cap.admit(t0, rules[1], AlertState::Firing),
            Admission::Send { suppressed: 0 }
        );
        assert_eq!(cap.admit(t0, rules[2], AlertState::Firing), Admission::Drop);
        assert_eq!(
            cap.admit(t0 + H / 2, AlertRule::LimitsHit, AlertState::Firing),
            Admission::Drop
        );
        // An hour after the first two, there is room again; the next says what was dropped.
        assert_eq!(
            cap.admit(t0 + H, AlertRule::DeadLetters, AlertState::Firing),
            Admission::Send { suppressed: 2 }
        );
        assert_eq!(
            cap.admit(t0 + H, AlertRule::Finished, AlertState::Firing),
            Admission::Send { suppressed: 0 }
        );
    }

    #[test]
    fn a_resolved_follows_its_firing_past_the_cap_and_only_then() {
        let t0 = Instant::now();
        let mut cap = RateCap::new(1, H);
        assert!(matches!(
            cap.admit(t0, AlertRule::Stalled, AlertState::Firing),
            Admission::Send { .. }
        ));
        // The cap is reached, and this firing is dropped...
        assert_eq!(
            cap.admit(t0, AlertRule::ErrorRate, AlertState::Firing),
            Admission::Drop
        );
        // ...so is its resolved, while the one whose firing went out still goes.
        assert_eq!(
            cap.admit(t0, AlertRule::ErrorRate, AlertState::Resolved),
            Admission::Drop
        );
        assert_eq!(
            cap.admit(t0, AlertRule::Stalled, AlertState::Resolved),
            Admission::Send { suppressed: 2 }
        );
        // Once.
        assert_eq!(
            cap.admit(t0, AlertRule::Stalled, AlertState::Resolved),
            Admission::Drop
        );
    }

    #[test]
    fn the_cap_comes_from_the_spec_or_defaults_to_twenty_an_hour() {
        let mut cap = RateCap::from_spec(None);
        let t0 = Instant::now();
        let sent = (0..25)
            .filter(|_| {
                matches!(
                    cap.admit(t0, AlertRule::Finished, AlertState::Firing),
                    Admission::Send { .. }
                )
            })
            .count();
        assert_eq!(sent, 20);
        let spec: AlertsSpec = serde_yaml::from_str("throttle: {max: 3, per: 10m}").unwrap();
        let cap = RateCap::from_spec(Some(&spec));
        assert_eq!((cap.max, cap.per), (3, Duration::from_secs(600)));
    }

    #[tokio::test]
    async fn secrets_are_read_where_the_spec_says_and_never_repeated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("hook"),
            "  https://hooks.example/T/B/SECRETPART\n",
        )
        .unwrap();
        let by_file = SecretValueSpec {
            file: Some("hook".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&by_file, dir.path(), &EnvSecrets, false)
                .await
                .unwrap(),
            "https://hooks.example/T/B/SECRETPART"
        );
        // Where only Secrets may be read (the operator), a file is not.
        let why = resolve(&by_file, dir.path(), &EnvSecrets, true)
            .await
            .unwrap_err();
        assert!(why.contains("secretKeyRef"), "{why}");
        let missing = SecretValueSpec {
            env: Some("ORCH_TEST_NO_SUCH_VARIABLE_7".into()),
            ..Default::default()
        };
        let why = resolve(&missing, dir.path(), &EnvSecrets, false)
            .await
            .unwrap_err();
        assert!(why.contains("ORCH_TEST_NO_SUCH_VARIABLE_7"), "{why}");
        // A value that is no URL: the error names the channel, not the value.
        let Err(e) = WebhookSink::new("not a url SECRETPART", true, "slack (x)".into()) else {
            panic!("accepted");
        };
        assert!(!e.to_string().contains("SECRETPART"), "{e}");
        assert!(e.to_string().contains("slack (x)"), "{e}");
    }

    /// A sink that keeps what it is sent.
    #[derive(Default)]
    struct Capture(Mutex<Vec<Alert>>);

    #[async_trait]
    impl AlertSink for Capture {
        fn channel(&self) -> String {
            "capture".into()
        }
        async fn send(&self, alert: &Alert) -> Result<()> {
            self.0.lock().unwrap().push(alert.clone());
            Ok(())
        }
    }

    fn failed_job() -> (LoadedJob, JobRecord, Vec<TaskRecord>) {
        // The test kit's job: one task of 10 items, a builtin handler, no alerts section.
        let record = orch_testkit::contract::sample_job("t-1", 1);
        let file = record.spec.clone();
        let mut task = TaskRecord::new("t-1", 0, 10, 0);
        task.state = orch_core::model::TaskState::Failed;
        let job = LoadedJob {
            file,
            path: "/nowhere/job.yaml".into(),
            rate_limits: Vec::new(),
        };
        (job, record, vec![task])
    }

    #[tokio::test]
    async fn a_driver_started_again_announces_nothing_its_predecessor_did() {
        let (job, record, tasks) = failed_job();
        let sink = Arc::new(Capture::default());
        let options = AlertOptions {
            sinks: vec![sink.clone()],
            ..AlertOptions::default()
        };
        let mut first = JobAlerts::start(&job, "t-1", &options).await;
        first.observe(1, &record, &tasks);
        first.finish(Duration::from_secs(5)).await;
        assert_eq!(sink.0.lock().unwrap().len(), 1, "the failed task, once");
        // The caller's next driver for the job (a clone of the same options).
        let mut second = JobAlerts::start(&job, "t-1", &options.clone()).await;
        second.observe(2, &record, &tasks);
        second.finish(Duration::from_secs(5)).await;
        assert_eq!(sink.0.lock().unwrap().len(), 1, "not again");
        // Other options (`orch run` again): a new start, which says it again.
        let fresh = AlertOptions {
            sinks: vec![sink.clone()],
            ..AlertOptions::default()
        };
        let mut third = JobAlerts::start(&job, "t-1", &fresh).await;
        third.observe(3, &record, &tasks);
        third.finish(Duration::from_secs(5)).await;
        let sent = sink.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].rule, AlertRule::TaskFailed);
        assert_eq!(sent[1].job, "t-1");
    }

    fn alert(summary: &str) -> Alert {
        Alert {
            job: "j-1".into(),
            name: "j".into(),
            namespace: None,
            rule: AlertRule::Stalled,
            state: AlertState::Firing,
            severity: Severity::Warning,
            summary: summary.into(),
            details: Map::new(),
            at: rfc3339(0),
            suppressed: 0,
        }
    }

    #[tokio::test]
    async fn an_error_page_that_echoes_the_url_is_never_logged() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let n = conn.read(&mut request).await.unwrap();
            let line = String::from_utf8_lossy(&request[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            // The request line, then its path one segment at a time and decoded, as error
            // pages do.
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let segments = path.split(['/', '?', '=']).collect::<Vec<_>>().join(" ");
            let decoded = path.replace("%52", "R");
            let body = format!("Cannot handle {line}; segments: {segments}; decoded: {decoded}");
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
        });
        let url = format!("http://127.0.0.1:{port}/services/T/B/SEC%52ETPART?token=QUERYSECRET");
        let sink = WebhookSink::new(&url, true, "slack (z)".into()).unwrap();
        let e = sink.send(&alert("s")).await.unwrap_err().to_string();
        // The channel, the host and the status: nothing of the answer's body.
        assert_eq!(
            e,
            format!("alert channel slack (z): 127.0.0.1:{port} answered 404 Not Found")
        );
        for secret in [
            "SECRETPART",
            "SEC%52ETPART",
            "QUERYSECRET",
            "services",
            "token",
            "Cannot handle",
        ] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
    }

    #[test]
    fn slack_markup_in_a_summary_is_escaped_and_the_webhook_gets_it_raw() {
        let raw = "task 3 failed: <!channel> & <http://evil.example|click> <@U123>";
        let a = alert(raw);
        let text = slack_text(&a);
        assert!(
            text.ends_with(
                "task 3 failed: &lt;!channel&gt; &amp; &lt;http://evil.example|click&gt; &lt;@U123&gt;"
            ),
            "{text}"
        );
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        // The generic webhook's JSON carries the text as it is.
        assert_eq!(serde_json::to_value(&a).unwrap()["summary"], raw);
    }

    #[tokio::test]
    async fn a_webhook_error_never_shows_its_url() {
        // Nothing listens on port 9 of this host (discard): the connection fails.
        let sink = WebhookSink::new(
            "http://127.0.0.1:9/services/T/B/SECRETPART",
            false,
            "webhook (y)".into(),
        )
        .unwrap();
        let alert = alert("s");
        let e = sink.send(&alert).await.unwrap_err().to_string();
        assert!(
            !e.contains("SECRETPART") && !e.contains("/services/"),
            "{e}"
        );
        assert_eq!(alert.at, "1970-01-01T00:00:00Z");
    }
}
