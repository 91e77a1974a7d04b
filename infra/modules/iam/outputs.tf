output "operator_role_arn" {
  description = "ARN of the operator/coordinator role (annotate the operator's service account with it: eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.operator.arn
}

output "operator_role_name" {
  description = "Name of the operator role."
  value       = aws_iam_role.operator.name
}

output "worker_role_arn" {
  description = "ARN of the worker role."
  value       = aws_iam_role.worker.arn
}

output "worker_role_name" {
  description = "Name of the worker role."
  value       = aws_iam_role.worker.name
}

output "worker_instance_profile_name" {
  description = "Instance profile of the worker role, for Slurm compute nodes on EC2 (null when ec2.amazonaws.com is not trusted)."
  value       = one(aws_iam_instance_profile.worker[*].name)
}

output "worker_instance_profile_arn" {
  description = "ARN of the worker instance profile (null when ec2.amazonaws.com is not trusted)."
  value       = one(aws_iam_instance_profile.worker[*].arn)
}

# The policies as AWS receives them, for review (and for infra/examples/complete/tests).

output "operator_policy_json" {
  description = "The operator role's permissions policy (JSON)."
  value       = data.aws_iam_policy_document.operator.json
}

output "worker_policy_json" {
  description = "The worker role's permissions policy (JSON)."
  value       = data.aws_iam_policy_document.worker.json
}

output "operator_trust_policy_json" {
  description = "Who may assume the operator role (JSON)."
  value       = data.aws_iam_policy_document.operator_trust.json
}

output "worker_trust_policy_json" {
  description = "Who may assume the worker role (JSON)."
  value       = data.aws_iam_policy_document.worker_trust.json
}
