# orch's retry queue (standard) and its dead-letter queue (docs/aws.md, "SQS").
#
# Timing, for retries:
# - delay: per message (DelaySeconds, at most 900 s; orch re-enqueues longer backoffs when they
#   come due), so the queue's own delay_seconds is 0.
# - visibility timeout 300 s: orch extends visibility while it handles a message, so this only
#   decides how soon a message whose consumer died is handed out again; 5 minutes is long enough
#   not to race a slow but healthy consumer and short enough to lose little time after a crash.
# - retention 4 days on the main queue, 14 days (the maximum) on the DLQ: a retry request survives
#   an operator outage over a weekend, and a dead letter stays long enough to be inspected and
#   redriven. The DLQ must keep messages longer than the main queue because a standard queue keeps
#   a message's original enqueue timestamp when it moves it to the DLQ.
# - maxReceiveCount 5: a message that failed five times is poison, not a transient error.

locals {
  queue_name = coalesce(var.queue_name, "${var.name_prefix}-retries")
  dlq_name   = "${local.queue_name}-dlq"
}

resource "aws_sqs_queue" "dlq" {
  name                              = local.dlq_name
  message_retention_seconds         = var.dlq_message_retention_seconds
  receive_wait_time_seconds         = var.receive_wait_time_seconds
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_data_key_reuse_period_seconds
  tags                              = merge(var.tags, { Name = local.dlq_name })

  lifecycle {
    precondition {
      condition     = var.dlq_message_retention_seconds > var.message_retention_seconds
      error_message = "dlq_message_retention_seconds must be longer than message_retention_seconds (a dead-lettered message keeps its original enqueue time)."
    }
  }
}

resource "aws_sqs_queue" "main" {
  name                              = local.queue_name
  delay_seconds                     = 0
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = var.receive_wait_time_seconds
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_data_key_reuse_period_seconds

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = merge(var.tags, { Name = local.queue_name })
}

# Only the retry queue may dead-letter into the DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.main.arn]
  })
}

data "aws_iam_policy_document" "deny_insecure_transport" {
  for_each = {
    main = aws_sqs_queue.main.arn
    dlq  = aws_sqs_queue.dlq.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]

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
}

resource "aws_sqs_queue_policy" "main" {
  queue_url = aws_sqs_queue.main.id
  policy    = data.aws_iam_policy_document.deny_insecure_transport["main"].json
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.deny_insecure_transport["dlq"].json
}
