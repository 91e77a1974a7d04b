variable "name_prefix" {
  description = "Name of the table when table_name is null (orch's default table name is \"orch\")."
  type        = string
  default     = "orch"
}

variable "table_name" {
  description = "Name of the table; orch reads it from ORCH_DYNAMODB_TABLE (default \"orch\"). Null: name_prefix."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "ARN of the orch KMS key: server-side encryption of the table and its indexes."
  type        = string
}

variable "billing_mode" {
  description = "PAY_PER_REQUEST (on demand, the default: job bursts are spiky) or PROVISIONED."
  type        = string
  default     = "PAY_PER_REQUEST"

  validation {
    condition     = contains(["PAY_PER_REQUEST", "PROVISIONED"], var.billing_mode)
    error_message = "billing_mode must be PAY_PER_REQUEST or PROVISIONED."
  }
}

variable "read_capacity" {
  description = "Read capacity units of the table and of each index; only used when billing_mode is PROVISIONED."
  type        = number
  default     = 20
}

variable "write_capacity" {
  description = "Write capacity units of the table and of each index; only used when billing_mode is PROVISIONED."
  type        = number
  default     = 20
}

variable "deletion_protection" {
  description = "Refuse DeleteTable (also from terraform destroy) until this is turned off."
  type        = bool
  default     = true
}

variable "ttl_attribute" {
  description = "Name of a numeric attribute (epoch seconds) after which DynamoDB may delete an item. Null: TTL off. orch does not write one today."
  type        = string
  default     = null
}
