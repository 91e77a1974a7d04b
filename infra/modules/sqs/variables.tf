variable "name_prefix" {
  description = "The retry queue is \"<name_prefix>-retries\" when queue_name is null (orch's default queue is \"orch-retries\")."
  type        = string
  default     = "orch"
}

variable "queue_name" {
  description = "Name of the retry queue; orch reads it from ORCH_SQS_QUEUE (default \"orch-retries\"). Its dead-letter queue is always \"<queue_name>-dlq\" (docs/aws.md). Null: \"<name_prefix>-retries\"."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "ARN of the orch KMS key: server-side encryption of both queues."
  type        = string
}

variable "max_receive_count" {
  description = "Receives after which a retry message that keeps failing moves to the dead-letter queue (docs/aws.md: 5)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "visibility_timeout_seconds" {
  description = "How long a received retry message stays hidden before another consumer may receive it. orch extends it while it handles a message, so this only bounds how long a message waits after its consumer died."
  type        = number
  default     = 300

  validation {
    condition     = var.visibility_timeout_seconds >= 30 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 30 and 43200 (12 h)."
  }
}

variable "message_retention_seconds" {
  description = "How long an unconsumed retry message is kept on the main queue (default 4 days: a retry survives a weekend without a running operator)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 3600 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 3600 (1 h) and 1209600 (14 days)."
  }
}

variable "dlq_message_retention_seconds" {
  description = "How long a dead-lettered message is kept (default 14 days, the maximum). A standard queue keeps a message's original enqueue time when it is dead-lettered, so this must exceed message_retention_seconds or dead letters can expire on arrival."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_seconds >= 3600 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 3600 (1 h) and 1209600 (14 days)."
  }
}

variable "receive_wait_time_seconds" {
  description = "Long polling: how long a ReceiveMessage waits for a message (0-20 s)."
  type        = number
  default     = 20

  validation {
    condition     = var.receive_wait_time_seconds >= 0 && var.receive_wait_time_seconds <= 20
    error_message = "receive_wait_time_seconds must be between 0 and 20."
  }
}

variable "kms_data_key_reuse_period_seconds" {
  description = "How long SQS reuses a data key before calling KMS again (60-86400 s): fewer KMS calls, same key."
  type        = number
  default     = 300
}
