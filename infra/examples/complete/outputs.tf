output "bucket_name" {
  description = "The orch bucket."
  value       = module.s3.bucket_id
}

output "storage_uri" {
  description = "storage.uri for orch (a job spec's storage.uri, or the operator's configured bucket)."
  value       = "s3://${module.s3.bucket_id}/${var.storage_prefix}"
}

output "output_uris" {
  description = "S3 locations the roles may write job output to (output.uri)."
  value       = local.output_s3_uris
}

output "table_name" {
  description = "The DynamoDB table."
  value       = module.dynamodb.table_name
}

output "queue_name" {
  description = "The retry queue."
  value       = module.sqs.queue_name
}

output "queue_url" {
  description = "URL of the retry queue."
  value       = module.sqs.queue_url
}

output "dlq_url" {
  description = "URL of the dead-letter queue."
  value       = module.sqs.dlq_url
}

output "kms_key_arn" {
  description = "The orch KMS key."
  value       = module.kms.key_arn
}

output "operator_role_arn" {
  description = "Operator role (annotate the operator's service account: eks.amazonaws.com/role-arn)."
  value       = module.iam.operator_role_arn
}

output "worker_role_arn" {
  description = "Worker role."
  value       = module.iam.worker_role_arn
}

output "worker_instance_profile_name" {
  description = "Instance profile for Slurm compute nodes on EC2 (null if EC2 is not trusted)."
  value       = module.iam.worker_instance_profile_name
}

output "orch_env" {
  description = "Environment for orch's processes (operator, workers, `orch run`; docs/aws.md). Credentials come from the role, never from here. The storage location is not an environment variable: it is storage_uri."
  value = {
    AWS_REGION          = var.region
    ORCH_DYNAMODB_TABLE = module.dynamodb.table_name
    ORCH_SQS_QUEUE      = module.sqs.queue_name
  }
}

output "tenant_worker_role_arns" {
  description = "Worker role of each tenant, by namespace: bind it to that namespace's worker service account (IRSA annotation or Pod Identity association) or its Slurm nodes."
  value       = module.iam.tenant_worker_role_arns
}

output "tenant_storage_uris" {
  description = "Storage of each tenant under the operator (OrchPolicy storage.uri default), by namespace."
  value       = { for ns in keys(var.tenants) : ns => "s3://${module.s3.bucket_id}/${var.storage_prefix}${ns}/" }
}
