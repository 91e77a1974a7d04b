# The orch key: one customer-managed symmetric key that encrypts the bucket (SSE-KMS), the
# table (DynamoDB SSE) and both queues (SQS SSE), so that access to orch's data can be audited
# and revoked in one place.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"

  # What a key administrator may do: manage the key, never use it for data.
  admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:Create*",
    "kms:Delete*",
    "kms:Describe*",
    "kms:Disable*",
    "kms:Enable*",
    "kms:Get*",
    "kms:List*",
    "kms:Put*",
    "kms:Revoke*",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Update*",
  ]
}

# In a key policy "Resource" can only be "*", and it means "this key": a key policy is attached
# to exactly one key and cannot name any other resource. This is the one place where "*" appears
# as a resource in infra/, and no statement here has "*" as its action.
data "aws_iam_policy_document" "key" {
  # checkov:skip=CKV_AWS_109:a key policy's Resource "*" is this key only; managing it is for the account root (AWS's default statement) and the named key administrators
  # checkov:skip=CKV_AWS_111:a key policy's Resource "*" is this key only; the roles get Decrypt/GenerateDataKey, and Encrypt/CreateGrant only through DynamoDB (kms:ViaService)
  # checkov:skip=CKV_AWS_356:a key policy can name no resource but "*" (this key), so the statements cannot be narrowed by resource; principals and conditions narrow them
  # The account keeps full control of its key (AWS's default key policy statement). Without it a
  # mistake in this policy could make the key unmanageable; with it, IAM policies in the account
  # decide who else may use the key (orch's roles get theirs from modules/iam).
  statement {
    sid       = "AccountAdministersKey"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  dynamic "statement" {
    for_each = length(var.administrator_arns) > 0 ? [1] : []
    content {
      sid       = "KeyAdministrators"
      effect    = "Allow"
      actions   = local.admin_actions
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.administrator_arns
      }
    }
  }

  # S3 (bucket key) and SQS need exactly these two from the caller (docs/aws.md, IAM).
  dynamic "statement" {
    for_each = length(var.user_role_arns) > 0 ? [1] : []
    content {
      sid       = "OrchRolesUseKey"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.user_role_arns
      }
    }
  }

  # DynamoDB encrypts with a customer-managed key on behalf of the caller and needs these, only
  # when the call comes through DynamoDB in this region and this account.
  dynamic "statement" {
    for_each = length(var.user_role_arns) > 0 ? [1] : []
    content {
      sid    = "OrchRolesUseKeyThroughDynamoDB"
      effect = "Allow"
      actions = [
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:Encrypt",
        "kms:GenerateDataKey*",
        "kms:ReEncrypt*",
      ]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.user_role_arns
      }

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["dynamodb.${data.aws_region.current.name}.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "kms:CallerAccount"
        values   = [data.aws_caller_identity.current.account_id]
      }
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "orch data plane (${var.name_prefix}): S3 bucket, DynamoDB table, SQS queues"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = merge(var.tags, { Name = var.name_prefix })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.this.key_id
}
