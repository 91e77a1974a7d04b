//! The connection to the API server (the user's kubeconfig, as kubectl reads it) and API
//! errors turned into one line a person can act on, with an exit code.

use std::path::PathBuf;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use orch_crd::OrchJob;

use super::KubeArgs;
use crate::Failure;

/// A client for one cluster, and the namespace the command acts in.
pub struct Cluster {
    pub client: kube::Client,
    /// The namespace of `-n`, else the context's.
    pub namespace: String,
    /// The context's namespace (`default` when it names none).
    pub default_namespace: String,
    /// The API server's URL, for error messages.
    pub server: String,
    /// The kubeconfig context in use, for error messages (none in a pod).
    pub context: Option<String>,
}

/// The kubeconfig `orch` reads: `--kubeconfig`, else `KUBECONFIG` (a list of files, merged),
/// else `~/.kube/config` when it exists; `None` when there is none (in-cluster config next).
fn read_kubeconfig(explicit: Option<&PathBuf>) -> Result<Option<Kubeconfig>, Failure> {
    let config_failure = |e: kube::config::KubeconfigError| {
        Failure::usage(format!("cannot read the kubeconfig: {e}"))
    };
    if let Some(path) = explicit {
        return Kubeconfig::read_from(path)
            .map(Some)
            .map_err(config_failure);
    }
    if let Some(merged) = Kubeconfig::from_env().map_err(config_failure)? {
        return Ok(Some(merged));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.map(|h| h.join(".kube").join("config")) {
        Some(path) if path.is_file() => Kubeconfig::read_from(&path)
            .map(Some)
            .map_err(config_failure),
        _ => Ok(None),
    }
}

impl Cluster {
    pub async fn connect(args: &KubeArgs) -> Result<Cluster, Failure> {
        // Both ring (kube) and aws-lc-rs (the AWS SDK) are linked in, so rustls cannot pick a
        // provider by itself; an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (config, context) = match read_kubeconfig(args.kubeconfig.as_ref())? {
            Some(kubeconfig) => {
                let context = args
                    .context
                    .clone()
                    .or_else(|| kubeconfig.current_context.clone());
                if let Some(c) = &args.context
                    && !kubeconfig.contexts.iter().any(|n| &n.name == c)
                {
                    let known: Vec<&str> = kubeconfig
                        .contexts
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect();
                    return Err(Failure::usage(format!(
                        "no context `{c}` in the kubeconfig (it has: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                let options = KubeConfigOptions {
                    context: args.context.clone(),
                    ..KubeConfigOptions::default()
                };
                let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        Failure::usage(format!(
                            "cannot use the kubeconfig{}: {e}",
                            context
                                .as_deref()
                                .map(|c| format!(" (context `{c}`)"))
                                .unwrap_or_default()
                        ))
                    })?;
                (config, context)
            }
            None if args.context.is_some() => {
                return Err(Failure::usage(
                    "--context needs a kubeconfig: none found (set KUBECONFIG, pass --kubeconfig, \
                     or create ~/.kube/config)",
                ));
            }
            None => {
                let config = Config::incluster().map_err(|_| {
                    Failure::usage(
                        "no kubeconfig: KUBECONFIG is not set and ~/.kube/config does not exist \
                         (pass --kubeconfig, or run in a pod with a service account)",
                    )
                })?;
                (config, None)
            }
        };
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|e| Failure {
            code: 1,
            message: format!(
                "cannot set up a client for the API server at {server}: {}",
                chain(&e)
            ),
        })?;
        Ok(Cluster {
            client,
            namespace,
            default_namespace,
            server: server.trim_end_matches('/').to_string(),
            context,
        })
    }

    /// OrchJobs of one namespace, as untyped objects: reading them must not depend on every
    /// spec field being one this `orch` knows.
    pub fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &resource())
    }

    fn at(&self) -> String {
        match &self.context {
            Some(c) => format!("the API server at {} (context `{c}`)", self.server),
            None => format!("the API server at {}", self.server),
        }
    }

    /// An API error as a person reads it: what was refused, by whom, and the exit code.
    pub fn failure(
        &self,
        e: kube::Error,
        verb: &str,
        name: Option<&str>,
        namespace: &str,
    ) -> Failure {
        let what = match name {
            Some(n) => format!("orchjobs.orch.dev \"{n}\""),
            None => "orchjobs.orch.dev".to_string(),
        };
        match e {
            kube::Error::Api(status) => {
                let status = *status;
                let server_says = if status.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", status.message)
                };
                let about = status
                    .details
                    .as_ref()
                    .map(|d| d.kind.as_str())
                    .unwrap_or_default();
                // "the server could not find the requested resource": the URL's resource type
                // is not served (on a real server, a group it does not know is a plain-text 404).
                let no_such_type = status
                    .message
                    .contains("could not find the requested resource");
                match (status.code, status.reason.as_str()) {
                    (404, "NotFound") if about == "namespaces" => {
                        Failure::usage(format!("namespace \"{namespace}\" not found"))
                    }
                    (404, "NotFound") if name.is_some() && !no_such_type => {
                        Failure::usage(format!(
                            "orchjob \"{}\" not found in namespace \"{namespace}\"",
                            name.unwrap_or_default()
                        ))
                    }
                    (404, _) => Failure {
                        code: 1,
                        message: format!(
                            "{} does not serve orchjobs.orch.dev/v1alpha1: is the OrchJob CRD \
                             installed? (kubectl apply -f crds/orch.dev_orchjobs.yaml){server_says}",
                            self.at()
                        ),
                    },
                    (403, _) => Failure {
                        code: 1,
                        message: format!(
                            "forbidden: {} refused to {verb} {what} in namespace \
                             \"{namespace}\"{server_says}",
                            self.at()
                        ),
                    },
                    (401, _) => Failure {
                        code: 1,
                        message: format!(
                            "unauthorized: {} did not accept your credentials (log in again or \
                             check the kubeconfig's user){server_says}",
                            self.at()
                        ),
                    },
                    (409, _) if verb == "apply" => Failure {
                        code: 1,
                        message: format!(
                            "conflict: {what} has fields another manager set to other values \
                             (rerun with --force-conflicts to take them over){server_says}"
                        ),
                    },
                    (409, _) => Failure {
                        code: 1,
                        message: format!(
                            "conflict: {what} changed meanwhile (try again){server_says}"
                        ),
                    },
                    (400 | 422, _) => Failure::usage(format!(
                        "{} refused to {verb} {what} as invalid{server_says}",
                        self.at()
                    )),
                    (code, reason) => Failure {
                        code: 1,
                        message: format!(
                            "{} could not {verb} {what} in namespace \"{namespace}\": \
                             {code} {reason}{server_says}",
                            self.at()
                        ),
                    },
                }
            }
            kube::Error::Auth(e) => Failure {
                code: 1,
                message: format!("cannot get credentials for {}: {}", self.at(), chain(&e)),
            },
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => Failure {
                code: 1,
                message: format!("cannot reach {}: {}", self.at(), root_cause(&e)),
            },
            e => Failure {
                code: 1,
                message: format!("cannot {verb} {what} on {}: {}", self.at(), chain(&e)),
            },
        }
    }
}

/// The OrchJob resource (group, version, kind, plural) for untyped access.
pub fn resource() -> ApiResource {
    ApiResource::erase::<OrchJob>(&())
}

/// The innermost cause of an error chain: it names the actual problem ("Connection refused"),
/// where the outer layers say "client error (Connect)".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Every message of an error chain on one line, each once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
