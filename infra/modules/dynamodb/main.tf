# orch's single table, exactly as docs/aws.md ("DynamoDB: one table"):
#   job  item: pk = JOB#<job>, sk = JOB,              gsi2pk = JOBS, gsi2sk = <createdAt:013>#<job>
#   task item: pk = JOB#<job>, sk = TASK#<task:06>,   gsi1pk = JOB#<job>#active (dispatched or running only), gsi1sk = TASK#<task:06>
# Only key attributes are declared here; version, phase, state, body, leaseExpiry need no schema.

locals {
  provisioned = var.billing_mode == "PROVISIONED"
  index_names = ["by-state", "jobs"]
}

resource "aws_dynamodb_table" "this" {
  name                        = coalesce(var.table_name, var.name_prefix)
  billing_mode                = var.billing_mode
  read_capacity               = local.provisioned ? var.read_capacity : null
  write_capacity              = local.provisioned ? var.write_capacity : null
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  attribute {
    name = "gsi1pk"
    type = "S"
  }

  attribute {
    name = "gsi1sk"
    type = "S"
  }

  attribute {
    name = "gsi2pk"
    type = "S"
  }

  attribute {
    name = "gsi2sk"
    type = "S"
  }

  # The tasks of one job in one state (e.g. every running task, to check leases).
  global_secondary_index {
    name            = "by-state"
    hash_key        = "gsi1pk"
    range_key       = "gsi1sk"
    projection_type = "ALL"
    read_capacity   = local.provisioned ? var.read_capacity : null
    write_capacity  = local.provisioned ? var.write_capacity : null
  }

  # The job list, newest last.
  global_secondary_index {
    name            = "jobs"
    hash_key        = "gsi2pk"
    range_key       = "gsi2sk"
    projection_type = "KEYS_ONLY"
    read_capacity   = local.provisioned ? var.read_capacity : null
    write_capacity  = local.provisioned ? var.write_capacity : null
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  dynamic "ttl" {
    for_each = var.ttl_attribute == null ? [] : [var.ttl_attribute]
    content {
      attribute_name = ttl.value
      enabled        = true
    }
  }

  tags = merge(var.tags, { Name = coalesce(var.table_name, var.name_prefix) })
}
