output "queue_name" {
  description = "Name of the retry queue (ORCH_SQS_QUEUE)."
  value       = aws_sqs_queue.main.name
}

output "queue_url" {
  description = "URL of the retry queue."
  value       = aws_sqs_queue.main.url
}

output "queue_arn" {
  description = "ARN of the retry queue."
  value       = aws_sqs_queue.main.arn
}

output "dlq_name" {
  description = "Name of the dead-letter queue (<queue_name>-dlq)."
  value       = aws_sqs_queue.dlq.name
}

output "dlq_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dlq.url
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "queue_policy_json" {
  description = "The queue policies (JSON) by queue (main, dlq), for review."
  value       = { for k, doc in data.aws_iam_policy_document.deny_insecure_transport : k => doc.json }
}
