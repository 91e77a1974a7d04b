# The orch bucket: manifests, batches, task results, checkpoints, aggregation levels and
# (usually) final output, laid out as docs/job-spec.md describes under the storage prefix.

locals {
  # Fixed by docs/aws.md ("S3 layout"): the object tag orch puts on objects that only matter
  # while a job runs.
  intermediate_tag_key   = "orch-intermediate"
  intermediate_tag_value = "true"
}

resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_18:access logging needs a separate target bucket that is not SSE-KMS; it is optional (access_log_bucket, aws_s3_bucket_logging below) and off by default
  # checkov:skip=CKV_AWS_144:cross-region replication needs a second bucket, region and key, and doubles storage of mostly short-lived job data; the operator's choice (versioning is on, so it can be added)
  # checkov:skip=CKV2_AWS_62:nothing consumes bucket events: orch tracks jobs and tasks in DynamoDB and the retry queue, not through S3 notifications
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name_prefix}-" : null
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Name = coalesce(var.bucket_name, var.name_prefix) })
}

# Server access logs, when the operator names a bucket for them (access_log_bucket). The target
# must be another bucket, in the same region, encrypted with SSE-S3 (server access logging does not
# deliver to SSE-KMS buckets), whose policy lets logging.s3.amazonaws.com put objects.
resource "aws_s3_bucket_logging" "this" {
  count = var.access_log_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = coalesce(var.access_log_prefix, "${aws_s3_bucket.this.id}/")
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # One data key per bucket instead of one KMS call per object: workers write many small
    # objects (results, markers), and KMS request quotas and costs are per call.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Lifecycle rules act on versions, so versioning must be configured first.
  depends_on = [aws_s3_bucket_versioning.this]

  # jobs/J/aggregate/, jobs/J/checkpoints/, jobs/J/input/ carry the tag; a prefix filter cannot
  # match them because the job id sits in the middle of the key.
  rule {
    id     = "expire-orch-intermediate"
    status = "Enabled"

    filter {
      tag {
        key   = local.intermediate_tag_key
        value = local.intermediate_tag_value
      }
    }

    expiration {
      days = var.intermediate_expiration_days
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    # Once every version of a key has expired, its lone delete marker goes too.
    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # A put that asks for another kind of encryption (e.g. SSE-S3) is refused; a put that asks for
  # none gets the bucket default (SSE-KMS with the orch key), which is what orch does.
  statement {
    sid       = "DenyPutWithOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.this.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    # Both conditions must hold: the header is present, and it is not aws:kms.
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["false"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 refuses a bucket policy while the public access block is being applied concurrently.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
