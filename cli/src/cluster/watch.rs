//! Following one OrchJob with a kube watch: `orch status --watch` until the job ends, and
//! `orch purge` until the object is gone. The watcher re-lists after a dropped connection or
//! an expired resourceVersion; errors the user must fix (403, 401, 404) end the command, others
//! are retried with a growing pause, a few times.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;

use super::client::Cluster;
use super::render::{self, JobView, Outcome};
use super::{OutputFormat, object_ref, print_object};
use crate::Failure;

/// Consecutive watch errors tolerated before giving up.
const MAX_ERRORS: u32 = 6;

/// What to do with a watch error: give up with this failure, or pause and go on.
fn on_error(
    cluster: &Cluster,
    e: watcher::Error,
    name: &str,
    errors: &mut u32,
) -> Result<Duration, Failure> {
    let namespace = &cluster.namespace;
    let kube_error = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        watcher::Error::NoResourceVersion => {
            return Err(Failure {
                code: 1,
                message: format!(
                    "the API server at {} gave no resourceVersion: it cannot watch orchjobs",
                    cluster.server
                ),
            });
        }
    };
    let fatal = matches!(&kube_error, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404));
    *errors += 1;
    if fatal || *errors >= MAX_ERRORS {
        return Err(cluster.failure(kube_error, "watch", Some(name), namespace));
    }
    tracing::warn!(error = %kube_error, "watch of orchjob {name} interrupted; watching again");
    Ok(Duration::from_millis(500 << (*errors).min(5)))
}

/// `orch status --watch`: prints the job, then a line per change, and the table again when it
/// ends (table output); every new version of the object (json, yaml). Exit 0 when the job
/// succeeded, 1 when it failed or was deleted.
pub async fn follow(
    cluster: &Cluster,
    api: &Api<DynamicObject>,
    first: DynamicObject,
    output: OutputFormat,
) -> Result<u8, Failure> {
    let name = first.metadata.name.clone().unwrap_or_default();
    let uid = first.metadata.uid.clone();
    let mut last_line = String::new();
    let mut last_version = None;
    let mut show = |obj: &DynamicObject| -> Result<Option<Outcome>, Failure> {
        let view = JobView::from_object(obj).map_err(super::unreadable)?;
        let ended = render::outcome(&view);
        match output {
            OutputFormat::Table => {
                let line = render::summary(&view);
                if ended.is_some() {
                    print!("{}", render::table(&view, render::now()));
                } else if line != last_line {
                    let clock = render::now().strftime("%H:%M:%S");
                    println!("{clock}  {line}");
                }
                last_line = line;
            }
            OutputFormat::Json | OutputFormat::Yaml => {
                if obj.metadata.resource_version != last_version {
                    if output == OutputFormat::Yaml {
                        println!("---");
                    }
                    print_object(obj, output)?;
                    last_version = obj.metadata.resource_version.clone();
                }
            }
        }
        Ok(ended)
    };
    let code = |o: Outcome| if o == Outcome::Succeeded { 0 } else { 1 };
    if let Some(o) = show(&first)? {
        return Ok(code(o));
    }
    let mut stream = std::pin::pin!(watcher::watch_object(api.clone(), &name));
    let mut errors = 0;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Some(obj)) if obj.metadata.uid == uid => {
                errors = 0;
                if let Some(o) = show(&obj)? {
                    return Ok(code(o));
                }
            }
            // Gone, or deleted and created again under the same name: not the job we followed.
            Ok(_) => {
                eprintln!("{} was deleted", object_ref(&name));
                return Ok(1);
            }
            Err(e) => {
                let pause = on_error(cluster, e, &name, &mut errors)?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    Err(Failure {
        code: 1,
        message: format!("the watch of {} ended unexpectedly", object_ref(&name)),
    })
}

/// Waits until the OrchJob with this uid is gone (deleted, or replaced by a new object of the
/// same name), at most `timeout`.
pub async fn until_gone(
    cluster: &Cluster,
    api: &Api<DynamicObject>,
    name: &str,
    uid: Option<&str>,
    timeout: Duration,
) -> Result<(), Failure> {
    let started = Instant::now();
    let mut remaining_finalizers: Vec<String> = Vec::new();
    let wait = async {
        let mut stream = std::pin::pin!(watcher::watch_object(api.clone(), name));
        let mut errors = 0;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Some(obj)) if obj.metadata.uid.as_deref() == uid => {
                    errors = 0;
                    remaining_finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
                }
                Ok(_) => return Ok(()),
                Err(e) => {
                    let pause = on_error(cluster, e, name, &mut errors)?;
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Err(Failure {
            code: 1,
            message: format!("the watch of {} ended unexpectedly", object_ref(name)),
        })
    };
    let waited = tokio::time::timeout(timeout, wait).await;
    match waited {
        Ok(result) => result,
        Err(_) => Err(Failure {
            code: 1,
            message: format!(
                "{} is still being deleted after {}{}: is orch-operator running? (the deletion \
                 goes on; `orch status {name} --cluster` shows it)",
                object_ref(name),
                render::human_duration(started.elapsed()),
                if remaining_finalizers.is_empty() {
                    String::new()
                } else {
                    format!(", waiting for {}", remaining_finalizers.join(", "))
                }
            ),
        }),
    }
}
