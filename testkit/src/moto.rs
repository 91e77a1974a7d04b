//! A real moto server (`moto[server]` from PyPI) for the tests of the AWS backends and of
//! `orch init` (cli/tests/init.rs includes this file by path), reached over HTTP by the real
//! SDK clients. One server per test binary, started on first use on a free port; it stops when
//! the test process ends (it watches its stdin, which closes then). Tests isolate themselves by
//! resource names, not by servers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};

pub struct Moto {
    pub endpoint: String,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Moto {
    let port = free_port();
    let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    // `sh` keeps moto alive exactly as long as our stdin pipe: when this process exits the pipe
    // closes, `cat` returns and moto is killed, so no server outlives its tests.
    // moto's request recorder (used by some tests) writes to this file, not into the
    // repository (its default is `moto_recording` in the working directory).
    let recording = std::env::temp_dir().join(format!("orch-moto-recording-{port}"));
    let script = format!(
        "MOTO_RECORDER_FILEPATH='{}' {program} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid; rm -f '{}'",
        recording.display(),
        recording.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start moto_server: install it with `pip install 'moto[server]'`");
    // The child (and its stdin) must live as long as the process: leak it on purpose.
    std::mem::forget(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read(&mut buf).is_ok_and(|n| n > 0) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not start on port {port} (is `moto[server]` installed?)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { endpoint }
}

pub fn moto() -> &'static Moto {
    MOTO.get_or_init(start)
}

/// SDK configuration pointing every service at moto, with throwaway static credentials.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_for(&moto().endpoint).await
}

/// As [`sdk_config`], for any endpoint (a fault-injecting proxy in front of moto, say).
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// A name no other test in this run uses (resources live in one shared server).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The bytes of one object; `None` when it cannot be read (missing).
pub async fn get_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let out = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    Some(out.body.collect().await.unwrap().to_vec())
}

/// Downloads every object under `prefix` of `bucket` into `dir` (names relative to the
/// prefix); returns the names, sorted.
pub async fn download_prefix(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    dir: &std::path::Path,
) -> Vec<String> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut names = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let name = key.strip_prefix(prefix).unwrap().to_string();
        let body = get_object(s3, bucket, key).await.expect("a listed object");
        std::fs::write(dir.join(&name), body).unwrap();
        names.push(name);
    }
    names.sort();
    names
}

/// Runs a short Python program with `args` (moto ships with Python, and its request recorder
/// answers plain HTTP); its stdout.
fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .expect("cannot run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drives the request recorder of the moto server at `endpoint`: `action` is `reset`, `start`
/// or `stop`.
pub fn recorder(endpoint: &str, action: &str) {
    let url = format!("{endpoint}/moto-api/recorder/{action}-recording");
    python(
        "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'', method='POST'), timeout=60).read()",
        &[&url],
    );
}

/// What the recorder of the moto server at `endpoint` holds: one JSON document per request,
/// bodies as text (moto keeps some base64-encoded).
pub fn recording(endpoint: &str) -> Vec<serde_json::Value> {
    let url = format!("{endpoint}/moto-api/recorder/download-recording");
    python(
        r#"
import base64, json, sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1], timeout=120).read().decode().splitlines():
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if rec.get("body_encoded") and rec.get("body"):
        rec["body"] = base64.b64decode(rec["body"]).decode(errors="replace")
    print(json.dumps(rec))
"#,
        &[&url],
    )
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect()
}
