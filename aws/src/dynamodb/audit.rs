//! The [`AuditLog`] contract on orch's table: one item per entry (`pk` `AUDIT#<namespace>`,
//! `sk` `<time in ms, 13 digits>#<write id>`), written with a `PutItem` that never replaces an
//! item, read with a `Query` of the namespace's partition. Apart from the jobs' partitions, so
//! a purge of a job leaves its history, and the IAM of workers grants them nothing here
//! (docs/security.md).

use async_trait::async_trait;
use orch_core::backend::{AuditLog, BackendResult};
use orch_core::model::AuditEntry;

use super::item::{BODY, Item, PK, SK, corrupt, encode, get_s, new_write_id, s};
use super::{DynamoStateStore, SERVICE};
use crate::error::sdk_error;

fn audit_pk(namespace: &str) -> String {
    format!("AUDIT#{namespace}")
}

fn decode(item: &Item) -> BackendResult<AuditEntry> {
    let body = get_s(item, BODY).ok_or_else(|| corrupt("an audit entry", "no body"))?;
    serde_json::from_str(body).map_err(|e| corrupt("an audit entry", e))
}

#[async_trait]
impl AuditLog for DynamoStateStore {
    async fn append(&self, entry: &AuditEntry) -> BackendResult<()> {
        let pk = audit_pk(&entry.namespace);
        let item: Item = [
            (PK.to_string(), s(&pk)),
            (
                SK.to_string(),
                s(format!("{:013}#{}", entry.at, new_write_id())),
            ),
            (BODY.to_string(), s(encode("audit entry", entry)?)),
        ]
        .into_iter()
        .collect();
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "PutItem", format!("{} {pk}", self.table), e))?;
        Ok(())
    }

    async fn entries(&self, namespace: &str) -> BackendResult<Vec<AuditEntry>> {
        let pk = audit_pk(namespace);
        self.query_all("Query audit", &pk, true, || {
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(&pk))
        })
        .await?
        .iter()
        .map(decode)
        .collect()
    }
}
