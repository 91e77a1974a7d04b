# `terraform test` of the example: plans with the real AWS provider and fake credentials, so
# nothing reaches AWS. The account id (the only AWS call) and the ARNs that AWS would assign are
# overridden during plan, so the policy documents render to the JSON that AWS would receive and
# are checked here. infra/tests/run.sh runs this when terraform and the AWS provider are
# available offline; infra/tests/test_infra.py checks the same sources without terraform.

provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

override_data {
  target          = module.kms.data.aws_caller_identity.current
  override_during = plan
  values = {
    account_id = "111122223333"
    arn        = "arn:aws:iam::111122223333:user/test"
  }
}

override_resource {
  target          = module.kms.aws_kms_key.this
  override_during = plan
  values = {
    arn    = "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-0000-0000-000000000000"
    key_id = "00000000-0000-0000-0000-000000000000"
  }
}

override_resource {
  target          = module.s3.aws_s3_bucket.this
  override_during = plan
  values = {
    id  = "orch-test-bucket"
    arn = "arn:aws:s3:::orch-test-bucket"
  }
}

override_resource {
  target          = module.dynamodb.aws_dynamodb_table.this
  override_during = plan
  values = {
    arn = "arn:aws:dynamodb:eu-west-1:111122223333:table/orch"
  }
}

override_resource {
  target          = module.sqs.aws_sqs_queue.main
  override_during = plan
  values = {
    arn = "arn:aws:sqs:eu-west-1:111122223333:orch-retries"
    id  = "https://sqs.eu-west-1.amazonaws.com/111122223333/orch-retries"
    url = "https://sqs.eu-west-1.amazonaws.com/111122223333/orch-retries"
  }
}

override_resource {
  target          = module.sqs.aws_sqs_queue.dlq
  override_during = plan
  values = {
    arn = "arn:aws:sqs:eu-west-1:111122223333:orch-retries-dlq"
    id  = "https://sqs.eu-west-1.amazonaws.com/111122223333/orch-retries-dlq"
    url = "https://sqs.eu-west-1.amazonaws.com/111122223333/orch-retries-dlq"
  }
}

override_resource {
  target          = module.iam.aws_iam_role.operator
  override_during = plan
  values = {
    arn = "arn:aws:iam::111122223333:role/orch-operator"
  }
}

override_resource {
  target          = module.iam.aws_iam_role.worker
  override_during = plan
  values = {
    arn = "arn:aws:iam::111122223333:role/orch-worker"
  }
}

override_resource {
  target          = module.iam.aws_iam_role.tenant_worker
  override_during = plan
  values = {
    arn = "arn:aws:iam::111122223333:role/orch-worker-tenant"
  }
}

variables {
  bucket_name       = "orch-test-bucket"
  oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
  input_s3_uris     = ["s3://datasets/corpus/"]
}

run "defaults" {
  command = plan

  assert {
    condition     = output.table_name == "orch" && output.queue_name == "orch-retries"
    error_message = "with name_prefix orch the table and queue must have orch's default names"
  }

  assert {
    condition     = module.sqs.dlq_name == "orch-retries-dlq"
    error_message = "the DLQ must be <queue>-dlq"
  }

  assert {
    condition     = output.orch_env.ORCH_DYNAMODB_TABLE == "orch" && output.orch_env.ORCH_SQS_QUEUE == "orch-retries"
    error_message = "orch_env must hand orch the table and queue names"
  }

  assert {
    condition     = output.storage_uri == "s3://orch-test-bucket/"
    error_message = "storage_uri must be s3://<bucket>/<storage_prefix>"
  }

  assert {
    condition     = length(output.output_uris) == 1 && output.output_uris[0] == "s3://orch-test-bucket/output/"
    error_message = "output_uris must default to <storage>/output/"
  }

  assert {
    condition     = module.s3.access_log_target == null
    error_message = "no server access logging unless access_log_bucket is set"
  }

  # The bucket and queue policies are read only at apply (their documents reference resources of
  # their own module), so the plan can check the identity and key policies; test_infra.py checks
  # the resource policies in the sources.

  # No statement has Action "*" (or NotAction).
  assert {
    condition = alltrue(flatten([
      for doc in [module.iam.operator_policy_json, module.iam.worker_policy_json, module.kms.key_policy_json] : [
        for s in jsondecode(doc).Statement : !contains(flatten([try(s.Action, "*")]), "*")
      ]
    ]))
    error_message = "a policy statement has Action \"*\" or no Action"
  }

  # The worker cannot delete objects, write task batches, delete rows or touch the queues.
  assert {
    condition = length(setintersection(
      toset(flatten([for s in jsondecode(module.iam.worker_policy_json).Statement : flatten([s.Action])])),
      toset(["s3:DeleteObject", "s3:*", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem", "dynamodb:*"]),
    )) == 0
    error_message = "the worker role grants a forbidden action"
  }

  assert {
    condition = alltrue([
      for a in flatten([for s in jsondecode(module.iam.worker_policy_json).Statement : flatten([s.Action])]) : !startswith(a, "sqs:")
    ])
    error_message = "the worker role grants an SQS action"
  }

  # Role policies name every resource: no "*".
  assert {
    condition = alltrue(flatten([
      for doc in [module.iam.operator_policy_json, module.iam.worker_policy_json] : [
        for s in jsondecode(doc).Statement : !contains(flatten([s.Resource]), "*")
      ]
    ]))
    error_message = "a role policy statement has Resource \"*\""
  }

  assert {
    condition = contains(
      flatten([for s in jsondecode(module.iam.worker_policy_json).Statement : flatten([s.Resource]) if contains(flatten([s.Action]), "s3:PutObject")]),
      "arn:aws:s3:::orch-test-bucket/jobs/*",
    )
    error_message = "the worker must write <bucket>/jobs/*"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(module.iam.worker_policy_json).Statement :
      can(s.Condition.StringLike["s3:prefix"]) if contains(flatten([s.Action]), "s3:ListBucket")
    ])
    error_message = "every ListBucket grant needs an s3:prefix condition"
  }

  assert {
    condition = contains(
      flatten([for s in jsondecode(module.iam.operator_policy_json).Statement : flatten([s.Resource]) if contains(flatten([s.Action]), "dynamodb:Query")]),
      "arn:aws:dynamodb:eu-west-1:111122223333:table/orch/index/by-state",
    )
    error_message = "the operator must query the by-state index"
  }

  assert {
    condition = toset(flatten([
      for s in jsondecode(module.iam.operator_policy_json).Statement : flatten([s.Resource]) if contains(flatten([s.Action]), "sqs:SendMessage")
      ])) == toset([
      "arn:aws:sqs:eu-west-1:111122223333:orch-retries",
      "arn:aws:sqs:eu-west-1:111122223333:orch-retries-dlq",
    ])
    error_message = "the operator's SQS grants must name exactly the two queues"
  }

  # IRSA: the operator's service account, audience and subject pinned.
  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.operator_trust_policy_json).Statement :
      try(s.Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE:sub"] == "system:serviceaccount:orch-system:orch-operator", false)
      && try(s.Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE:aud"] == "sts.amazonaws.com", false)
    ])
    error_message = "the operator trust policy must pin the IRSA subject and audience"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.worker_trust_policy_json).Statement : try(s.Principal.Service == "ec2.amazonaws.com", false)
    ])
    error_message = "Slurm nodes on EC2 must be able to assume the worker role"
  }

  assert {
    condition     = module.iam.worker_instance_profile_name == "orch-worker"
    error_message = "the worker instance profile must exist when EC2 is trusted"
  }

  # The key policy lets both roles use the key.
  assert {
    condition = anytrue([
      for s in jsondecode(module.kms.key_policy_json).Statement :
      try(s.Sid == "OrchRolesUseKey" && toset(flatten([s.Principal.AWS])) == toset([
        "arn:aws:iam::111122223333:role/orch-operator",
        "arn:aws:iam::111122223333:role/orch-worker",
      ]), false)
    ])
    error_message = "the key policy must let the operator and worker roles use the key"
  }
}

run "storage_prefix_scopes_s3" {
  command = plan

  variables {
    storage_prefix = "orch/"
    billing_mode   = "PROVISIONED"
  }

  assert {
    condition = contains(
      flatten([for s in jsondecode(module.iam.worker_policy_json).Statement : flatten([s.Resource]) if contains(flatten([s.Action]), "s3:GetObject")]),
      "arn:aws:s3:::orch-test-bucket/orch/jobs/*",
    )
    error_message = "S3 grants must follow storage_prefix"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.worker_policy_json).Statement :
      try(s.Condition.StringLike["s3:prefix"] == "orch/jobs/*", false)
    ])
    error_message = "ListBucket must be limited to <storage_prefix>jobs/"
  }

  assert {
    condition     = output.storage_uri == "s3://orch-test-bucket/orch/" && output.output_uris[0] == "s3://orch-test-bucket/orch/output/"
    error_message = "storage_uri and the default output follow storage_prefix"
  }
}

run "access_logs_when_a_target_is_given" {
  command = plan

  variables {
    access_log_bucket = "orch-test-access-logs"
  }

  assert {
    condition     = module.s3.access_log_target == "s3://orch-test-access-logs/orch-test-bucket/"
    error_message = "access_log_bucket must turn on server access logging into <access_log_bucket>/<bucket name>/"
  }
}

run "bad_storage_prefix_is_refused" {
  command = plan

  variables {
    storage_prefix = "/orch"
  }

  expect_failures = [var.storage_prefix]
}

run "tenants_get_their_own_roles" {
  command = plan

  variables {
    storage_prefix = "orch/"
    tenants = {
      team-a = { service_accounts = ["team-a-worker"] }
      team-b = { pod_identity = true }
    }
  }

  assert {
    condition     = toset(keys(module.iam.tenant_worker_role_names)) == toset(["team-a", "team-b"]) && module.iam.tenant_worker_role_names["team-a"] == "orch-worker-team-a"
    error_message = "each tenant must get its own role <name_prefix>-worker-<namespace>"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.tenant_worker_policy_json["team-a"]).Statement :
      s.Effect == "Deny" && s.Resource == "arn:aws:s3:::orch-test-bucket/orch/team-a/jobs/*/job.json" && contains(flatten([s.Action]), "s3:PutObject*")
    ])
    error_message = "team-a's role must deny writing its job specs"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.tenant_worker_policy_json["team-a"]).Statement :
      try(toset(s.Condition["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]) == toset(["orch-test-bucket/orch/team-a/*", "RATELIMIT#ns/team-a/*", "RATELIMIT#cluster/*", "RATELIMIT#job/*"]), false)
    ])
    error_message = "team-a's DynamoDB access must be limited to its leading keys"
  }

  assert {
    condition = alltrue([
      for r in flatten([for s in jsondecode(module.iam.tenant_worker_policy_json["team-a"]).Statement : flatten([s.Resource]) if s.Effect == "Allow"]) :
      !strcontains(r, "team-b")
    ])
    error_message = "team-a's role must not name team-b's resources"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.iam.tenant_worker_trust_policy_json["team-b"]).Statement :
      try(s.Condition.StringEquals["aws:RequestTag/kubernetes-namespace"] == "team-b", false)
    ])
    error_message = "team-b's Pod Identity trust must be pinned to its namespace"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(module.kms.key_policy_json).Statement :
      try(s.Sid == "OrchRolesUseKey" && contains(flatten([s.Principal.AWS]), "arn:aws:iam::111122223333:role/orch-worker-tenant"), false)
    ])
    error_message = "the key policy must let the tenant roles use the key"
  }

  assert {
    condition     = output.tenant_storage_uris["team-a"] == "s3://orch-test-bucket/orch/team-a/"
    error_message = "tenant storage is <storage>/<namespace>/"
  }
}
