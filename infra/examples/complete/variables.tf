variable "region" {
  description = "AWS region of the data plane (orch's processes get it from the standard AWS chain, e.g. AWS_REGION)."
  type        = string
  default     = "eu-west-1"
}

variable "name_prefix" {
  description = "Prefix of every name: KMS alias alias/<p>, roles <p>-operator and <p>-worker, and by default the table <p> and the queue <p>-retries. \"orch\" gives orch's defaults, so neither ORCH_DYNAMODB_TABLE nor ORCH_SQS_QUEUE needs setting."
  type        = string
  default     = "orch"
}

variable "tags" {
  description = "Tags applied to every resource (provider default_tags)."
  type        = map(string)
  default = {
    Project   = "orch"
    ManagedBy = "terraform"
  }
}

variable "bucket_name" {
  description = "Name of the orch bucket (globally unique). Null: AWS generates one starting with \"<name_prefix>-\"."
  type        = string
  default     = null
}

variable "storage_prefix" {
  description = "Key prefix of orch's storage in the bucket (storage.uri = s3://<bucket>/<storage_prefix>): empty, or ending in \"/\"."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_prefix == "" || (endswith(var.storage_prefix, "/") && !startswith(var.storage_prefix, "/"))
    error_message = "storage_prefix must be empty or end with \"/\" and not start with \"/\"."
  }
}

variable "table_name" {
  description = "Name of the DynamoDB table (ORCH_DYNAMODB_TABLE). Null: name_prefix."
  type        = string
  default     = null
}

variable "queue_name" {
  description = "Name of the retry queue (ORCH_SQS_QUEUE); its DLQ is <queue_name>-dlq. Null: <name_prefix>-retries."
  type        = string
  default     = null
}

variable "billing_mode" {
  description = "DynamoDB billing mode: PAY_PER_REQUEST or PROVISIONED."
  type        = string
  default     = "PAY_PER_REQUEST"
}

variable "deletion_protection" {
  description = "DynamoDB deletion protection."
  type        = bool
  default     = true
}

variable "intermediate_expiration_days" {
  description = "Days after which objects tagged orch-intermediate=true expire."
  type        = number
  default     = 7
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions expire."
  type        = number
  default     = 30
}

variable "max_receive_count" {
  description = "Receives of a retry message before it moves to the DLQ."
  type        = number
  default     = 5
}

variable "input_s3_uris" {
  description = "S3 locations of job input (s3://bucket/prefix/) that the roles may read."
  type        = list(string)
  default     = []
}

variable "output_s3_uris" {
  description = "S3 locations of job output (output.uri) that the roles may write. Empty: s3://<bucket>/<storage_prefix>output/."
  type        = list(string)
  default     = []
}

variable "oidc_provider_arn" {
  description = "EKS IAM OIDC provider ARN for IRSA (the operator, and k8s-executor worker pods). Null: no IRSA."
  type        = string
  default     = null
}

variable "operator_service_accounts" {
  description = "Kubernetes service accounts that assume the operator role through IRSA."
  type = list(object({
    namespace = string
    name      = string
  }))
  default = [{ namespace = "orch-system", name = "orch-operator" }]
}

variable "worker_service_accounts" {
  description = "Kubernetes service accounts that assume the worker role through IRSA (k8s executor pods)."
  type = list(object({
    namespace = string
    name      = string
  }))
  default = []
}

variable "operator_trusted_principal_arns" {
  description = "IAM principals that may assume the operator role (e.g. an admin role running `orch run`)."
  type        = list(string)
  default     = []
}

variable "worker_trusted_services" {
  description = "AWS services that may assume the worker role; ec2.amazonaws.com creates an instance profile for Slurm nodes on EC2."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "worker_trusted_principal_arns" {
  description = "IAM principals that may assume the worker role (e.g. on-premises Slurm nodes through IAM Roles Anywhere)."
  type        = list(string)
  default     = []
}

variable "key_administrator_arns" {
  description = "Principals that may administer (not use) the KMS key, besides the account root."
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "Existing bucket for the orch bucket's S3 server access logs (same region, SSE-S3, policy allowing logging.s3.amazonaws.com), logged under \"<bucket name>/\". Null: no access logs."
  type        = string
  default     = null
}

variable "force_destroy_bucket" {
  description = "Let terraform destroy delete a non-empty bucket (throwaway environments only)."
  type        = bool
  default     = false
}

variable "tenants" {
  description = "Tenants (Kubernetes namespaces) of the orch operator: each gets its own worker role <name_prefix>-worker-<namespace>, limited to its storage <storage_prefix><namespace>/, its DynamoDB partitions and its data (default s3://<bucket>/<namespace>/). See modules/iam and infra/README.md, \"Tenants\"."
  type = map(object({
    data_s3_uris           = optional(list(string), [])
    read_s3_uris           = optional(list(string), [])
    service_accounts       = optional(list(string), [])
    pod_identity           = optional(bool, false)
    instance_profile       = optional(bool, false)
    trusted_principal_arns = optional(list(string), [])
  }))
  default = {}
}
