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

# ---- tenants ----------------------------------------------------------------------------------

output "tenant_worker_role_arns" {
  description = "Worker role ARN of each tenant, by namespace (IRSA: annotate the namespace's worker service account with eks.amazonaws.com/role-arn; Pod Identity: associate it)."
  value       = { for ns, r in aws_iam_role.tenant_worker : ns => r.arn }
}

output "tenant_worker_role_names" {
  description = "Worker role name of each tenant, by namespace."
  value       = { for ns, r in aws_iam_role.tenant_worker : ns => r.name }
}

output "tenant_worker_instance_profile_names" {
  description = "Instance profile of each tenant with instance_profile = true, by namespace (for the tenant's own Slurm nodes on EC2)."
  value       = { for ns, p in aws_iam_instance_profile.tenant_worker : ns => p.name }
}

output "tenant_worker_policy_json" {
  description = "Each tenant worker role's permissions policy (JSON), by namespace."
  value       = { for ns, d in data.aws_iam_policy_document.tenant_worker : ns => d.json }
}

output "tenant_worker_trust_policy_json" {
  description = "Who may assume each tenant's worker role (JSON), by namespace."
  value       = { for ns, d in data.aws_iam_policy_document.tenant_worker_trust : ns => d.json }
}
