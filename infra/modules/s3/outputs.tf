output "bucket_id" {
  description = "Name of the bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_regional_domain_name" {
  description = "Regional domain name of the bucket."
  value       = aws_s3_bucket.this.bucket_regional_domain_name
}

output "bucket_policy_json" {
  description = "The bucket policy (JSON), for review."
  value       = data.aws_iam_policy_document.bucket.json
}

output "access_log_target" {
  description = "Where the bucket's server access logs go (s3://<access_log_bucket>/<prefix>), or null when they are off."
  value       = one([for l in aws_s3_bucket_logging.this : "s3://${l.target_bucket}/${l.target_prefix}"])
}
