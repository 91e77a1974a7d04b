output "table_name" {
  description = "Name of the table (ORCH_DYNAMODB_TABLE)."
  value       = aws_dynamodb_table.this.name
}

output "table_arn" {
  description = "ARN of the table."
  value       = aws_dynamodb_table.this.arn
}

output "index_arns" {
  description = "ARNs of the two global secondary indexes, by index name."
  value       = { for name in local.index_names : name => "${aws_dynamodb_table.this.arn}/index/${name}" }
}
