//! Where the operator's dashboard reads jobs: each namespace's jobs live in the storage its
//! `OrchPolicy` names (by default the operator's storage with the namespace appended), so
//! the dashboard reads every namespace it serves from that namespace's own storage, as the
//! policies say now. The pages themselves are `orch_dashboard`'s. See docs/observability.md
//! ("Dashboard").

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use orch_core::policy::{self, OperatorDefaults};
use orch_crd::{OrchJob, OrchPolicy};
use orch_dashboard::Source;
use tokio::sync::Mutex;

/// How long a storage that could not be opened is left alone.
const RETRY_OPEN_AFTER: Duration = Duration::from_secs(60);
/// How long the list of namespaces that have OrchJobs is reused.
const NAMESPACES_FOR: Duration = Duration::from_secs(10);

/// The storages of the namespaces the operator serves.
pub struct NamespaceStorages {
    client: Client,
    /// The namespaces to show; empty: every namespace that has OrchJobs.
    namespaces: Vec<String>,
    policies: Store<OrchPolicy>,
    defaults: OperatorDefaults,
    scratch: PathBuf,
    /// Storages opened so far, by namespace and URI (a policy may move a namespace).
    opened: Mutex<HashMap<(String, String), Arc<Source>>>,
    /// Storages that could not be opened, and when: tried again after a while, not at every
    /// request.
    failed: Mutex<HashMap<(String, String), Instant>>,
    listed: Mutex<Option<(Instant, Vec<String>)>>,
}

impl NamespaceStorages {
    pub fn new(
        client: Client,
        namespaces: Vec<String>,
        policies: Store<OrchPolicy>,
        defaults: OperatorDefaults,
        scratch: PathBuf,
    ) -> Self {
        NamespaceStorages {
            client,
            namespaces,
            policies,
            defaults,
            scratch,
            opened: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            listed: Mutex::new(None),
        }
    }

    async fn namespaces(&self) -> Vec<String> {
        if !self.namespaces.is_empty() {
            return self.namespaces.clone();
        }
        let mut listed = self.listed.lock().await;
        if let Some((at, namespaces)) = listed.as_ref()
            && at.elapsed() < NAMESPACES_FOR
        {
            return namespaces.clone();
        }
        let jobs: Api<OrchJob> = Api::all(self.client.clone());
        let namespaces: Vec<String> = match jobs.list_metadata(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|j| j.namespace())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "the dashboard cannot list the OrchJobs' namespaces");
                return listed.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
            }
        };
        *listed = Some((Instant::now(), namespaces.clone()));
        namespaces
    }
}

#[async_trait::async_trait]
impl orch_dashboard::Sources for NamespaceStorages {
    async fn current(&self) -> Vec<Arc<Source>> {
        let policies: Vec<(String, policy::PolicySpec)> = self
            .policies
            .state()
            .iter()
            .map(|p| (p.name_any(), p.spec.0.clone()))
            .collect();
        let mut sources = Vec::new();
        for namespace in self.namespaces().await {
            let Ok((_, governing)) =
                policy::select(policies.iter().map(|(n, p)| (n.as_str(), p)), &namespace)
            else {
                // No single policy: the operator runs no job there, so there is nothing to show.
                continue;
            };
            let Some(uri) = policy::storage_uri(&namespace, governing, &self.defaults) else {
                continue;
            };
            let key = (namespace.clone(), uri.clone());
            if let Some(source) = self.opened.lock().await.get(&key) {
                sources.push(source.clone());
                continue;
            }
            if self
                .failed
                .lock()
                .await
                .get(&key)
                .is_some_and(|at| at.elapsed() < RETRY_OPEN_AFTER)
            {
                continue;
            }
            // Opened without holding the lock: one slow storage does not hold up the others.
            let scratch = self.scratch.join("dashboard").join(&namespace);
            match orch_connect::open_backends(&uri, scratch).await {
                Ok(backends) => {
                    let source = Arc::new(Source {
                        label: Some(namespace),
                        backends,
                    });
                    let mut opened = self.opened.lock().await;
                    sources.push(opened.entry(key).or_insert(source).clone());
                }
                Err(e) => {
                    tracing::warn!(namespace = %namespace, error = %e, "the dashboard cannot open the namespace's storage");
                    self.failed.lock().await.insert(key, Instant::now());
                }
            }
        }
        sources
    }
}
