//! Job alerts end to end: the real `orch run` and `orch-worker`, a real Python handler, and
//! real receivers started by each test — an HTTP server for the Slack and webhook channels,
//! Python's aiosmtpd for email — that record everything they are sent.
//!
//! Without pyarrow or aiosmtpd a test returns early only outside CI: the check
//! (`orch_testkit::components::python_module`) panics under `CI=true`, so CI never passes by
//! skipping them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Hooks, Scratch, local_job_yaml, text};

/// A real SMTP server (aiosmtpd) that appends each message it takes to a file, one JSON line
/// each. Stopped when dropped.
struct Smtp {
    port: u16,
    messages: PathBuf,
    child: Child,
}

const SMTP_SERVER: &str = r#"
import json, sys, time
from aiosmtpd.controller import Controller

class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode("utf-8", "replace"),
            }) + "\n")
        return "250 OK"

server = Controller(Keep(), hostname="127.0.0.1", port=int(sys.argv[1]))
server.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

impl Smtp {
    /// `None` (skipped visibly; a failure under `CI=true`) without aiosmtpd.
    fn start(s: &Scratch) -> Option<Smtp> {
        if !orch_testkit::components::python_module("aiosmtpd") {
            return None;
        }
        let script = s.write("smtp_server.py", SMTP_SERVER);
        let messages = s.path("smtp-messages.jsonl");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&messages)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the SMTP server did not start");
        Some(Smtp {
            port,
            messages,
            child,
        })
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The subject of a raw message.
fn subject(message: &serde_json::Value) -> String {
    message["data"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string()
}

/// A handler that echoes each item, but sleeps `ORCH_TEST_HANG` seconds on item 10 first.
const HANGS_ON_TEN: &str = r#"
import json, os, sys, time
for line in sys.stdin:
    req = json.loads(line)
    if req["item"]["id"] == 10:
        time.sleep(float(os.environ["ORCH_TEST_HANG"]))
    sys.stdout.write(json.dumps({"id": req["id"], "result": req["item"]}) + "\n")
    sys.stdout.flush()
"#;

/// A handler that fails every fourth item for good.
const FAILS_ONE_IN_FOUR: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    i = req["item"]["id"]
    if i % 4 == 0:
        out = {"id": req["id"], "error": {"kind": "permanent", "message": f"bad record {i}"}}
    else:
        out = {"id": req["id"], "result": req["item"]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"#;

fn exec(handler: &Path) -> String {
    format!(
        "{{exec: {{command: [python3, \"{}\"]}}, concurrency: 1}}",
        handler.display()
    )
}

/// Waits (bounded) until `done` says the receivers have it all: deliveries are asynchronous,
/// though the run waits for them before it returns.
fn settle(done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_job_alerts_once_by_webhook_and_email_then_resolves() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let Some(smtp) = Smtp::start(&s) else { return };
    let hooks = Hooks::start();
    s.jsonl("in.jsonl", 20);
    let handler = s.write("hangs.py", HANGS_ON_TEN);
    // The webhook URL is a secret: the job file says where it is held, the path stands for a
    // token that must appear in no log line.
    let url = hooks.url("/hooks/T000/B000/SECRETTOKEN");
    let alerts = format!(
        "  alerts:\n    channels:\n      - webhook: {{url: {{env: ORCH_TEST_HOOK}}}}\n      - email:\n          from: \"orch <orch@example.com>\"\n          to: [oncall@example.com, lead@example.com]\n          smtp: {{host: 127.0.0.1, port: {}, security: none}}\n    rules:\n      stalled: {{after: 4s}}\n",
        smtp.port
    );
    let yaml = local_job_yaml("stalls", &exec(&handler), 3, &alerts)
        .replace("parallelism: 2", "parallelism: 1");
    let job = s.write("job.yaml", &yaml);
    let out = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .env("ORCH_TEST_HOOK", &url)
        .env("ORCH_TEST_HANG", "14")
        .env("ORCH_LOG", "info")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    settle(|| hooks.received().len() >= 2 && smtp.received().len() >= 2);

    let hooks_got = hooks.received();
    let seen: Vec<(&str, &str)> = hooks_got
        .iter()
        .map(|(_, b)| (b["rule"].as_str().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("stalled", "firing"), ("stalled", "resolved")],
        "{hooks_got:#?}\n{all}"
    );
    let (path, firing) = &hooks_got[0];
    assert_eq!(path, "/hooks/T000/B000/SECRETTOKEN");
    let status = s.status(&job);
    assert_eq!(firing["job"], status["job"]);
    assert_eq!(firing["name"], "stalls");
    assert_eq!(firing["severity"], "warning");
    assert_eq!(firing["details"]["doneItems"], 10, "{firing}");
    assert_eq!(firing["details"]["totalItems"], 20, "{firing}");
    assert!(
        firing["summary"]
            .as_str()
            .unwrap()
            .starts_with("no item has finished"),
        "{firing}"
    );
    assert_eq!(hooks_got[1].1["severity"], "info");

    let mails = smtp.received();
    let subjects: Vec<String> = mails.iter().map(subject).collect();
    let id = status["job"].as_str().unwrap();
    assert_eq!(
        subjects,
        [
            format!("[orch] FIRING stalled: job {id}"),
            format!("[orch] RESOLVED stalled: job {id}"),
        ],
        "{mails:#?}"
    );
    assert_eq!(mails[0]["from"], "orch@example.com");
    assert_eq!(
        mails[0]["to"],
        serde_json::json!(["oncall@example.com", "lead@example.com"])
    );
    assert!(
        mails[0]["data"]
            .as_str()
            .unwrap()
            .contains("no item has finished"),
        "{}",
        mails[0]["data"]
    );
    // The alerts are in the driver's log too; the secret is nowhere.
    assert!(all.contains("alert"), "{all}");
    assert!(!all.contains("SECRETTOKEN"), "{all}");
}

#[test]
fn an_error_rate_above_its_threshold_alerts_on_slack_once() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let hooks = Hooks::start();
    s.jsonl("in.jsonl", 400);
    let handler = s.write("fails.py", FAILS_ONE_IN_FOUR);
    // The Slack URL held in a file, relative to the job file.
    s.write(
        "slack-url",
        &format!("{}\n", hooks.url("/services/T1/B1/SLACKTOKEN")),
    );
    let alerts = "  tolerance: {maxFailedItemsPercent: 50}\n  alerts:\n    channels:\n      - slack: {url: {file: slack-url}}\n    rules:\n      errorRate: {percent: 20, minItems: 40}\n";
    let job = s.write(
        "job.yaml",
        &local_job_yaml("failing", &exec(&handler), 1, alerts),
    );
    let out = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .env("ORCH_LOG", "info")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    settle(|| !hooks.received().is_empty());
    // Give a second notification (there must be none) the time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    let got = hooks.received();
    assert_eq!(got.len(), 1, "one notification: {got:#?}\n{all}");
    let (path, body) = &got[0];
    assert_eq!(path, "/services/T1/B1/SLACKTOKEN");
    // Slack's shape: one `text` field, with the rule and the figures.
    let text_field = body["text"].as_str().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert!(
        text_field.contains("*FIRING* `errorRate`") && text_field.contains("above 20 %"),
        "{text_field}"
    );
    assert!(!all.contains("SLACKTOKEN"), "{all}");
}

#[test]
fn a_healthy_job_sends_nothing() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let Some(smtp) = Smtp::start(&s) else { return };
    let hooks = Hooks::start();
    s.jsonl("in.jsonl", 1_000);
    let handler = s.write(
        "fails.py",
        &FAILS_ONE_IN_FOUR.replace("i % 4 == 0", "i == 7"),
    );
    // Every channel, and the default rules: one failed item in a thousand is healthy.
    let alerts = format!(
        "  tolerance: {{maxFailedItemsPercent: 1}}\n  alerts:\n    channels:\n      - slack: {{url: {{env: ORCH_TEST_HOOK}}}}\n      - webhook: {{url: {{env: ORCH_TEST_HOOK}}}}\n      - email: {{from: orch@example.com, to: [oncall@example.com], smtp: {{host: 127.0.0.1, port: {}, security: none}}}}\n",
        smtp.port
    );
    let job = s.write(
        "job.yaml",
        &local_job_yaml("healthy", &exec(&handler), 3, &alerts),
    );
    let out = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .env("ORCH_TEST_HOOK", hooks.url("/hook"))
        .env("ORCH_LOG", "info")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    // The run waits for its deliveries before it returns; wait a little more all the same.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hooks.received(), [], "{all}");
    assert_eq!(smtp.received(), Vec::<serde_json::Value>::new(), "{all}");
    assert!(!all.contains("alert"), "{all}");
}
