# orch's two roles, with the permissions of docs/aws.md ("IAM (least privilege)"):
#   worker   — claims, heartbeats and commits its own task; reads and writes job objects.
#   operator — the coordinator: everything a worker does, plus creating tasks, purging jobs and
#              the retry queue.
# Every statement names its resources; there is no "*" action and no "*" resource.

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition

  # storage.uri = s3://<bucket>/<storage_prefix>; orch's objects are under <storage_prefix>jobs/.
  jobs_prefix  = "${var.storage_prefix}jobs/"
  jobs_objects = "${var.bucket_arn}/${local.jobs_prefix}*"

  # s3://bucket/prefix -> bucket and key prefix ("" for a whole bucket).
  input_locations = [for u in var.input_s3_uris : {
    bucket_arn = "arn:${local.partition}:s3:::${regex("^s3://([^/]+)", u)[0]}"
    prefix     = try(regex("^s3://[^/]+/(.*)$", u)[0], "")
  }]
  output_locations = [for u in var.output_s3_uris : {
    bucket_arn = "arn:${local.partition}:s3:::${regex("^s3://([^/]+)", u)[0]}"
    prefix     = try(regex("^s3://[^/]+/(.*)$", u)[0], "")
  }]

  worker_s3_actions   = ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"]
  operator_s3_actions = ["s3:DeleteObject", "s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"]

  worker_table_actions = ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"]
  operator_table_actions = [
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
  ]

  operator_queue_actions = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
  ]

  kms_actions = ["kms:Decrypt", "kms:GenerateDataKey"]

  # IRSA: the issuer is the OIDC provider ARN after "oidc-provider/".
  oidc_issuer      = try(split("oidc-provider/", var.oidc_provider_arn)[1], null)
  operator_irsa    = var.oidc_provider_arn != null && length(var.operator_service_accounts) > 0
  worker_irsa      = var.oidc_provider_arn != null && length(var.worker_service_accounts) > 0
  worker_ec2       = contains(var.worker_trusted_services, "ec2.amazonaws.com")
  operator_trusted = local.operator_irsa || length(var.operator_trusted_principal_arns) > 0
  worker_trusted   = local.worker_irsa || length(var.worker_trusted_services) > 0 || length(var.worker_trusted_principal_arns) > 0
}

# ---- trust policies ---------------------------------------------------------------------------

data "aws_iam_policy_document" "operator_trust" {
  # The orch operator's Kubernetes service account, through the cluster's OIDC provider (IRSA).
  dynamic "statement" {
    for_each = local.operator_irsa ? [1] : []
    content {
      sid     = "OperatorServiceAccount"
      effect  = "Allow"
      actions = ["sts:AssumeRoleWithWebIdentity"]

      principals {
        type        = "Federated"
        identifiers = [var.oidc_provider_arn]
      }

      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:aud"
        values   = ["sts.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:sub"
        values   = [for sa in var.operator_service_accounts : "system:serviceaccount:${sa.namespace}:${sa.name}"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.operator_trusted_principal_arns) > 0 ? [1] : []
    content {
      sid     = "OperatorPrincipals"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.operator_trusted_principal_arns
      }
    }
  }
}

data "aws_iam_policy_document" "worker_trust" {
  # Pods of the Kubernetes executor.
  dynamic "statement" {
    for_each = local.worker_irsa ? [1] : []
    content {
      sid     = "WorkerServiceAccounts"
      effect  = "Allow"
      actions = ["sts:AssumeRoleWithWebIdentity"]

      principals {
        type        = "Federated"
        identifiers = [var.oidc_provider_arn]
      }

      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:aud"
        values   = ["sts.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:sub"
        values   = [for sa in var.worker_service_accounts : "system:serviceaccount:${sa.namespace}:${sa.name}"]
      }
    }
  }

  # Slurm compute nodes on EC2 (through the instance profile below).
  dynamic "statement" {
    for_each = length(var.worker_trusted_services) > 0 ? [1] : []
    content {
      sid     = "WorkerServices"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "Service"
        identifiers = var.worker_trusted_services
      }
    }
  }

  # Any other node identity, e.g. on-premises Slurm nodes through IAM Roles Anywhere.
  dynamic "statement" {
    for_each = length(var.worker_trusted_principal_arns) > 0 ? [1] : []
    content {
      sid     = "WorkerPrincipals"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.worker_trusted_principal_arns
      }
    }
  }
}

# ---- worker permissions -----------------------------------------------------------------------

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "JobObjects"
    effect    = "Allow"
    actions   = local.worker_s3_actions
    resources = [local.jobs_objects]
  }

  statement {
    sid       = "ListJobObjects"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.jobs_prefix}*"]
    }
  }

  # Claim, heartbeat and commit of the worker's own task (conditional on version).
  statement {
    sid       = "TaskRows"
    effect    = "Allow"
    actions   = local.worker_table_actions
    resources = [var.table_arn]
  }

  statement {
    sid       = "OrchKey"
    effect    = "Allow"
    actions   = local.kms_actions
    resources = [var.kms_key_arn]
  }

  dynamic "statement" {
    for_each = local.input_locations
    content {
      sid       = "ReadInput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.input_locations
    content {
      sid       = "ListInput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [statement.value.bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  # The final merge task runs on a worker and writes the output parts.
  dynamic "statement" {
    for_each = local.output_locations
    content {
      sid       = "WriteOutput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.output_locations
    content {
      sid       = "ListOutput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [statement.value.bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }
}

# ---- operator permissions ---------------------------------------------------------------------

data "aws_iam_policy_document" "operator" {
  statement {
    sid       = "JobObjects"
    effect    = "Allow"
    actions   = local.operator_s3_actions
    resources = [local.jobs_objects]
  }

  statement {
    sid       = "ListJobObjects"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.jobs_prefix}*"]
    }
  }

  statement {
    sid       = "JobAndTaskRows"
    effect    = "Allow"
    actions   = local.operator_table_actions
    resources = [var.table_arn]
  }

  statement {
    sid       = "QueryIndexes"
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = var.table_index_arns
  }

  statement {
    sid       = "RetryQueues"
    effect    = "Allow"
    actions   = local.operator_queue_actions
    resources = [var.queue_arn, var.dlq_arn]
  }

  statement {
    sid       = "OrchKey"
    effect    = "Allow"
    actions   = local.kms_actions
    resources = [var.kms_key_arn]
  }

  dynamic "statement" {
    for_each = local.input_locations
    content {
      sid       = "ReadInput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.input_locations
    content {
      sid       = "ListInput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [statement.value.bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  # The coordinator clears an earlier run's files before the final merge task writes the
  # parts, and writes _SUCCESS last, next to them.
  dynamic "statement" {
    for_each = local.output_locations
    content {
      sid       = "WriteOutput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.output_locations
    content {
      sid       = "ListOutput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [statement.value.bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }
}

# ---- roles ------------------------------------------------------------------------------------

resource "aws_iam_role" "operator" {
  name                 = "${var.name_prefix}-operator"
  path                 = var.path
  description          = "orch operator/coordinator: job and task rows, retry queue, job objects"
  assume_role_policy   = data.aws_iam_policy_document.operator_trust.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = merge(var.tags, { Name = "${var.name_prefix}-operator" })

  lifecycle {
    precondition {
      condition     = local.operator_trusted
      error_message = "Nobody could assume the operator role: set oidc_provider_arn (with operator_service_accounts) or operator_trusted_principal_arns."
    }
  }
}

resource "aws_iam_role" "worker" {
  name                 = "${var.name_prefix}-worker"
  path                 = var.path
  description          = "orch worker: claims and commits its own task, reads and writes job objects"
  assume_role_policy   = data.aws_iam_policy_document.worker_trust.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = merge(var.tags, { Name = "${var.name_prefix}-worker" })

  lifecycle {
    precondition {
      condition     = local.worker_trusted
      error_message = "Nobody could assume the worker role: set worker_trusted_services, worker_trusted_principal_arns or oidc_provider_arn with worker_service_accounts."
    }
  }
}

resource "aws_iam_role_policy" "operator" {
  name   = "${var.name_prefix}-operator"
  role   = aws_iam_role.operator.id
  policy = data.aws_iam_policy_document.operator.json
}

resource "aws_iam_role_policy" "worker" {
  name   = "${var.name_prefix}-worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_instance_profile" "worker" {
  count = local.worker_ec2 ? 1 : 0

  name = "${var.name_prefix}-worker"
  path = var.path
  role = aws_iam_role.worker.name
  tags = merge(var.tags, { Name = "${var.name_prefix}-worker" })
}
