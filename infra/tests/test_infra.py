"""Static checks of orch's Terraform (infra/) against docs/aws.md, without a terraform binary.

Every .tf file is parsed with python-hcl2 (a syntax error fails), then the parsed modules are
checked: the DynamoDB table, the bucket, the queues and the IAM policies must say what
docs/aws.md says, every `var.x` must be declared, every module call must match the called
module's variables, and so on.

Policies are written in one form only, `data "aws_iam_policy_document"`, so that they can be
read here statement by statement; a policy written as jsonencode() or a heredoc fails the test
that enforces that form.

Run: bash infra/tests/run.sh  (or: python3 -m unittest discover -s infra/tests -v)
"""

from __future__ import annotations

import fnmatch
import re
import unittest
from pathlib import Path

import hcl2

import tfeval

INFRA = Path(__file__).resolve().parent.parent
REPO = INFRA.parent
AWS_DOC = REPO / "docs" / "aws.md"
MODULES = INFRA / "modules"
EXAMPLE = INFRA / "examples" / "complete"

SKIP_DIRS = {".terraform"}

# Arguments of a module block that are not input variables of the called module.
MODULE_META_ARGS = {"source", "version", "count", "for_each", "providers", "depends_on"}

# Resource types that take tags; each must get the caller's tags.
TAGGABLE = {
    "aws_kms_key",
    "aws_s3_bucket",
    "aws_dynamodb_table",
    "aws_sqs_queue",
    "aws_iam_role",
    "aws_iam_instance_profile",
}

# Resource arguments that hold an IAM policy document.
POLICY_ARGS = {"policy", "assume_role_policy"}

# ---- parsing ------------------------------------------------------------------------------------


def unquote(s: str) -> str:
    """python-hcl2 >= 7 keeps the quotes of string literals; older versions drop them."""
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1]
    return s


def norm(value):
    """Parsed HCL with quotes stripped from strings and keys and the block markers removed."""
    if isinstance(value, dict):
        return {unquote(k): norm(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [norm(v) for v in value]
    if isinstance(value, str):
        return unquote(value)
    return value


def tf_files(root: Path = INFRA) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.tf") if not SKIP_DIRS.intersection(p.relative_to(root).parts)
    )


def parse_file(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return norm(hcl2.load(f))


class Module:
    """The blocks of one Terraform module directory, merged over its .tf files."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.files = sorted(directory.glob("*.tf"))
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.modules: dict[str, dict] = {}
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.terraform: list[dict] = []
        self.providers: list[tuple[str, dict]] = []
        for path in self.files:
            doc = parse_file(path)
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("module", []):
                self.modules.update(block)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            target[(rtype, name)] = body
            self.terraform.extend(doc.get("terraform", []))
            for block in doc.get("provider", []):
                self.providers.extend(block.items())

    def __repr__(self) -> str:
        return f"Module({self.dir.relative_to(INFRA)})"

    def resources_of(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}

    def one(self, rtype: str) -> dict:
        found = self.resources_of(rtype)
        assert len(found) == 1, f"{self}: expected one {rtype}, found {sorted(found)}"
        return next(iter(found.values()))

    def default(self, variable: str):
        assert variable in self.variables, f"{self}: variable {variable} is not declared"
        return self.variables[variable].get("default")


def module_dirs() -> list[Path]:
    return sorted({p.parent for p in tf_files()})


def strings(value):
    """Every string inside a parsed value (expressions included)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


EXPR = re.compile(r"^\$\{(.*)\}$", re.S)


def expr(value) -> str | None:
    """The expression inside "${...}", or None for a literal."""
    if isinstance(value, str):
        m = EXPR.match(value)
        if m:
            return m.group(1).strip()
    return None


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def blocks(body: dict, name: str) -> list[dict]:
    """The nested blocks called `name` in a body (hcl2 gives a list, or one dict)."""
    return [b for b in as_list(body.get(name)) if isinstance(b, dict)]


# ---- policy documents ---------------------------------------------------------------------------


class Statement:
    def __init__(self, module: Module, doc: str, body: dict, dynamic: bool):
        self.module = module
        self.doc = doc
        self.body = body
        self.dynamic = dynamic
        self.sid = body.get("sid", "")
        self.effect = body.get("effect", "Allow")

    def __repr__(self) -> str:
        return f"{self.module} aws_iam_policy_document.{self.doc} statement {self.sid or '?'}"

    def resolved(self, field: str) -> list[str]:
        """A string list field with local.x references resolved; raises if it cannot be."""
        out: list[str] = []
        for item in as_list(self.body.get(field)):
            out.extend(resolve(self.module, item))
        return out

    def actions(self) -> list[str]:
        return self.resolved("actions")

    def resources(self) -> list[str]:
        return self.resolved("resources")

    def conditions(self) -> list[dict]:
        return blocks(self.body, "condition")

    def principals(self) -> list[dict]:
        return blocks(self.body, "principals")


class Unresolved(Exception):
    pass


def resolve(module: Module, value) -> list[str]:
    """A policy field value as a list of strings: literals as they are, `local.x` looked up,
    `var.x` and other references kept as the expression text (they name resources, never
    actions)."""
    if isinstance(value, list):
        out = []
        for v in value:
            out.extend(resolve(module, v))
        return out
    if not isinstance(value, str):
        raise Unresolved(f"{module}: not a string: {value!r}")
    e = expr(value)
    if e is not None:
        m = re.fullmatch(r"local\.([A-Za-z_][\w-]*)", e)
        if m:
            name = m.group(1)
            if name not in module.locals:
                raise Unresolved(f"{module}: local.{name} is not declared")
            return resolve(module, module.locals[name])
    return [value]


def policy_documents(module: Module) -> dict[str, list[Statement]]:
    docs = {}
    for (rtype, name), body in module.data.items():
        if rtype != "aws_iam_policy_document":
            continue
        stmts = [Statement(module, name, b, False) for b in blocks(body, "statement")]
        for dyn in blocks(body, "dynamic"):
            for label, inner in dyn.items():
                if label != "statement":
                    continue
                for b in blocks(inner, "content"):
                    stmts.append(Statement(module, name, b, True))
        docs[name] = stmts
    return docs


POLICY_REF = re.compile(r"data\.aws_iam_policy_document\.([\w-]+)(?:\[[^\]]*\])?\.json")


def attached_documents(module: Module, rtype: str, name: str | None = None) -> list[str]:
    """Names of the policy documents used by resources of a type (optionally one name)."""
    out = []
    for (t, n), body in module.resources.items():
        if t != rtype or (name is not None and n != name):
            continue
        for arg in POLICY_ARGS:
            if arg in body:
                out.extend(POLICY_REF.findall(str(body[arg])))
    return out


def all_modules() -> list[Module]:
    return [Module(d) for d in module_dirs()]


def action_matches(granted: str, wanted: str) -> bool:
    """Whether an action pattern in a policy (IAM wildcards, case-insensitive) covers an action."""
    return fnmatch.fnmatchcase(wanted.lower(), granted.lower())


# ---- the contract, read from docs/aws.md --------------------------------------------------------


class Contract:
    def __init__(self, text: str):
        self.text = text
        key_row = re.search(r"\|\s*item\s*\|\s*`(\w+)` \((\w)\)\s*\|\s*`(\w+)` \((\w)\)", text)
        assert key_row, "docs/aws.md: the table's key columns (| item | `pk` (S) | `sk` (S) |) not found"
        self.hash_key, self.hash_type, self.range_key, self.range_type = key_row.groups()
        self.indexes = {
            name: (hash_key, range_key, projection)
            for name, hash_key, range_key, projection in re.findall(
                r"GSI `([\w-]+)` \(hash `(\w+)`, range `(\w+)`, projection (\w+)\)", text
            )
        }
        assert len(self.indexes) == 2, f"docs/aws.md: expected two GSIs, read {self.indexes}"
        table = re.search(r"`ORCH_DYNAMODB_TABLE`, default `([\w.-]+)`", text)
        queue = re.search(r"`ORCH_SQS_QUEUE`, default `([\w.-]+)`", text)
        dlq = re.search(r"dead-letter queue: `<name>(-[\w-]+)`", text)
        receive = re.search(r"`maxReceiveCount` (\d+)", text)
        tag = re.search(r"object tag `([\w-]+)=(\w+)`", text)
        assert table and queue and dlq and receive and tag, "docs/aws.md: names not found"
        self.table_name = table.group(1)
        self.queue_name = queue.group(1)
        self.dlq_suffix = dlq.group(1)
        self.max_receive_count = int(receive.group(1))
        self.intermediate_tag = tag.groups()


CONTRACT = Contract(AWS_DOC.read_text(encoding="utf-8"))

# docs/aws.md, "IAM (least privilege)".
WORKER_S3 = {"s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"}
WORKER_TABLE = {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"}
KMS_USE = {"kms:Decrypt", "kms:GenerateDataKey"}
OPERATOR_S3 = WORKER_S3 | {"s3:DeleteObject"}
OPERATOR_TABLE = WORKER_TABLE | {
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
}
OPERATOR_QUEUE = {
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
}
# What a worker must never be able to do.
WORKER_FORBIDDEN = [
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteTable",
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:PurgeQueue",
    "kms:ScheduleKeyDeletion",
    "iam:PassRole",
]
# Extra S3 actions on job input/output locations (input_s3_uris, output_s3_uris). Only the
# coordinator deletes there: it clears an earlier run's output before the final merge.
DATA_LOCATION_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
OPERATOR_DATA_LOCATION_ACTIONS = DATA_LOCATION_ACTIONS | {"s3:DeleteObject"}


# ---- tests --------------------------------------------------------------------------------------


class ParseTest(unittest.TestCase):
    def test_every_tf_file_parses(self):
        files = tf_files()
        self.assertGreaterEqual(len(files), 20, f"too few .tf files under {INFRA}: {files}")
        failures = []
        for path in files:
            try:
                parse_file(path)
            except Exception as e:  # noqa: BLE001 - any parser error is a failure
                failures.append(f"{path.relative_to(INFRA)}: {type(e).__name__}: {e}")
        self.assertEqual(failures, [], "files that do not parse")

    def test_terraform_test_files_parse(self):
        files = sorted(INFRA.rglob("*.tftest.hcl"))
        self.assertTrue(files, "no terraform test files")
        for path in files:
            with self.subTest(path=str(path.relative_to(INFRA))):
                runs = parse_file(path).get("run", [])
                self.assertTrue(runs, "no run blocks")

    def test_tfvars_example_parses(self):
        for path in INFRA.rglob("*.tfvars.example"):
            with self.subTest(path=str(path.relative_to(INFRA))):
                doc = parse_file(path)
                example = Module(path.parent)
                unknown = set(doc) - set(example.variables)
                self.assertEqual(unknown, set(), f"{path}: sets variables the module lacks")

    def test_expected_modules_exist(self):
        for name in ("kms", "s3", "dynamodb", "sqs", "iam"):
            with self.subTest(module=name):
                self.assertTrue((MODULES / name / "main.tf").is_file(), name)
                self.assertTrue((MODULES / name / "variables.tf").is_file(), name)
                self.assertTrue((MODULES / name / "outputs.tf").is_file(), name)
                self.assertTrue((MODULES / name / "versions.tf").is_file(), name)


class WiringTest(unittest.TestCase):
    """Variables, locals, module calls and their sources."""

    def test_every_var_reference_is_declared(self):
        for module in all_modules():
            used = set()
            for path in module.files:
                for s in strings(parse_file(path)):
                    used.update(re.findall(r"(?<![\w.])var\.([A-Za-z_][\w-]*)", s))
            with self.subTest(module=str(module.dir.relative_to(INFRA))):
                self.assertEqual(used - set(module.variables), set(), "var.x used but not declared")

    def test_every_local_reference_is_declared(self):
        for module in all_modules():
            used = set()
            for path in module.files:
                for s in strings(parse_file(path)):
                    used.update(re.findall(r"(?<![\w.])local\.([A-Za-z_][\w-]*)", s))
            with self.subTest(module=str(module.dir.relative_to(INFRA))):
                self.assertEqual(used - set(module.locals), set(), "local.x used but not declared")

    def test_every_variable_has_a_type_and_description(self):
        for module in all_modules():
            for name, body in module.variables.items():
                with self.subTest(module=str(module.dir.relative_to(INFRA)), variable=name):
                    self.assertIn("type", body)
                    self.assertTrue(body.get("description"), "no description")

    def test_module_sources_exist_and_arguments_match(self):
        calls = 0
        for module in all_modules():
            for name, call in module.modules.items():
                calls += 1
                with self.subTest(module=str(module.dir.relative_to(INFRA)), call=name):
                    source = call.get("source", "")
                    self.assertTrue(source.startswith(("./", "../")), f"non-local source {source}")
                    target_dir = (module.dir / source).resolve()
                    self.assertTrue(target_dir.is_dir(), f"source {source} does not exist")
                    target = Module(target_dir)
                    self.assertTrue(target.files, f"source {source} has no .tf files")
                    passed = set(call) - MODULE_META_ARGS
                    self.assertEqual(
                        passed - set(target.variables), set(), f"{source} has no such variables"
                    )
                    required = {v for v, body in target.variables.items() if "default" not in body}
                    self.assertEqual(required - passed, set(), f"required variables of {source} not set")
                    # module.<name>.<output> references must name real outputs.
                    for s in strings(call):
                        for other, output in re.findall(r"module\.([\w-]+)\.([\w-]+)", s):
                            self.assertIn(other, module.modules, f"module.{other} does not exist")
                            other_dir = (module.dir / module.modules[other]["source"]).resolve()
                            self.assertIn(output, Module(other_dir).outputs, f"module.{other}.{output}")
        self.assertGreaterEqual(calls, 5, "the example should call every module")

    def test_module_output_references_exist(self):
        example = Module(EXAMPLE)
        for path in example.files:
            for s in strings(parse_file(path)):
                for other, output in re.findall(r"module\.([\w-]+)\.([\w-]+)", s):
                    with self.subTest(ref=f"module.{other}.{output}"):
                        self.assertIn(other, example.modules)
                        target = Module((EXAMPLE / example.modules[other]["source"]).resolve())
                        self.assertIn(output, target.outputs)

    def test_every_module_takes_name_prefix_and_tags(self):
        for name in ("kms", "s3", "dynamodb", "sqs", "iam"):
            module = Module(MODULES / name)
            with self.subTest(module=name):
                self.assertIn("name_prefix", module.variables)
                self.assertIn("tags", module.variables)
                self.assertEqual(module.default("name_prefix"), "orch")

    def test_taggable_resources_get_the_tags(self):
        seen = 0
        for module in all_modules():
            for (rtype, name), body in module.resources.items():
                if rtype not in TAGGABLE:
                    continue
                seen += 1
                with self.subTest(resource=f"{module} {rtype}.{name}"):
                    self.assertIn("var.tags", str(body.get("tags", "")), "tags do not include var.tags")
        self.assertGreaterEqual(seen, 7)

    def test_versions(self):
        for module in all_modules():
            with self.subTest(module=str(module.dir.relative_to(INFRA))):
                self.assertTrue(module.terraform, "no terraform block")
                tf = module.terraform[0]
                self.assertEqual(tf.get("required_version"), ">= 1.5")
                aws = blocks(tf, "required_providers")[0]["aws"]
                self.assertEqual(aws["source"], "hashicorp/aws")
                version = aws["version"]
                self.assertTrue(
                    version == "~> 5.0" or re.fullmatch(r">= 5\.\d+, < 6\.0", version),
                    f"aws provider constraint {version!r} is not 5.x",
                )

    def test_example_provider_has_default_tags(self):
        example = Module(EXAMPLE)
        aws = [body for name, body in example.providers if name == "aws"]
        self.assertEqual(len(aws), 1)
        default_tags = blocks(aws[0], "default_tags")
        self.assertEqual(len(default_tags), 1, "provider aws has no default_tags")
        self.assertEqual(expr(default_tags[0]["tags"]), "var.tags")

    def test_example_outputs(self):
        example = Module(EXAMPLE)
        for name in (
            "bucket_name",
            "storage_uri",
            "table_name",
            "queue_url",
            "dlq_url",
            "operator_role_arn",
            "worker_role_arn",
            "orch_env",
        ):
            with self.subTest(output=name):
                self.assertIn(name, example.outputs)
        env = example.outputs["orch_env"]["value"]
        self.assertIsInstance(env, dict)
        self.assertEqual(expr(env["ORCH_DYNAMODB_TABLE"]), "module.dynamodb.table_name")
        self.assertEqual(expr(env["ORCH_SQS_QUEUE"]), "module.sqs.queue_name")
        self.assertIn("s3://", example.outputs["storage_uri"]["value"])

    def test_example_defaults_give_orchs_default_names(self):
        """With the example's defaults, orch needs no ORCH_DYNAMODB_TABLE / ORCH_SQS_QUEUE."""
        example = Module(EXAMPLE)
        prefix = example.default("name_prefix")
        self.assertIsNone(example.default("table_name"))
        self.assertIsNone(example.default("queue_name"))
        table = Module(MODULES / "dynamodb").one("aws_dynamodb_table")
        self.assertEqual(expr(table["name"]), "coalesce(var.table_name, var.name_prefix)")
        self.assertEqual(prefix, CONTRACT.table_name)
        sqs = Module(MODULES / "sqs")
        self.assertEqual(
            expr(sqs.locals["queue_name"]), 'coalesce(var.queue_name, "${var.name_prefix}-retries")'
        )
        self.assertEqual(f"{prefix}-retries", CONTRACT.queue_name)

    def test_example_wires_the_key_into_every_module(self):
        example = Module(EXAMPLE)
        for name in ("s3", "dynamodb", "sqs", "iam"):
            with self.subTest(module=name):
                self.assertEqual(expr(example.modules[name]["kms_key_arn"]), "module.kms.key_arn")
        roles = str(example.modules["kms"]["user_role_arns"])
        self.assertIn("module.iam.operator_role_arn", roles)
        self.assertIn("module.iam.worker_role_arn", roles)


class KmsTest(unittest.TestCase):
    def setUp(self):
        self.module = Module(MODULES / "kms")

    def test_customer_managed_key_with_rotation_and_alias(self):
        key = self.module.one("aws_kms_key")
        self.assertIs(key.get("enable_key_rotation"), True)
        self.assertEqual(key.get("key_usage", "ENCRYPT_DECRYPT"), "ENCRYPT_DECRYPT")
        self.assertEqual(POLICY_REF.findall(key["policy"]), ["key"])
        alias = self.module.one("aws_kms_alias")
        self.assertEqual(alias["name"], "alias/${var.name_prefix}")
        self.assertEqual(expr(alias["target_key_id"]), "aws_kms_key.this.key_id")

    def test_key_policy_lets_the_account_administer_and_the_roles_use(self):
        stmts = policy_documents(self.module)["key"]
        admin = [s for s in stmts if s.sid == "AccountAdministersKey"]
        self.assertEqual(len(admin), 1)
        self.assertIn(":root", str(resolve(self.module, admin[0].principals()[0]["identifiers"])))
        use = [s for s in stmts if s.sid == "OrchRolesUseKey"]
        self.assertEqual(len(use), 1)
        self.assertEqual(set(use[0].actions()), KMS_USE)
        self.assertEqual(expr(use[0].principals()[0]["identifiers"]), "var.user_role_arns")


class S3Test(unittest.TestCase):
    def setUp(self):
        self.module = Module(MODULES / "s3")

    def test_versioning_enabled(self):
        v = self.module.one("aws_s3_bucket_versioning")
        self.assertEqual(blocks(v, "versioning_configuration")[0]["status"], "Enabled")

    def test_sse_kms_with_the_orch_key_and_bucket_key(self):
        sse = self.module.one("aws_s3_bucket_server_side_encryption_configuration")
        rule = blocks(sse, "rule")
        self.assertEqual(len(rule), 1)
        default = blocks(rule[0], "apply_server_side_encryption_by_default")[0]
        self.assertEqual(default["sse_algorithm"], "aws:kms")
        self.assertEqual(expr(default["kms_master_key_id"]), "var.kms_key_arn")
        self.assertIs(rule[0].get("bucket_key_enabled"), True)

    def test_public_access_blocked(self):
        pab = self.module.one("aws_s3_bucket_public_access_block")
        for flag in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        ):
            with self.subTest(flag=flag):
                self.assertIs(pab.get(flag), True)

    def test_ownership_enforced(self):
        oc = self.module.one("aws_s3_bucket_ownership_controls")
        self.assertEqual(blocks(oc, "rule")[0]["object_ownership"], "BucketOwnerEnforced")

    def test_every_bucket_setting_targets_the_bucket(self):
        for (rtype, name), body in self.module.resources.items():
            if rtype.startswith("aws_s3_bucket_"):
                with self.subTest(resource=f"{rtype}.{name}"):
                    self.assertEqual(expr(body["bucket"]), "aws_s3_bucket.this.id")

    def test_bucket_policy_denies_insecure_transport(self):
        docs = attached_documents(self.module, "aws_s3_bucket_policy")
        self.assertEqual(len(docs), 1)
        stmts = policy_documents(self.module)[docs[0]]
        self.assertTrue(any(deny_insecure_transport(s, "s3") for s in stmts), "no deny-non-TLS")
        tls = next(s for s in stmts if deny_insecure_transport(s, "s3"))
        resources = tls.resources()
        self.assertIn("${aws_s3_bucket.this.arn}", resources, "the bucket itself")
        self.assertIn("${aws_s3_bucket.this.arn}/*", resources, "its objects")

    def test_intermediate_objects_expire_by_tag(self):
        key, value = CONTRACT.intermediate_tag
        rules = self.lifecycle_rules()
        tagged = []
        for rule in rules:
            for f in blocks(rule, "filter"):
                for tag in blocks(f, "tag"):
                    if resolve(self.module, tag["key"]) == [key] and resolve(
                        self.module, tag["value"]
                    ) == [value]:
                        tagged.append(rule)
        self.assertEqual(len(tagged), 1, f"no lifecycle rule filtered on tag {key}={value}")
        rule = tagged[0]
        self.assertEqual(rule["status"], "Enabled")
        expiration = blocks(rule, "expiration")[0]
        self.assertEqual(expr(expiration["days"]), "var.intermediate_expiration_days")
        self.assertEqual(self.module.default("intermediate_expiration_days"), 7)

    def test_noncurrent_versions_expire(self):
        rules = [r for r in self.lifecycle_rules() if blocks(r, "noncurrent_version_expiration")]
        self.assertEqual(len(rules), 1)
        self.assertEqual(rules[0]["status"], "Enabled")
        nve = blocks(rules[0], "noncurrent_version_expiration")[0]
        self.assertEqual(expr(nve["noncurrent_days"]), "var.noncurrent_version_expiration_days")
        self.assertGreaterEqual(self.module.default("noncurrent_version_expiration_days"), 1)

    def test_incomplete_multipart_uploads_are_aborted(self):
        rules = [r for r in self.lifecycle_rules() if blocks(r, "abort_incomplete_multipart_upload")]
        self.assertEqual(len(rules), 1)
        self.assertEqual(rules[0]["status"], "Enabled")
        abort = blocks(rules[0], "abort_incomplete_multipart_upload")[0]
        days = abort["days_after_initiation"]
        if expr(days):
            self.assertEqual(expr(days), "var.abort_incomplete_multipart_upload_days")
            days = self.module.default("abort_incomplete_multipart_upload_days")
        self.assertTrue(1 <= days <= 7, days)

    def test_lifecycle_rules_have_unique_ids_and_filters(self):
        rules = self.lifecycle_rules()
        ids = [r["id"] for r in rules]
        self.assertEqual(len(ids), len(set(ids)))
        for rule in rules:
            with self.subTest(rule=rule["id"]):
                self.assertEqual(len(blocks(rule, "filter")), 1, "a rule needs exactly one filter")

    def lifecycle_rules(self) -> list[dict]:
        lc = self.module.one("aws_s3_bucket_lifecycle_configuration")
        self.assertIn("aws_s3_bucket_versioning.this", str(lc.get("depends_on")))
        return blocks(lc, "rule")


def deny_insecure_transport(stmt: Statement, service: str) -> bool:
    """A statement that denies everyone every action of the service without TLS."""
    if stmt.effect != "Deny" or f"{service}:*" not in stmt.actions():
        return False
    everyone = [
        p
        for p in stmt.principals()
        if p.get("type") == "*" and resolve(stmt.module, p.get("identifiers")) == ["*"]
    ]
    if not everyone:
        return False
    return any(
        c.get("test") == "Bool"
        and c.get("variable") == "aws:SecureTransport"
        and resolve(stmt.module, c.get("values")) == ["false"]
        for c in stmt.conditions()
    )


class DynamoDbTest(unittest.TestCase):
    def setUp(self):
        self.module = Module(MODULES / "dynamodb")
        self.table = self.module.one("aws_dynamodb_table")

    def test_primary_key_matches_the_contract(self):
        self.assertEqual(self.table["hash_key"], CONTRACT.hash_key)
        self.assertEqual(self.table["range_key"], CONTRACT.range_key)
        self.assertEqual((CONTRACT.hash_key, CONTRACT.range_key), ("pk", "sk"))

    def test_attributes_are_exactly_the_key_attributes(self):
        attributes = {a["name"]: a["type"] for a in blocks(self.table, "attribute")}
        expected = {CONTRACT.hash_key: CONTRACT.hash_type, CONTRACT.range_key: CONTRACT.range_type}
        for hash_key, range_key, _ in CONTRACT.indexes.values():
            expected[hash_key] = "S"
            expected[range_key] = "S"
        self.assertEqual(attributes, expected)
        self.assertEqual(len(blocks(self.table, "attribute")), len(expected), "duplicate attribute")

    def test_global_secondary_indexes_match_the_contract(self):
        indexes = {
            g["name"]: (g["hash_key"], g["range_key"], g["projection_type"])
            for g in blocks(self.table, "global_secondary_index")
        }
        self.assertEqual(indexes, CONTRACT.indexes)
        self.assertEqual(
            indexes,
            {"by-state": ("gsi1pk", "gsi1sk", "ALL"), "jobs": ("gsi2pk", "gsi2sk", "KEYS_ONLY")},
        )
        self.assertEqual(set(resolve(self.module, self.module.locals["index_names"])), set(indexes))
        self.assertFalse(blocks(self.table, "local_secondary_index"))

    def test_point_in_time_recovery_on(self):
        self.assertIs(blocks(self.table, "point_in_time_recovery")[0]["enabled"], True)

    def test_sse_with_the_orch_key(self):
        sse = blocks(self.table, "server_side_encryption")[0]
        self.assertIs(sse["enabled"], True)
        self.assertEqual(expr(sse["kms_key_arn"]), "var.kms_key_arn")

    def test_defaults(self):
        self.assertEqual(expr(self.table["billing_mode"]), "var.billing_mode")
        self.assertEqual(self.module.default("billing_mode"), "PAY_PER_REQUEST")
        self.assertEqual(expr(self.table["deletion_protection_enabled"]), "var.deletion_protection")
        self.assertIs(self.module.default("deletion_protection"), True)
        self.assertIsNone(self.module.default("ttl_attribute"))


class SqsTest(unittest.TestCase):
    def setUp(self):
        self.module = Module(MODULES / "sqs")
        self.queues = self.module.resources_of("aws_sqs_queue")

    def test_two_queues_named_as_the_contract(self):
        self.assertEqual(set(self.queues), {"main", "dlq"})
        self.assertEqual(expr(self.queues["main"]["name"]), "local.queue_name")
        self.assertEqual(expr(self.queues["dlq"]["name"]), "local.dlq_name")
        self.assertEqual(self.module.locals["dlq_name"], "${local.queue_name}" + CONTRACT.dlq_suffix)

    def test_main_queue_redrives_to_the_dlq(self):
        redrive = expr(self.queues["main"]["redrive_policy"])
        self.assertIsNotNone(redrive)
        self.assertRegex(redrive, r"^jsonencode\(")
        self.assertRegex(redrive, r"deadLetterTargetArn\s*=\s*aws_sqs_queue\.dlq\.arn\b")
        self.assertRegex(redrive, r"maxReceiveCount\s*=\s*var\.max_receive_count\b")
        self.assertEqual(self.module.default("max_receive_count"), CONTRACT.max_receive_count)
        self.assertNotIn("redrive_policy", self.queues["dlq"], "the DLQ must not redrive further")

    def test_both_queues_encrypted_with_the_orch_key(self):
        for name, queue in self.queues.items():
            with self.subTest(queue=name):
                self.assertEqual(expr(queue.get("kms_master_key_id")), "var.kms_key_arn")
                self.assertNotIn("sqs_managed_sse_enabled", queue)

    def test_retention_and_visibility(self):
        retention = self.module.default("message_retention_seconds")
        dlq_retention = self.module.default("dlq_message_retention_seconds")
        self.assertGreater(dlq_retention, retention, "dead letters must outlive the main queue's")
        self.assertLessEqual(dlq_retention, 1209600)
        self.assertGreaterEqual(self.module.default("visibility_timeout_seconds"), 30)
        self.assertEqual(self.queues["main"].get("delay_seconds"), 0, "delays are per message")

    def test_queue_policies_deny_insecure_transport_on_both_queues(self):
        policies = self.module.resources_of("aws_sqs_queue_policy")
        urls = sorted(expr(p["queue_url"]) for p in policies.values())
        self.assertEqual(urls, ["aws_sqs_queue.dlq.id", "aws_sqs_queue.main.id"])
        for doc in set(attached_documents(self.module, "aws_sqs_queue_policy")):
            stmts = policy_documents(self.module)[doc]
            self.assertTrue(any(deny_insecure_transport(s, "sqs") for s in stmts), doc)


class IamTest(unittest.TestCase):
    def setUp(self):
        self.module = Module(MODULES / "iam")
        self.docs = policy_documents(self.module)

    def role_statements(self, role: str) -> list[Statement]:
        names = attached_documents(self.module, "aws_iam_role_policy")
        self.assertTrue(names, "no inline role policies")
        mine = []
        for name, body in self.module.resources_of("aws_iam_role_policy").items():
            if expr(body["role"]) == f"aws_iam_role.{role}.id":
                mine.extend(POLICY_REF.findall(body["policy"]))
        for name, body in self.module.resources_of("aws_iam_role_policy_attachment").items():
            self.fail(f"managed policy attachment {name}: keep every grant in the inline policies")
        self.assertEqual(len(mine), 1, f"{role}: expected one inline policy")
        return self.docs[mine[0]]

    def granted(self, role: str) -> list[tuple[str, Statement]]:
        return [(a, s) for s in self.role_statements(role) if s.effect == "Allow" for a in s.actions()]

    def test_two_roles(self):
        """The operator and the shared worker (`orch run`), plus one worker role per tenant."""
        self.assertEqual(
            set(self.module.resources_of("aws_iam_role")), {"operator", "worker", "tenant_worker"}
        )
        for role in ("operator", "worker"):
            body = self.module.resources_of("aws_iam_role")[role]
            with self.subTest(role=role):
                self.assertEqual(body["name"], "${var.name_prefix}-" + role)
                self.assertEqual(POLICY_REF.findall(body["assume_role_policy"]), [f"{role}_trust"])
                self.assertNotIn("managed_policy_arns", body)
                self.assertNotIn("inline_policy", body)

    def test_worker_permissions_are_exactly_the_contract(self):
        core = {a for a, s in self.granted("worker") if not s.dynamic}
        self.assertEqual(core, WORKER_S3 | {"s3:ListBucket"} | WORKER_TABLE | KMS_USE)
        for action, stmt in self.granted("worker"):
            if stmt.dynamic:
                self.assertIn(action, DATA_LOCATION_ACTIONS, stmt)

    def test_operator_permissions_are_exactly_the_contract(self):
        core = {a for a, s in self.granted("operator") if not s.dynamic}
        self.assertEqual(
            core, OPERATOR_S3 | {"s3:ListBucket"} | OPERATOR_TABLE | OPERATOR_QUEUE | KMS_USE
        )
        for action, stmt in self.granted("operator"):
            if stmt.dynamic:
                self.assertIn(action, OPERATOR_DATA_LOCATION_ACTIONS, stmt)

    def test_worker_cannot_delete_or_touch_queues(self):
        for action, stmt in self.granted("worker"):
            for forbidden in WORKER_FORBIDDEN:
                with self.subTest(action=action, forbidden=forbidden):
                    self.assertFalse(action_matches(action, forbidden), f"{stmt} grants {action}")
            self.assertFalse(action.lower().startswith("sqs:"), f"{stmt} grants {action}")

    def test_no_wildcard_action_or_resource_in_role_policies(self):
        for role in ("operator", "worker"):
            for stmt in self.role_statements(role):
                with self.subTest(statement=repr(stmt)):
                    self.assertNotIn("not_actions", stmt.body)
                    self.assertNotIn("not_resources", stmt.body)
                    self.assertNotIn("*", stmt.actions())
                    for action in stmt.actions():
                        self.assertRegex(action, r"^[a-z0-9-]+:[A-Za-z]+$", "no wildcards in actions")
                    self.assertTrue(stmt.resources(), "a statement must name its resources")
                    for resource in stmt.resources():
                        self.assertNotEqual(resource, "*")
                        self.assertFalse(resource.startswith("arn:aws:s3:::*"), resource)

    def test_resources_are_scoped(self):
        def by_action(role):
            out = {}
            for action, stmt in self.granted(role):
                if not stmt.dynamic:
                    out.setdefault(action, set()).update(stmt.resources())
            return out

        # <bucket>/<storage_prefix>jobs/*, nothing wider.
        jobs_objects = "${var.bucket_arn}/${local.jobs_prefix}*"
        self.assertEqual(resolve(self.module, "${local.jobs_objects}"), [jobs_objects])
        self.assertEqual(self.module.locals["jobs_prefix"], "${var.storage_prefix}jobs/")
        for role in ("worker", "operator"):
            grants = by_action(role)
            with self.subTest(role=role):
                for action in WORKER_S3:
                    self.assertEqual(grants[action], {jobs_objects}, action)
                self.assertEqual(grants["s3:ListBucket"], {"${var.bucket_arn}"})
                self.assertEqual(grants["dynamodb:GetItem"], {"${var.table_arn}"})
                self.assertEqual(grants["dynamodb:UpdateItem"], {"${var.table_arn}"})
                self.assertEqual(grants["kms:Decrypt"], {"${var.kms_key_arn}"})
                self.assertEqual(grants["kms:GenerateDataKey"], {"${var.kms_key_arn}"})
        operator = by_action("operator")
        self.assertEqual(operator["dynamodb:Query"], {"${var.table_arn}", "${var.table_index_arns}"})
        self.assertEqual(by_action("worker")["dynamodb:Query"], {"${var.table_arn}"})
        for action in OPERATOR_QUEUE:
            self.assertEqual(operator[action], {"${var.queue_arn}", "${var.dlq_arn}"}, action)
        self.assertEqual(operator["s3:DeleteObject"], {jobs_objects})

    def test_list_bucket_is_limited_by_prefix(self):
        for role in ("worker", "operator"):
            for action, stmt in self.granted(role):
                if action != "s3:ListBucket":
                    continue
                with self.subTest(statement=repr(stmt)):
                    prefixes = [
                        c for c in stmt.conditions()
                        if c.get("variable") == "s3:prefix" and c.get("test") in ("StringLike", "StringEquals")
                    ]
                    self.assertEqual(len(prefixes), 1, "ListBucket without an s3:prefix condition")
                    for value in resolve(self.module, prefixes[0]["values"]):
                        self.assertNotEqual(value, "*")
                        self.assertNotEqual(value, "")

    def test_trust_policies_are_documented_variables(self):
        trust = self.docs["operator_trust"] + self.docs["worker_trust"]
        self.assertTrue(trust)
        for stmt in trust:
            with self.subTest(statement=repr(stmt)):
                self.assertEqual(stmt.effect, "Allow")
                self.assertTrue(set(stmt.actions()) <= {"sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"})
                for p in stmt.principals():
                    self.assertNotEqual(resolve(self.module, p["identifiers"]), ["*"], "anyone could assume")
                if "sts:AssumeRoleWithWebIdentity" in stmt.actions():
                    variables = {c["variable"].rsplit(":", 1)[-1] for c in stmt.conditions()}
                    self.assertEqual(variables, {"aud", "sub"}, "IRSA must pin audience and subject")
        for role in ("operator", "worker"):
            body = self.module.resources_of("aws_iam_role")[role]
            preconditions = [p for lc in blocks(body, "lifecycle") for p in blocks(lc, "precondition")]
            self.assertEqual(len(preconditions), 1, f"{role}: no check that someone can assume it")
            self.assertEqual(expr(preconditions[0]["condition"]), f"local.{role}_trusted")


# ---- tenants: one worker role per namespace -----------------------------------------------------

# Two tenants as in infra/README.md, plus one whose name extends another's: "team-a/*" must never
# match "team-a-b/...".
T_BUCKET = "orch-data"
T_TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/orch"
T_KEY = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
T_TENANTS = {
    "team-a": {"service_accounts": ["team-a-worker"]},
    "team-b": {"pod_identity": True, "read_s3_uris": ["s3://shared-datasets/corpus/"]},
    "team-a-b": {"trusted_principal_arns": ["arn:aws:iam::123456789012:role/slurm-team-a-b"]},
}
T_OIDC = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
# docs/aws.md: a storage's partition keys begin with its S3 key prefix; rate-limit buckets do not.
T_LEADING_KEYS = [T_BUCKET + "/orch/{ns}/*", "RATELIMIT#ns/{ns}/*", "RATELIMIT#cluster/*", "RATELIMIT#job/*"]


def tenant_policies() -> dict:
    return tfeval.iam_policies(
        bucket=T_BUCKET, table_arn=T_TABLE, kms_key_arn=T_KEY, tenants=T_TENANTS,
        oidc_provider_arn=T_OIDC,
    )


def owned_keys(ns: str) -> list[str]:
    """Partition keys (table and both indexes) and S3 keys a tenant's workers use."""
    return [
        f"{T_BUCKET}/orch/{ns}/JOB#j1",  # job, task and lock items
        f"{T_BUCKET}/orch/{ns}/JOB#j1#active",  # by-state index
        f"{T_BUCKET}/orch/{ns}/JOBS",  # jobs index
        f"RATELIMIT#ns/{ns}/openai",
    ]


def statement_allows(stmt: dict, action: str, resource: str) -> bool:
    return any(tfeval.iam_match(a, action) for a in stmt.get("Action", [])) and any(
        tfeval.iam_match(r, resource) for r in stmt.get("Resource", [])
    )


class TenantTest(unittest.TestCase):
    """The tenant worker roles (modules/iam/tenants.tf), rendered to IAM JSON by tfeval for the
    tenants above, bucket orch-data, storage prefix orch/."""

    @classmethod
    def setUpClass(cls):
        cls.policies = tenant_policies()
        cls.module = Module(MODULES / "iam")

    def statements(self, ns: str) -> list[dict]:
        return self.policies["tenant_worker"][ns]["Statement"]

    def allows(self, ns: str) -> list[dict]:
        return [s for s in self.statements(ns) if s["Effect"] == "Allow"]

    def test_one_role_and_policy_per_tenant(self):
        for rtype in ("aws_iam_role", "aws_iam_role_policy"):
            body = self.module.resources_of(rtype)["tenant_worker"]
            self.assertEqual(expr(body["for_each"]), "var.tenants")
            self.assertEqual(body["name"], "${var.name_prefix}-worker-${each.key}")
        role = self.module.resources_of("aws_iam_role")["tenant_worker"]
        self.assertEqual(
            expr(role["assume_role_policy"]),
            "data.aws_iam_policy_document.tenant_worker_trust[each.key].json",
        )
        policy = self.module.resources_of("aws_iam_role_policy")["tenant_worker"]
        self.assertEqual(expr(policy["policy"]), "data.aws_iam_policy_document.tenant_worker[each.key].json")
        self.assertEqual(expr(policy["role"]), "aws_iam_role.tenant_worker[each.key].id")
        self.assertEqual(set(self.policies["tenant_worker"]), set(T_TENANTS))
        self.assertEqual(self.module.default("tenants"), {}, "no tenants unless configured")
        self.assertEqual(tfeval.iam_policies(bucket=T_BUCKET, table_arn=T_TABLE, kms_key_arn=T_KEY,
                                             tenants={})["tenant_worker"], {})

    def test_tenant_grants_are_the_workers_and_no_more(self):
        data = {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
        for ns in T_TENANTS:
            with self.subTest(ns=ns):
                granted = {a for s in self.allows(ns) for a in s["Action"]}
                self.assertEqual(granted, WORKER_S3 | {"s3:ListBucket"} | WORKER_TABLE | KMS_USE | data)
                for action in granted:
                    self.assertRegex(action, r"^[a-z0-9-]+:[A-Za-z]+$", "no wildcard in an Allow")
                    for forbidden in WORKER_FORBIDDEN:
                        self.assertFalse(action_matches(action, forbidden), f"{ns} may {action}")
                for s in self.statements(ns):
                    self.assertNotIn("*", s["Resource"])
                    self.assertNotIn("NotAction", s)
                    self.assertNotIn("NotResource", s)

    def test_job_spec_is_read_only(self):
        """Every write to <storage>jobs/<job>/job.json is denied explicitly, so no Allow (the
        jobs/* grant, or a data prefix that happens to cover the storage) can reopen it."""
        writes = ["s3:PutObject", "s3:PutObjectTagging", "s3:PutObjectAcl", "s3:PutObjectRetention",
                  "s3:PutObjectLegalHold", "s3:DeleteObject", "s3:DeleteObjectVersion",
                  "s3:DeleteObjectTagging", "s3:PutObjectVersionTagging"]
        for ns in T_TENANTS:
            spec = f"arn:aws:s3:::{T_BUCKET}/orch/{ns}/jobs/j1/job.json"
            denies = [s for s in self.statements(ns) if s["Effect"] == "Deny"]
            with self.subTest(ns=ns):
                self.assertEqual(len(denies), 1)
                self.assertEqual(denies[0]["Resource"], [f"arn:aws:s3:::{T_BUCKET}/orch/{ns}/jobs/*/job.json"])
                for action in writes:
                    self.assertTrue(statement_allows(denies[0], action, spec), action)
                self.assertFalse(statement_allows(denies[0], "s3:GetObject", spec), "workers read the spec")
                self.assertTrue(any(statement_allows(s, "s3:GetObject", spec) for s in self.allows(ns)))
                # The other job objects stay writable.
                result = f"arn:aws:s3:::{T_BUCKET}/orch/{ns}/jobs/j1/tasks/000001/result.parquet"
                self.assertFalse(statement_allows(denies[0], "s3:PutObject", result))
                self.assertTrue(any(statement_allows(s, "s3:PutObject", result) for s in self.allows(ns)))

    def test_dynamodb_is_limited_to_the_tenants_leading_keys(self):
        for ns in T_TENANTS:
            table = [s for s in self.statements(ns) if any(a.startswith("dynamodb:") for a in s["Action"])]
            with self.subTest(ns=ns):
                self.assertEqual(len(table), 1)
                stmt = table[0]
                self.assertEqual(set(stmt["Action"]), WORKER_TABLE)
                self.assertEqual(
                    set(stmt["Resource"]), {T_TABLE, f"{T_TABLE}/index/by-state", f"{T_TABLE}/index/jobs"}
                )
                self.assertEqual(
                    stmt["Condition"],
                    {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [k.format(ns=ns) for k in T_LEADING_KEYS]}},
                )

    def test_no_tenant_reaches_another_tenants_keys_or_objects(self):
        for ns in T_TENANTS:
            patterns = self.statements(ns)
            leading = next(s for s in patterns if "Condition" in s and "ForAllValues:StringLike" in s["Condition"])
            leading = leading["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            list_prefixes = [p for s in patterns for p in s.get("Condition", {}).get("StringLike", {}).get("s3:prefix", [])]
            for key in owned_keys(ns):
                with self.subTest(ns=ns, own=key):
                    self.assertTrue(any(tfeval.iam_match(p, key) for p in leading))
            for other in T_TENANTS:
                if other == ns:
                    continue
                for key in owned_keys(other):
                    with self.subTest(ns=ns, other_key=key):
                        self.assertFalse(any(tfeval.iam_match(p, key) for p in leading), f"{ns} reaches {key}")
                for obj in (f"orch/{other}/jobs/j2/job.json", f"orch/{other}/jobs/j2/tasks/x", f"{other}/out/part-0"):
                    arn = f"arn:aws:s3:::{T_BUCKET}/{obj}"
                    with self.subTest(ns=ns, other_object=obj):
                        for action in ("s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"):
                            self.assertFalse(any(statement_allows(s, action, arn) for s in self.allows(ns)), action)
                        self.assertFalse(any(tfeval.iam_match(p, obj) for p in list_prefixes), "ListBucket")
            with self.subTest(ns=ns, what="own data"):
                own = f"arn:aws:s3:::{T_BUCKET}/{ns}/output/part-0.parquet"
                self.assertTrue(any(statement_allows(s, "s3:PutObject", own) for s in self.allows(ns)))
                self.assertTrue(any(tfeval.iam_match(p, f"{ns}/output/") for p in list_prefixes))

    def test_read_only_inputs_are_read_only(self):
        arn = "arn:aws:s3:::shared-datasets/corpus/part-0.jsonl"
        self.assertTrue(any(statement_allows(s, "s3:GetObject", arn) for s in self.allows("team-b")))
        self.assertFalse(any(statement_allows(s, "s3:PutObject", arn) for s in self.allows("team-b")))
        self.assertFalse(any(statement_allows(s, "s3:GetObject", arn) for s in self.allows("team-a")))

    def test_every_list_bucket_is_limited_by_prefix(self):
        for ns in T_TENANTS:
            for s in self.allows(ns):
                if "s3:ListBucket" in s["Action"]:
                    with self.subTest(ns=ns, sid=s["Sid"]):
                        prefixes = s["Condition"]["StringLike"]["s3:prefix"]
                        self.assertTrue(prefixes and all(p not in ("*", "") for p in prefixes))

    def test_trust_is_pinned_to_the_namespace(self):
        trust = self.policies["tenant_worker_trust"]
        issuer = T_OIDC.split("oidc-provider/")[1]
        irsa = trust["team-a"]["Statement"]
        self.assertEqual(len(irsa), 1)
        self.assertEqual(irsa[0]["Action"], ["sts:AssumeRoleWithWebIdentity"])
        self.assertEqual(irsa[0]["Condition"]["StringEquals"][f"{issuer}:sub"], ["system:serviceaccount:team-a:team-a-worker"])
        self.assertEqual(irsa[0]["Condition"]["StringEquals"][f"{issuer}:aud"], ["sts.amazonaws.com"])
        pod = trust["team-b"]["Statement"]
        self.assertEqual(len(pod), 1)
        self.assertEqual(pod[0]["Principal"], {"Service": ["pods.eks.amazonaws.com"]})
        self.assertEqual(set(pod[0]["Action"]), {"sts:AssumeRole", "sts:TagSession"})
        self.assertEqual(pod[0]["Condition"]["StringEquals"]["aws:RequestTag/kubernetes-namespace"], ["team-b"])
        self.assertEqual(trust["team-a-b"]["Statement"][0]["Principal"], {"AWS": T_TENANTS["team-a-b"]["trusted_principal_arns"]})
        for ns, doc in trust.items():
            for s in doc["Statement"]:
                with self.subTest(ns=ns, sid=s["Sid"]):
                    for ids in s["Principal"].values():
                        self.assertNotIn("*", ids)
        role = self.module.resources_of("aws_iam_role")["tenant_worker"]
        conditions = [expr(p["condition"]) for lc in blocks(role, "lifecycle") for p in blocks(lc, "precondition")]
        self.assertIn("local.tenant_trusted[each.key]", conditions)
        self.assertIn("length(local.tenant_overlaps) == 0", conditions)

    def test_overlapping_tenants_are_refused(self):
        def overlaps(tenants, storage_prefix="orch/"):
            return tfeval.iam_local("tenant_overlaps", bucket=T_BUCKET, table_arn=T_TABLE,
                                    storage_prefix=storage_prefix, tenants=tenants,
                                    output_s3_uris=[f"s3://{T_BUCKET}/{storage_prefix}output/"])

        self.assertEqual(overlaps(T_TENANTS), [])
        self.assertEqual(overlaps(T_TENANTS, storage_prefix=""), [])
        # Namespace "orch": its default data prefix s3://<bucket>/orch/ holds every tenant's storage.
        self.assertTrue(overlaps({"orch": {}, "team-a": {}}))
        # Namespaces named like the shared roles' prefixes.
        self.assertTrue(overlaps({"jobs": {}}))
        self.assertTrue(overlaps({"output": {}}))
        # Data prefixes inside one another, or read access into another tenant's writable prefix.
        self.assertTrue(overlaps({"a": {"data_s3_uris": ["s3://d/x/"]}, "b": {"data_s3_uris": ["s3://d/x/y/"]}}))
        self.assertTrue(overlaps({"a": {}, "b": {"read_s3_uris": [f"s3://{T_BUCKET}/a/"]}}))
        # A shared read-only dataset is fine.
        self.assertEqual(overlaps({"a": {"read_s3_uris": ["s3://ds/"]}, "b": {"read_s3_uris": ["s3://ds/"]}}), [])

    def test_example_passes_tenants_and_lets_their_roles_use_the_key(self):
        example = Module(EXAMPLE)
        self.assertEqual(expr(example.modules["iam"]["tenants"]), "var.tenants")
        self.assertIn("module.iam.tenant_worker_role_arns", str(example.modules["kms"]["user_role_arns"]))
        self.assertEqual(example.default("tenants"), {})
        self.assertEqual(
            expr(example.variables["tenants"]["type"]), expr(self.module.variables["tenants"]["type"]),
            "the example's tenants type must be the module's",
        )

    def test_readme_documents_the_tenant_roles(self):
        readme = (INFRA / "README.md").read_text(encoding="utf-8")
        for word in ("tenants", "dynamodb:LeadingKeys", "job.json", "RATELIMIT#cluster/*",
                     "RATELIMIT#job/*", "test_iam_moto.py", "checked only statically"):
            with self.subTest(word=word):
                self.assertTrue(word in readme, f"infra/README.md does not mention {word}")


class PolicyFormTest(unittest.TestCase):
    """Properties of every policy everywhere under infra/."""

    def test_no_star_action_on_star_resource_anywhere(self):
        count = 0
        for module in all_modules():
            for doc, stmts in policy_documents(module).items():
                for stmt in stmts:
                    count += 1
                    with self.subTest(statement=repr(stmt)):
                        actions, resources = stmt.actions(), stmt.resources()
                        self.assertFalse("*" in actions and "*" in resources, "* on *")
                        self.assertNotIn("*", actions, 'Action "*"')
                        self.assertNotIn("not_actions", stmt.body)
        self.assertGreaterEqual(count, 15, "the policies were not found")

    def test_star_resource_only_in_the_key_policy(self):
        for module in all_modules():
            key_docs = set(attached_documents(module, "aws_kms_key"))
            for doc, stmts in policy_documents(module).items():
                for stmt in stmts:
                    if "*" in stmt.resources():
                        with self.subTest(statement=repr(stmt)):
                            self.assertIn(doc, key_docs, 'Resource "*" outside a KMS key policy')

    def test_policies_are_policy_documents(self):
        """One form: a policy argument is always data.aws_iam_policy_document.<name>.json, and no
        JSON policy is built with jsonencode() or a heredoc anywhere."""
        for module in all_modules():
            for (rtype, name), body in module.resources.items():
                for arg in POLICY_ARGS:
                    if arg in body:
                        with self.subTest(resource=f"{module} {rtype}.{name}.{arg}"):
                            self.assertRegex(expr(body[arg]) or "", rf"^{POLICY_REF.pattern}$")
            for path in module.files:
                for s in strings(parse_file(path)):
                    with self.subTest(file=str(path.relative_to(INFRA))):
                        self.assertNotRegex(s, r'"?Statement"?\s*[=:]', "a JSON policy outside aws_iam_policy_document")

    def test_every_policy_document_is_used(self):
        for module in all_modules():
            used = set()
            for path in module.files:
                for s in strings(parse_file(path)):
                    used.update(POLICY_REF.findall(s))
            for doc in policy_documents(module):
                with self.subTest(doc=f"{module} {doc}"):
                    self.assertIn(doc, used)


class ContractDocTest(unittest.TestCase):
    def test_contract_reads(self):
        self.assertEqual(CONTRACT.table_name, "orch")
        self.assertEqual(CONTRACT.queue_name, "orch-retries")
        self.assertEqual(CONTRACT.dlq_suffix, "-dlq")
        self.assertEqual(CONTRACT.max_receive_count, 5)
        self.assertEqual(CONTRACT.intermediate_tag, ("orch-intermediate", "true"))

    def test_readme_says_what_is_created(self):
        readme = (INFRA / "README.md").read_text(encoding="utf-8")
        for word in ("ORCH_DYNAMODB_TABLE", "ORCH_SQS_QUEUE", "docs/aws.md", "bash infra/tests/run.sh"):
            self.assertIn(word, readme)


if __name__ == "__main__":
    unittest.main()
