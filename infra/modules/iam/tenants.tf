# One worker role per tenant (Kubernetes namespace) of the operator: data-plane isolation.
#
# Tenant code runs as the worker, so a worker role shared by every namespace would let one
# tenant's handler rewrite another tenant's job spec, task rows and output. Each role here
# reaches only its own namespace's storage and data:
#
#   S3        <bucket>/<storage_prefix><ns>/jobs/*  Get/Put/PutObjectTagging, ListBucket by prefix;
#             <bucket>/<storage_prefix><ns>/jobs/*/job.json  explicitly denied every write (the
#             spec is written by the operator/coordinator only);
#             data (default s3://<bucket>/<ns>/): Get/Put, ListBucket by prefix, never delete;
#             read_s3_uris: Get, ListBucket by prefix.
#   DynamoDB  GetItem/UpdateItem/Query on the table and its indexes, only on partition keys
#             (dynamodb:LeadingKeys) <bucket>/<storage_prefix><ns>/*, RATELIMIT#ns/<ns>/*,
#             RATELIMIT#cluster/*, RATELIMIT#job/* (see infra/README.md for the residual risk).
#   KMS       Decrypt/GenerateDataKey on the orch key.
#
# Namespace names never contain "/", so "<storage_prefix>team-a/*" never matches
# "<storage_prefix>team-a-b/...".

locals {
  bucket_name = regex("^arn:[^:]+:s3:::(.+)$", var.bucket_arn)[0]

  # Every write a worker could make to an object; denied on the job spec.
  spec_write_actions = ["s3:DeleteObject*", "s3:PutObject*"]

  tenant_scopes = {
    for ns, t in var.tenants : ns => {
      storage_prefix = "${var.storage_prefix}${ns}/"
      jobs_prefix    = "${var.storage_prefix}${ns}/jobs/"
      jobs_objects   = "${var.bucket_arn}/${var.storage_prefix}${ns}/jobs/*"
      job_specs      = "${var.bucket_arn}/${var.storage_prefix}${ns}/jobs/*/job.json"
      leading_keys = [
        "${local.bucket_name}/${var.storage_prefix}${ns}/*",
        "RATELIMIT#ns/${ns}/*",
        "RATELIMIT#cluster/*",
        "RATELIMIT#job/*",
      ]
      data = [for u in coalescelist(t.data_s3_uris, ["s3://${local.bucket_name}/${ns}/"]) : {
        bucket_arn = "arn:${local.partition}:s3:::${regex("^s3://([^/]+)", u)[0]}"
        prefix     = try(regex("^s3://[^/]+/(.*)$", u)[0], "")
      }]
      read = [for u in t.read_s3_uris : {
        bucket_arn = "arn:${local.partition}:s3:::${regex("^s3://([^/]+)", u)[0]}"
        prefix     = try(regex("^s3://[^/]+/(.*)$", u)[0], "")
      }]
    }
  }

  # What each tenant may write, and what the shared roles write ("" = not a tenant): a tenant
  # whose storage, data or read prefix overlaps another's writable prefix would not be isolated.
  writable = concat(
    [{ ns = "", bucket_arn = var.bucket_arn, prefix = local.jobs_prefix }],
    [for l in local.output_locations : { ns = "", bucket_arn = l.bucket_arn, prefix = l.prefix }],
    flatten([for ns, s in local.tenant_scopes : concat(
      [{ ns = ns, bucket_arn = var.bucket_arn, prefix = s.storage_prefix }],
      [for l in s.data : { ns = ns, bucket_arn = l.bucket_arn, prefix = l.prefix }],
    )]),
  )
  tenant_reach = flatten([for ns, s in local.tenant_scopes : concat(
    [{ ns = ns, bucket_arn = var.bucket_arn, prefix = s.storage_prefix }],
    [for l in concat(s.data, s.read) : { ns = ns, bucket_arn = l.bucket_arn, prefix = l.prefix }],
  )])
  tenant_overlaps = flatten([for a in local.tenant_reach : [
    for w in local.writable : "${a.ns}: ${a.bucket_arn}/${a.prefix} overlaps ${w.ns == "" ? "the shared roles'" : w.ns}: ${w.bucket_arn}/${w.prefix}"
    if a.ns != w.ns && a.bucket_arn == w.bucket_arn && (startswith(a.prefix, w.prefix) || startswith(w.prefix, a.prefix))
  ]])

  tenant_trusted = {
    for ns, t in var.tenants : ns => (var.oidc_provider_arn != null && length(t.service_accounts) > 0) || t.pod_identity || t.instance_profile || length(t.trusted_principal_arns) > 0
  }
}

# ---- who may assume a tenant's role -------------------------------------------------------------

data "aws_iam_policy_document" "tenant_worker_trust" {
  for_each = var.tenants

  # IRSA: only service accounts of the tenant's own namespace.
  dynamic "statement" {
    for_each = var.oidc_provider_arn != null && length(each.value.service_accounts) > 0 ? [1] : []
    content {
      sid     = "TenantServiceAccounts"
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
        values   = [for sa in each.value.service_accounts : "system:serviceaccount:${each.key}:${sa}"]
      }
    }
  }

  # EKS Pod Identity: the association names the service account; the session tags EKS sets
  # pin the namespace (and the service accounts, when listed) here as well.
  dynamic "statement" {
    for_each = each.value.pod_identity ? [1] : []
    content {
      sid     = "TenantPodIdentity"
      effect  = "Allow"
      actions = ["sts:AssumeRole", "sts:TagSession"]

      principals {
        type        = "Service"
        identifiers = ["pods.eks.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "aws:RequestTag/kubernetes-namespace"
        values   = [each.key]
      }

      dynamic "condition" {
        for_each = length(each.value.service_accounts) > 0 ? [1] : []
        content {
          test     = "StringEquals"
          variable = "aws:RequestTag/kubernetes-service-account"
          values   = each.value.service_accounts
        }
      }
    }
  }

  # Slurm nodes on EC2 dedicated to this tenant (through the tenant's instance profile).
  dynamic "statement" {
    for_each = each.value.instance_profile ? [1] : []
    content {
      sid     = "TenantNodes"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "Service"
        identifiers = ["ec2.amazonaws.com"]
      }
    }
  }

  # Any other identity only this tenant's workers hold (e.g. IAM Roles Anywhere for its Slurm
  # account's nodes).
  dynamic "statement" {
    for_each = length(each.value.trusted_principal_arns) > 0 ? [1] : []
    content {
      sid     = "TenantPrincipals"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = each.value.trusted_principal_arns
      }
    }
  }
}

# ---- what a tenant's workers may do ---------------------------------------------------------------

data "aws_iam_policy_document" "tenant_worker" {
  for_each = local.tenant_scopes

  statement {
    sid       = "TenantJobObjects"
    effect    = "Allow"
    actions   = local.worker_s3_actions
    resources = [each.value.jobs_objects]
  }

  statement {
    sid       = "ListTenantJobObjects"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.value.jobs_prefix}*"]
    }
  }

  # The job spec (jobs/<job>/job.json) is the operator's: read-only to the tenant's code.
  statement {
    sid       = "JobSpecIsReadOnly"
    effect    = "Deny"
    actions   = local.spec_write_actions
    resources = [each.value.job_specs]
  }

  # Claim, heartbeat and commit of the tenant's own tasks, and its rate-limit buckets.
  statement {
    sid       = "TenantRows"
    effect    = "Allow"
    actions   = local.worker_table_actions
    resources = concat([var.table_arn], var.table_index_arns)

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = each.value.leading_keys
    }
  }

  statement {
    sid       = "OrchKey"
    effect    = "Allow"
    actions   = local.kms_actions
    resources = [var.kms_key_arn]
  }

  # The tenant's data prefix: input read in place, output written by the final merge task.
  dynamic "statement" {
    for_each = each.value.data
    content {
      sid       = "TenantData${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = each.value.data
    content {
      sid       = "ListTenantData${statement.key}"
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

  dynamic "statement" {
    for_each = each.value.read
    content {
      sid       = "ReadInput${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = each.value.read
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
}

# ---- roles ----------------------------------------------------------------------------------------

resource "aws_iam_role" "tenant_worker" {
  for_each = var.tenants

  name                 = "${var.name_prefix}-worker-${each.key}"
  path                 = var.path
  description          = "orch worker of namespace ${each.key}: its own job objects, task rows and data only"
  assume_role_policy   = data.aws_iam_policy_document.tenant_worker_trust[each.key].json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = merge(var.tags, { Name = "${var.name_prefix}-worker-${each.key}", "orch-namespace" = each.key })

  lifecycle {
    precondition {
      condition     = local.tenant_trusted[each.key]
      error_message = "Nobody could assume the worker role of tenant ${each.key}: set its service_accounts (with oidc_provider_arn), pod_identity, instance_profile or trusted_principal_arns."
    }

    precondition {
      condition     = length(local.tenant_overlaps) == 0
      error_message = "Tenants are not isolated: ${join("; ", local.tenant_overlaps)}."
    }

    precondition {
      condition     = length("${var.name_prefix}-worker-${each.key}") <= 64
      error_message = "The role name ${var.name_prefix}-worker-${each.key} is longer than IAM's 64 characters: shorten name_prefix."
    }
  }
}

resource "aws_iam_role_policy" "tenant_worker" {
  for_each = var.tenants

  name   = "${var.name_prefix}-worker-${each.key}"
  role   = aws_iam_role.tenant_worker[each.key].id
  policy = data.aws_iam_policy_document.tenant_worker[each.key].json
}

resource "aws_iam_instance_profile" "tenant_worker" {
  for_each = { for ns, t in var.tenants : ns => t if t.instance_profile }

  name = "${var.name_prefix}-worker-${each.key}"
  path = var.path
  role = aws_iam_role.tenant_worker[each.key].name
  tags = merge(var.tags, { Name = "${var.name_prefix}-worker-${each.key}", "orch-namespace" = each.key })
}
