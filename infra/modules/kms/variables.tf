variable "name_prefix" {
  description = "Prefix of every name this module creates; the alias is alias/<name_prefix>."
  type        = string
  default     = "orch"

  validation {
    condition     = can(regex("^[A-Za-z0-9/_-]{1,200}$", var.name_prefix)) && !startswith(var.name_prefix, "aws")
    error_message = "name_prefix must be 1-200 characters of A-Z a-z 0-9 / _ - and must not start with \"aws\" (reserved for AWS aliases)."
  }
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}

variable "user_role_arns" {
  description = "ARNs of the IAM roles that use the key (orch's operator and worker roles): kms:Decrypt and kms:GenerateDataKey directly, plus what DynamoDB needs when it uses the key on their behalf."
  type        = list(string)
  default     = []
}

variable "administrator_arns" {
  description = "Extra principals (roles, users) that may administer the key but not use it for data. The account root always keeps full access so the key can never become unmanageable."
  type        = list(string)
  default     = []
}

variable "deletion_window_in_days" {
  description = "Waiting period before a scheduled key deletion takes effect (7-30 days)."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30
    error_message = "deletion_window_in_days must be between 7 and 30."
  }
}
