# orch's AWS data plane in one root module: KMS key, bucket, table, retry queues and the
# operator and worker roles, with the names of docs/aws.md.

locals {
  output_s3_uris = length(var.output_s3_uris) > 0 ? var.output_s3_uris : ["s3://${module.s3.bucket_id}/${var.storage_prefix}output/"]
}

module "kms" {
  source = "../../modules/kms"

  name_prefix        = var.name_prefix
  tags               = var.tags
  user_role_arns     = concat([module.iam.operator_role_arn, module.iam.worker_role_arn], values(module.iam.tenant_worker_role_arns))
  administrator_arns = var.key_administrator_arns
}

module "s3" {
  source = "../../modules/s3"

  name_prefix                        = var.name_prefix
  bucket_name                        = var.bucket_name
  tags                               = var.tags
  kms_key_arn                        = module.kms.key_arn
  intermediate_expiration_days       = var.intermediate_expiration_days
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  force_destroy                      = var.force_destroy_bucket
  access_log_bucket                  = var.access_log_bucket
}

module "dynamodb" {
  source = "../../modules/dynamodb"

  name_prefix         = var.name_prefix
  table_name          = var.table_name
  tags                = var.tags
  kms_key_arn         = module.kms.key_arn
  billing_mode        = var.billing_mode
  deletion_protection = var.deletion_protection
}

module "sqs" {
  source = "../../modules/sqs"

  name_prefix       = var.name_prefix
  queue_name        = var.queue_name
  tags              = var.tags
  kms_key_arn       = module.kms.key_arn
  max_receive_count = var.max_receive_count
}

# The key policy names the roles and the role policies name the key: no cycle, because the roles
# themselves do not depend on the key (Terraform orders resources, not modules).
module "iam" {
  source = "../../modules/iam"

  name_prefix      = var.name_prefix
  tags             = var.tags
  bucket_arn       = module.s3.bucket_arn
  storage_prefix   = var.storage_prefix
  table_arn        = module.dynamodb.table_arn
  table_index_arns = values(module.dynamodb.index_arns)
  queue_arn        = module.sqs.queue_arn
  dlq_arn          = module.sqs.dlq_arn
  kms_key_arn      = module.kms.key_arn
  input_s3_uris    = var.input_s3_uris
  output_s3_uris   = local.output_s3_uris
  tenants          = var.tenants

  oidc_provider_arn               = var.oidc_provider_arn
  operator_service_accounts       = var.operator_service_accounts
  worker_service_accounts         = var.worker_service_accounts
  operator_trusted_principal_arns = var.operator_trusted_principal_arns
  worker_trusted_services         = var.worker_trusted_services
  worker_trusted_principal_arns   = var.worker_trusted_principal_arns
}
