variable "name_prefix" {
  description = "The roles are \"<name_prefix>-operator\" and \"<name_prefix>-worker\"."
  type        = string
  default     = "orch"
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}

variable "path" {
  description = "IAM path of the roles and the instance profile."
  type        = string
  default     = "/"
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary attached to both roles, if the account requires one."
  type        = string
  default     = null
}

# ---- what the roles may reach -------------------------------------------------------------

variable "bucket_arn" {
  description = "ARN of the orch bucket."
  type        = string
}

variable "storage_prefix" {
  description = "Key prefix of orch's storage in the bucket: storage.uri is s3://<bucket>/<storage_prefix>. Empty, or ending in \"/\" (e.g. \"orch/\"). S3 access is scoped to <storage_prefix>jobs/."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_prefix == "" || (endswith(var.storage_prefix, "/") && !startswith(var.storage_prefix, "/"))
    error_message = "storage_prefix must be empty or end with \"/\" and not start with \"/\"."
  }
}

variable "table_arn" {
  description = "ARN of the orch DynamoDB table."
  type        = string
}

variable "table_index_arns" {
  description = "ARNs of the table's global secondary indexes (by-state, jobs): the operator queries them."
  type        = list(string)
}

variable "queue_arn" {
  description = "ARN of the retry queue."
  type        = string
}

variable "dlq_arn" {
  description = "ARN of the retry queue's dead-letter queue."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of the orch KMS key."
  type        = string
}

variable "input_s3_uris" {
  description = "Where job input lives (s3://bucket/prefix/), read by both roles: the operator partitions it, workers read their batch's byte range in place. Outside the orch bucket, the objects' own KMS key (if any) must also allow the roles."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for u in var.input_s3_uris : can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", u))])
    error_message = "input_s3_uris must be s3://bucket or s3://bucket/prefix URIs."
  }
}

variable "output_s3_uris" {
  description = "Where job output goes (output.uri, s3://bucket/prefix/), read and written by both roles: the final merge task (a worker) writes the parts, the operator writes _SUCCESS. No delete."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for u in var.output_s3_uris : can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", u))])
    error_message = "output_s3_uris must be s3://bucket or s3://bucket/prefix URIs."
  }
}

# ---- who may assume the roles -------------------------------------------------------------

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA), e.g. arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE. Null: no Kubernetes service account can assume the roles."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_provider_arn == null || can(regex("^arn:[^:]+:iam::[0-9]{12}:oidc-provider/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn must be an IAM OIDC provider ARN (arn:<partition>:iam::<account>:oidc-provider/<issuer host and path>)."
  }
}

variable "operator_service_accounts" {
  description = "Kubernetes service accounts (through oidc_provider_arn) that may assume the operator role: the orch operator's."
  type = list(object({
    namespace = string
    name      = string
  }))
  default = [{ namespace = "orch-system", name = "orch-operator" }]
}

variable "worker_service_accounts" {
  description = "Kubernetes service accounts (through oidc_provider_arn) that may assume the worker role: the pods of the k8s executor."
  type = list(object({
    namespace = string
    name      = string
  }))
  default = []
}

variable "operator_trusted_principal_arns" {
  description = "IAM principals (roles, users, accounts) that may assume the operator role with sts:AssumeRole, e.g. an admin role that runs `orch run` from a workstation or a login node."
  type        = list(string)
  default     = []
}

variable "worker_trusted_services" {
  description = "AWS services that may assume the worker role. ec2.amazonaws.com (the default) lets Slurm compute nodes on EC2 use it through the instance profile this module creates."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "worker_trusted_principal_arns" {
  description = "IAM principals that may assume the worker role with sts:AssumeRole, e.g. the role of on-premises Slurm nodes (IAM Roles Anywhere) or of an existing node instance profile."
  type        = list(string)
  default     = []
}

# ---- tenants: one worker role per namespace ---------------------------------------------------

variable "tenants" {
  description = <<-EOT
    Tenants of the orch operator, by Kubernetes namespace: each gets its own worker role
    <name_prefix>-worker-<namespace> that reaches only its storage <storage_prefix><namespace>/,
    its DynamoDB partitions and its data (infra/README.md, "Tenants"). Attributes, all optional:
    data_s3_uris (read/write, never delete; default ["s3://<bucket>/<namespace>/"]),
    read_s3_uris (read-only input, e.g. shared datasets), and who may assume the role:
    service_accounts (names in the namespace, through oidc_provider_arn or with pod_identity),
    pod_identity (EKS Pod Identity), instance_profile (Slurm nodes on EC2 dedicated to the
    tenant), trusted_principal_arns. Empty: no tenant roles (the shared worker role only).
  EOT
  type = map(object({
    data_s3_uris           = optional(list(string), [])
    read_s3_uris           = optional(list(string), [])
    service_accounts       = optional(list(string), [])
    pod_identity           = optional(bool, false)
    instance_profile       = optional(bool, false)
    trusted_principal_arns = optional(list(string), [])
  }))
  default = {}

  validation {
    condition     = alltrue([for ns in keys(var.tenants) : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", ns))])
    error_message = "tenants must be keyed by Kubernetes namespace names (RFC 1123 labels: lowercase letters, digits, \"-\")."
  }

  validation {
    condition = alltrue(flatten([for t in values(var.tenants) : [
      for u in concat(t.data_s3_uris, t.read_s3_uris) : can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(.*/)?$", u))
    ]]))
    error_message = "A tenant's data_s3_uris and read_s3_uris must be s3://bucket/ or s3://bucket/prefix/ URIs ending in \"/\" (so that team-a/ never matches team-ab/)."
  }
}
