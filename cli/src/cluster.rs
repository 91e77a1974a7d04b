//! Cluster mode: `orch submit | status | pause | resume | retry | cancel | purge` act on
//! `OrchJob` resources (group `orch.dev`, version `v1alpha1`) through the user's kubeconfig, as
//! a Kubernetes CLI does; the operator does the work. See docs/cli-cluster.md.
//!
//! `orch status` serves both modes; [`status_mode`] is the rule that picks one.

mod client;
mod patch;
mod render;
mod submit;
mod watch;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use orch_crd::{
    CANCEL_ANNOTATION, FINALIZER, PURGE_ANNOTATION, RETRY_ANNOTATION, RETRY_ITEMS_ANNOTATION,
};

use crate::Failure;
use client::Cluster;
use render::JobView;

/// The field manager of every change `orch` makes (server-side apply and patches).
pub const FIELD_MANAGER: &str = "orch";

/// How `orch` reaches the cluster: the kubeconfig, its context and the namespace.
#[derive(Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// The kubeconfig file [default: $KUBECONFIG, else ~/.kube/config; in a pod, its service
    /// account].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace [default: the context's namespace, else `default`].
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// Whether any cluster flag was given (they select cluster mode for `orch status`).
    fn given(&self) -> bool {
        self.kubeconfig.is_some() || self.context.is_some() || self.namespace.is_some()
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The job file (an OrchJob in YAML; `extends` is merged in before it is sent).
    pub file: PathBuf,
    /// Ask the API server what it would store (server-side dry run, `dryRun=All`) and print it;
    /// nothing is created or changed.
    #[arg(long)]
    pub dry_run: bool,
    /// Take over fields another manager (kubectl, a controller) set to other values, instead of
    /// refusing with a conflict.
    #[arg(long)]
    pub force_conflicts: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// An `OrchJob` named on the command line.
#[derive(Args)]
pub struct NameArgs {
    /// The OrchJob: `NAME` or `orchjob/NAME` (also `oj/NAME`).
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Args)]
pub struct PurgeArgs {
    /// The OrchJob: `NAME` or `orchjob/NAME` (also `oj/NAME`).
    pub name: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
    /// How long to wait for the operator to clean up and the OrchJob to go (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    orch_core::quantity::parse_duration(text)
}

/// Output formats of `orch status`; `yaml` is for cluster mode only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Local stores: a job file or a job id (none: every job in the storage).
    /// Cluster: an OrchJob name or `orchjob/NAME` (none: every OrchJob in the namespace).
    pub job: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Cluster: follow the OrchJob until it succeeds (exit 0) or fails (exit 1).
    #[arg(short, long)]
    pub watch: bool,
    /// Read the OrchJob in the cluster (also implied by -n, --context, --kubeconfig, --watch,
    /// an `orchjob/NAME` argument, and by `kubectl orch`).
    #[arg(long)]
    pub cluster: bool,
    /// Local stores: the storage directory or s3:// URI (default: the job file's `storage.uri`,
    /// else ./.orch).
    #[arg(long)]
    pub storage: Option<String>,
    /// Local stores: also check every committed task result against its `_DONE` checksums.
    #[arg(long)]
    pub verify: bool,
    /// Local stores: one task of the job — its row and every attempt it had.
    #[arg(long, value_name = "N")]
    pub task: Option<u32>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Where `orch status` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMode {
    /// The stores of `orch run` (a directory or S3), read directly.
    Local,
    /// The `OrchJob` in the cluster.
    Cluster,
}

/// The rule (docs/cli-cluster.md): `orch status` reads the cluster when it runs as
/// `kubectl orch`, when the argument is `TYPE/NAME` (`orchjob/x`, `oj/x`), or when `--cluster`,
/// `--watch`, `-n/--namespace`, `--context` or `--kubeconfig` is given; otherwise it reads the
/// local stores as it always did. Environment variables (`KUBECONFIG`) never change the mode.
pub fn status_mode(args: &StatusArgs, kubectl: bool) -> StatusMode {
    let typed = args
        .job
        .as_deref()
        .is_some_and(|j| j.contains('/') && typed_ref(j));
    if kubectl || typed || args.cluster || args.watch || args.kube.given() {
        StatusMode::Cluster
    } else {
        StatusMode::Local
    }
}

/// The resource types an `TYPE/NAME` argument may name, as kubectl spells the OrchJob.
const TYPE_NAMES: &[&str] = &[
    "orchjob",
    "orchjobs",
    "oj",
    "orchjob.orch.dev",
    "orchjobs.orch.dev",
];

fn typed_ref(arg: &str) -> bool {
    arg.split_once('/')
        .is_some_and(|(t, _)| TYPE_NAMES.contains(&t.to_ascii_lowercase().as_str()))
}

/// The OrchJob name of a `NAME` or `orchjob/NAME` argument.
pub fn parse_name(arg: &str) -> Result<String, Failure> {
    let name = match arg.split_once('/') {
        Some((t, name)) if TYPE_NAMES.contains(&t.to_ascii_lowercase().as_str()) => name,
        Some((t, _)) => {
            return Err(Failure::usage(format!(
                "`{arg}`: orch acts on OrchJobs only; write NAME or orchjob/NAME, not {t}/NAME"
            )));
        }
        None => arg,
    };
    if !orch_core::k8s_name::is_dns_subdomain(name) {
        return Err(Failure::usage(format!(
            "`{name}` is not an OrchJob name (lowercase letters, digits, `-` and `.`, starting and \
             ending with a letter or digit, at most 253 characters)"
        )));
    }
    Ok(name.to_string())
}

/// `orch` or `kubectl orch`, for the hints this module prints.
fn program(kubectl: bool) -> &'static str {
    if kubectl { "kubectl orch" } else { "orch" }
}

/// `kind.group/name`, as kubectl names an object in what it prints.
fn object_ref(name: &str) -> String {
    format!("orchjob.orch.dev/{name}")
}

fn to_yaml(value: &serde_json::Value) -> Result<String, Failure> {
    serde_yaml::to_string(value).map_err(|e| Failure {
        code: 1,
        message: format!("cannot print YAML: {e}"),
    })
}

fn to_json(value: &serde_json::Value) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: 1,
        message: format!("cannot print JSON: {e}"),
    })
}

/// An object as `-o json|yaml` and `submit --dry-run` print it: as the API server has it,
/// without `metadata.managedFields` (bookkeeping of server-side apply, noise to a person).
fn printable(obj: &DynamicObject) -> Result<serde_json::Value, Failure> {
    let mut value = serde_json::to_value(obj).map_err(|e| Failure {
        code: 1,
        message: format!("cannot print the object: {e}"),
    })?;
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    Ok(value)
}

pub fn submit(args: SubmitArgs, kubectl: bool) -> Result<u8, Failure> {
    let doc = submit::document(&args.file)?;
    for w in &doc.warnings {
        eprintln!("warning: {w}");
    }
    for n in &doc.notes {
        eprintln!("note: {n}");
    }
    crate::runtime()?.block_on(async {
        let cluster = Cluster::connect(&args.kube).await?;
        let namespace = match (&doc.namespace, &args.kube.namespace) {
            (Some(file), Some(flag)) if file != flag => {
                return Err(Failure::usage(format!(
                    "{} sets metadata.namespace `{file}` but -n says `{flag}`: drop one",
                    args.file.display()
                )));
            }
            (Some(file), _) => file.clone(),
            (None, _) => cluster.namespace.clone(),
        };
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if args.force_conflicts {
            params = params.force();
        }
        if args.dry_run {
            params = params.dry_run();
        }
        // The RateLimits first, so the job does not wait for them.
        let limits: kube::Api<orch_crd::RateLimit> =
            kube::Api::namespaced(cluster.client.clone(), &namespace);
        for limit in &doc.rate_limits {
            let limit_name = limit
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let body = submit::apply_body(limit.clone(), &namespace);
            limits
                .patch(limit_name, &params, &Patch::Apply(&body))
                .await
                .map_err(|e| cluster.failure(e, "apply", Some(limit_name), &namespace))?;
            println!("ratelimit.orch.dev/{limit_name} applied");
        }
        let api = cluster.api(&namespace);
        let name = doc.name.as_str();
        let body = submit::apply_body(doc.value.clone(), &namespace);
        let before = api
            .get_opt(name)
            .await
            .map_err(|e| cluster.failure(e, "get", Some(name), &namespace))?;
        let after = api
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| cluster.failure(e, "apply", Some(name), &namespace))?;
        let verb = match &before {
            None => "created",
            Some(b) if unchanged(b, &after, args.dry_run) => "unchanged",
            Some(_) => "configured",
        };
        if args.dry_run {
            println!("# {} {verb} (server dry run)", object_ref(name));
            print!("{}", to_yaml(&printable(&after)?)?);
            return Ok(0);
        }
        println!("{} {verb}", object_ref(name));
        let ns = if namespace == cluster.default_namespace {
            String::new()
        } else {
            format!(" -n {namespace}")
        };
        eprintln!(
            "follow it with: {} status {name} --watch{ns}",
            program(kubectl)
        );
        Ok(0)
    })
}

/// Whether an apply left the object as it was. A write that changes nothing keeps the
/// resourceVersion; a dry run never changes it, so there the content is compared.
fn unchanged(before: &DynamicObject, after: &DynamicObject, dry_run: bool) -> bool {
    if !dry_run {
        return before.metadata.resource_version == after.metadata.resource_version;
    }
    before.data.get("spec") == after.data.get("spec")
        && before.metadata.labels == after.metadata.labels
        && before.metadata.annotations == after.metadata.annotations
}

pub fn status(args: StatusArgs, kubectl: bool) -> Result<u8, Failure> {
    if status_mode(&args, kubectl) == StatusMode::Local {
        let output = match args.output {
            OutputFormat::Table => crate::status::Format::Table,
            OutputFormat::Json => crate::status::Format::Json,
            OutputFormat::Yaml => {
                return Err(Failure::usage(
                    "-o yaml is for an OrchJob in the cluster (add --cluster); the local stores \
                     print table or json",
                ));
            }
        };
        return crate::status::status(crate::status::StatusArgs {
            job: args.job,
            storage: args.storage,
            output,
            verify: args.verify,
            task: args.task,
        });
    }
    if args.storage.is_some() || args.verify || args.task.is_some() {
        return Err(Failure::usage(
            "--storage, --verify and --task read the local stores of `orch run`; an OrchJob in \
             the cluster has none of them (drop them, or drop the cluster flags)",
        ));
    }
    let name = args.job.as_deref().map(parse_name).transpose()?;
    if args.watch && name.is_none() {
        return Err(Failure::usage("--watch follows one OrchJob: name it"));
    }
    crate::runtime()?.block_on(async {
        let cluster = Cluster::connect(&args.kube).await?;
        let namespace = cluster.namespace.clone();
        let api = cluster.api(&namespace);
        let Some(name) = name else {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| cluster.failure(e, "list", None, &namespace))?;
            return print_list(&list.items, args.output, &namespace);
        };
        let obj = api
            .get(&name)
            .await
            .map_err(|e| cluster.failure(e, "get", Some(&name), &namespace))?;
        if args.watch {
            return watch::follow(&cluster, &api, obj, args.output).await;
        }
        print_object(&obj, args.output)?;
        Ok(0)
    })
}

/// Prints one OrchJob in the chosen format.
fn print_object(obj: &DynamicObject, output: OutputFormat) -> Result<(), Failure> {
    match output {
        OutputFormat::Json => println!("{}", to_json(&printable(obj)?)?),
        OutputFormat::Yaml => print!("{}", to_yaml(&printable(obj)?)?),
        OutputFormat::Table => {
            let view = JobView::from_object(obj).map_err(unreadable)?;
            print!("{}", render::table(&view, render::now()));
        }
    }
    Ok(())
}

fn unreadable(e: String) -> Failure {
    Failure {
        code: 1,
        message: format!("{e} (`-o yaml` shows the object as it is)"),
    }
}

fn print_list(items: &[DynamicObject], output: OutputFormat, ns: &str) -> Result<u8, Failure> {
    match output {
        OutputFormat::Table => {
            if items.is_empty() {
                println!("no OrchJobs in namespace {ns}");
                return Ok(0);
            }
            let views = items
                .iter()
                .map(JobView::from_object)
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            print!("{}", render::list(&views, render::now()));
        }
        OutputFormat::Json | OutputFormat::Yaml => {
            let items = items.iter().map(printable).collect::<Result<Vec<_>, _>>()?;
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            if output == OutputFormat::Json {
                println!("{}", to_json(&list)?);
            } else {
                print!("{}", to_yaml(&list)?);
            }
        }
    }
    Ok(0)
}

/// One merge patch on a named OrchJob; returns the object as the server has it afterwards.
async fn merge_patch(
    cluster: &Cluster,
    name: &str,
    body: &serde_json::Value,
) -> Result<DynamicObject, Failure> {
    let namespace = &cluster.namespace;
    cluster
        .api(namespace)
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(body),
        )
        .await
        .map_err(|e| cluster.failure(e, "patch", Some(name), namespace))
}

/// What `pause`, `resume`, `retry` and `cancel` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Retry,
    Cancel,
}

pub fn request(what: Request, args: NameArgs) -> Result<u8, Failure> {
    request_for(what, args, None)
}

/// [`request`], where a retry runs again only failed items: `retry_items` is the value of
/// `orch.dev/retry-items` (`*` or error kinds); `None` removes it, so failed tasks run whole.
pub fn request_for(
    what: Request,
    args: NameArgs,
    retry_items: Option<String>,
) -> Result<u8, Failure> {
    let name = parse_name(&args.name)?;
    crate::runtime()?.block_on(async {
        let cluster = Cluster::connect(&args.kube).await?;
        let (body, done) = match what {
            Request::Pause => (
                patch::suspend(true),
                "paused (spec.suspend: true)".to_string(),
            ),
            Request::Resume => (
                patch::suspend(false),
                "resumed (spec.suspend: false)".to_string(),
            ),
            Request::Retry => {
                let value = patch::retry_value(render::now());
                let what = match &retry_items {
                    Some(items) => format!(", {RETRY_ITEMS_ANNOTATION}={items}"),
                    None => String::new(),
                };
                (
                    serde_json::json!({"metadata": {"annotations": {
                        RETRY_ANNOTATION: value,
                        RETRY_ITEMS_ANNOTATION: retry_items,
                    }}}),
                    format!("retry requested ({RETRY_ANNOTATION}={value}{what})"),
                )
            }
            Request::Cancel => (
                patch::annotation(CANCEL_ANNOTATION, "true"),
                format!("cancel requested ({CANCEL_ANNOTATION}=true)"),
            ),
        };
        let obj = merge_patch(&cluster, &name, &body).await?;
        println!("{} {done}", object_ref(&name));
        if let Ok(view) = JobView::from_object(&obj)
            && let Some(note) = render::request_note(what, &view)
        {
            eprintln!("note: {note}");
        }
        Ok(0)
    })
}

/// Asks on the terminal; refuses (usage error) when stdin is not one.
fn confirm(question: &str) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "purge deletes the job's artifacts: confirm with --yes (stdin is not a terminal, \
             so orch cannot ask)",
        ));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).map_err(|e| Failure {
        code: 1,
        message: format!("cannot read the answer: {e}"),
    })?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

pub fn purge(args: PurgeArgs) -> Result<u8, Failure> {
    let name = parse_name(&args.name)?;
    crate::runtime()?.block_on(async {
        let cluster = Cluster::connect(&args.kube).await?;
        let namespace = cluster.namespace.clone();
        let api = cluster.api(&namespace);
        // Before asking: a typo gets its not-found error, not a question.
        api.get(&name)
            .await
            .map_err(|e| cluster.failure(e, "get", Some(&name), &namespace))?;
        if !args.yes
            && !confirm(&format!(
                "Delete orchjob {name} in namespace {namespace} and its artifacts (manifests, \
                 batches, task results, state; the final output stays)?"
            ))?
        {
            eprintln!("not purged");
            return Ok(1);
        }
        let marked = merge_patch(
            &cluster,
            &name,
            &patch::annotation(PURGE_ANNOTATION, "true"),
        )
        .await?;
        let uid = marked.metadata.uid.clone();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let deleted = api
            .delete(&name, &params)
            .await
            .map_err(|e| cluster.failure(e, "delete", Some(&name), &namespace))?;
        if let Some(obj) = deleted.left() {
            let finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
            if !finalizers.is_empty() {
                let what = if finalizers.iter().any(|f| f == FINALIZER) {
                    "the operator cancels its tasks and deletes its artifacts"
                } else {
                    "its finalizers are done"
                };
                eprintln!(
                    "deleting {}: waiting until {what} (finalizers: {}; at most {})",
                    object_ref(&name),
                    finalizers.join(", "),
                    render::human_duration(args.timeout)
                );
            }
            watch::until_gone(&cluster, &api, &name, uid.as_deref(), args.timeout).await?;
        }
        println!("{} purged", object_ref(&name));
        Ok(0)
    })
}

#[cfg(test)]
mod tests;
