output "key_arn" {
  description = "ARN of the orch key (what S3, DynamoDB, SQS and the IAM policies reference)."
  value       = aws_kms_key.this.arn
}

output "key_id" {
  description = "Key id of the orch key."
  value       = aws_kms_key.this.key_id
}

output "alias_name" {
  description = "Alias of the orch key (alias/<name_prefix>)."
  value       = aws_kms_alias.this.name
}

output "alias_arn" {
  description = "ARN of the alias."
  value       = aws_kms_alias.this.arn
}

output "key_policy_json" {
  description = "The key policy (JSON), for review."
  value       = data.aws_iam_policy_document.key.json
}
