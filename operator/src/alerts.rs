//! The operator's part in job alerts: where a job's driver runs in the cluster, its notices
//! also become Kubernetes Events on the `OrchJob` (so `kubectl describe orchjob` and any Event
//! exporter see them, with no channel configured), and the secrets of its channels come from
//! Secrets of its namespace, read with the operator's client — never from the operator's own
//! environment or files. The rules and the other channels are the driver's
//! (`orch_runtime::alerts`); see docs/observability.md ("Alerts").

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use orch_core::alerts::{AlertState, Severity};
use orch_core::spec::SecretKeyRef;
use orch_runtime::alerts::{Alert, AlertOptions, AlertSink, SecretReader};

/// The API server caps an Event's note at 1 KB.
const NOTE_MAX: usize = 1000;

/// Every notice of one job as an Event on its `OrchJob`: `Warning` while something is wrong,
/// `Normal` for what resolved it (and for a job that ended well). The reason names the rule:
/// `AlertStalled`, `AlertStalledResolved`, …; the note is the notice's summary.
pub struct EventSink {
    recorder: Recorder,
    reference: ObjectReference,
}

impl EventSink {
    pub fn new(recorder: Recorder, reference: ObjectReference) -> EventSink {
        EventSink {
            recorder,
            reference,
        }
    }

    /// The Event a notification becomes.
    pub fn event(alert: &Alert) -> Event {
        let reason = match alert.state {
            AlertState::Firing => alert.rule.reason().to_string(),
            AlertState::Resolved => format!("{}Resolved", alert.rule.reason()),
        };
        let mut note = alert.summary.clone();
        if alert.suppressed > 0 {
            note.push_str(&format!(
                " ({} earlier notification(s) dropped by spec.alerts.throttle)",
                alert.suppressed
            ));
        }
        Event {
            type_: match alert.severity {
                Severity::Warning => EventType::Warning,
                Severity::Info => EventType::Normal,
            },
            reason,
            note: Some(note.chars().take(NOTE_MAX).collect()),
            action: "Alert".into(),
            secondary: None,
        }
    }
}

#[async_trait]
impl AlertSink for EventSink {
    fn channel(&self) -> String {
        "kubernetes events".into()
    }

    async fn send(&self, alert: &Alert) -> orch_runtime::Result<()> {
        self.recorder
            .publish(&Self::event(alert), &self.reference)
            .await
            .map_err(|e| orch_runtime::Error::AlertDelivery {
                channel: self.channel(),
                message: e.to_string(),
            })
    }
}

/// `secretKeyRef`s of a job's alert channels, read from its namespace. The operator's policy
/// admits only Secrets it lists (`kubernetes.secrets`); the chart grants the read with
/// `rbac.alertSecrets`.
pub struct NamespaceSecrets {
    client: Client,
    namespace: String,
}

impl NamespaceSecrets {
    pub fn new(client: Client, namespace: String) -> NamespaceSecrets {
        NamespaceSecrets { client, namespace }
    }
}

#[async_trait]
impl SecretReader for NamespaceSecrets {
    async fn read(&self, secret: &SecretKeyRef) -> Result<String, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let place = format!("the Secret {}/{}", self.namespace, secret.name);
        let object = api
            .get_opt(&secret.name)
            .await
            .map_err(|e| format!("cannot read {place}: {e}"))?
            .ok_or_else(|| format!("{place} does not exist"))?;
        object
            .data
            .as_ref()
            .and_then(|d| d.get(&secret.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{place} has no key `{}`", secret.key))
    }
}

/// What the operator adds to the alerts of the job `reference` in `namespace`.
pub fn options(
    client: Client,
    recorder: Recorder,
    reference: ObjectReference,
    namespace: String,
) -> AlertOptions {
    AlertOptions {
        sinks: vec![Arc::new(EventSink::new(recorder, reference))],
        secrets: Some(Arc::new(NamespaceSecrets::new(client, namespace))),
        secret_refs_only: true,
        // One per job's supervisor: a driver it starts again remembers what was sent.
        memory: Default::default(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::alerts::AlertRule;
    use serde_json::Map;

    use super::*;

    fn alert(state: AlertState, severity: Severity, summary: &str) -> Alert {
        Alert {
            job: "j-1".into(),
            name: "j".into(),
            namespace: Some("team-a".into()),
            rule: AlertRule::Stalled,
            state,
            severity,
            summary: summary.into(),
            details: Map::new(),
            at: "2026-01-01T00:00:00Z".into(),
            suppressed: 0,
        }
    }

    #[test]
    fn a_firing_alert_is_a_warning_and_its_end_a_normal_event() {
        let firing = EventSink::event(&alert(AlertState::Firing, Severity::Warning, "stuck"));
        assert_eq!(firing.type_, EventType::Warning);
        assert_eq!(firing.reason, "AlertStalled");
        assert_eq!(firing.note.as_deref(), Some("stuck"));
        let resolved = EventSink::event(&alert(AlertState::Resolved, Severity::Info, "moving"));
        assert_eq!(resolved.type_, EventType::Normal);
        assert_eq!(resolved.reason, "AlertStalledResolved");
        let long = EventSink::event(&alert(
            AlertState::Firing,
            Severity::Warning,
            &"x".repeat(5000),
        ));
        assert_eq!(long.note.unwrap().chars().count(), NOTE_MAX);
    }
}
