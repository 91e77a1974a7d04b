variable "name_prefix" {
  description = "Used as the bucket name prefix (AWS appends a unique suffix) when bucket_name is null."
  type        = string
  default     = "orch"
}

variable "bucket_name" {
  description = "Name of the bucket (globally unique). Null: AWS generates one starting with \"<name_prefix>-\"."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "ARN of the orch KMS key: default encryption of every object (SSE-KMS, bucket key on)."
  type        = string
}

variable "intermediate_expiration_days" {
  description = "Days after which objects tagged orch-intermediate=true (aggregate levels, checkpoints, materialised input: docs/aws.md) expire."
  type        = number
  default     = 7

  validation {
    condition     = var.intermediate_expiration_days >= 1
    error_message = "intermediate_expiration_days must be at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which an overwritten or deleted object version (versioning is on) is removed for good."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which the parts of a multipart upload that was never completed (a worker killed mid-upload) are deleted."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && var.abort_incomplete_multipart_upload_days <= 7
    error_message = "abort_incomplete_multipart_upload_days must be between 1 and 7."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Keep false outside throwaway environments."
  type        = bool
  default     = false
}

variable "access_log_bucket" {
  description = "Name of an existing bucket that receives the S3 server access logs of this bucket (same region, SSE-S3 default encryption, a bucket policy allowing logging.s3.amazonaws.com). Null: no server access logs."
  type        = string
  default     = null
}

variable "access_log_prefix" {
  description = "Key prefix of the access logs in access_log_bucket. Null: \"<bucket name>/\"."
  type        = string
  default     = null
}
