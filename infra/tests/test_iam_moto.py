"""The tenant worker policies of modules/iam, enforced by moto's IAM emulation.

The policies are the Terraform's own: tfeval renders the `aws_iam_policy_document` blocks of
modules/iam from the python-hcl2 parse for two tenants (team-a, team-b), bucket orch-data,
table orch, storage prefix orch/. The test starts a moto server of its own with
INITIAL_NO_AUTH_ACTION_COUNT=3: the first three requests (create an admin user, its policy, its
access key) go unchecked, every later one must be signed with a key moto issued and is checked
against the signer's IAM policies. The admin creates the bucket, the table (orch's key schema and
both indexes) and one IAM user per tenant carrying that tenant's policy; then each tenant's keys
are used as its workers would.

What moto 5.2 enforces (moto/iam/access_control.py, and the probes in MotoLimitsTest, which fail
when moto's behaviour changes so that this file can be tightened):

- actions and resources of identity policies, with `*` wildcards, and explicit Deny over Allow:
  for S3 the resource is the real bucket or object ARN, so the S3 assertions below are real
  (own job objects writable, another tenant's objects and data denied, job.json read-only);
- actions by the botocore operation name (s3:ListObjectsV2, s3:HeadObject), which is the IAM
  action for GetObject, PutObject, PutObjectTagging, DeleteObject and the DynamoDB item calls,
  but not for listings (IAM: s3:ListBucket), so the tenant's ListBucket grant is not exercised;
- NOT conditions: a Condition is evaluated only for `StringEquals` on keys moto fills in, which
  for an ordinary request is none, so every condition passes. `s3:prefix` on ListBucket and
  `dynamodb:LeadingKeys` are therefore not enforced by moto;
- NOT DynamoDB resources: moto authorizes every DynamoDB request against the resource "*", so a
  statement naming the table ARN never matches, and the tenant policy as written is denied
  everything in DynamoDB, its own items included.

So for DynamoDB this file only checks what moto can: with the DynamoDB statements' resources
widened to "*" (conditions are ignored either way), the tenant may GetItem, UpdateItem and Query
and nothing else (no PutItem, DeleteItem, BatchWriteItem, Scan). That a tenant's UpdateItem is
limited to its own partition keys (`dynamodb:LeadingKeys`), and ListBucket to its own prefix
(`s3:prefix`, and the ListBucket grant itself), is checked only statically, in test_infra.py (TenantTest). Should moto start
evaluating them, TenantDynamoDbTest.test_leading_keys_when_moto_evaluates_them runs the real
assertions instead of skipping.

Needs moto[server] (MOTO_SERVER, else moto_server on PATH, else `python -m moto.server`) and
boto3. Without them the test prints SKIPPED; with CI=true it fails.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import tfeval

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "orch-data"
TABLE = "orch"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
TENANTS = {"team-a": {"service_accounts": ["orch-worker"]}, "team-b": {"service_accounts": ["orch-worker"]}}
OIDC = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/EXAMPLE"

# Requests moto lets through before it checks signatures and policies: create the admin user,
# attach its policy, create its access key. Everything else is made with the admin's keys.
NO_AUTH_REQUESTS = 3
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

SERVER: dict = {}


def _missing(what: str, how: str):
    message = f"SKIPPED test_iam_moto: {what} ({how})"
    if os.environ.get("CI") == "true":
        raise RuntimeError(message.replace("SKIPPED", "MISSING", 1) + " and CI=true")
    print(message, file=sys.stderr)
    raise unittest.SkipTest(message)


def _moto_command() -> list[str] | None:
    if os.environ.get("MOTO_SERVER"):
        return [os.environ["MOTO_SERVER"]]
    if shutil.which("moto_server"):
        return [shutil.which("moto_server")]
    if importlib.util.find_spec("moto") and importlib.util.find_spec("flask"):
        return [sys.executable, "-m", "moto.server"]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setUpModule():
    if importlib.util.find_spec("boto3") is None:
        _missing("boto3 is not installed", "pip install boto3 'moto[server]>=5.2.5,<6', or bash .ci/run")
    command = _moto_command()
    if command is None:
        _missing("moto's server (moto_server)", "pip install 'moto[server]>=5.2.5,<6', or bash .ci/run")
    port = _free_port()
    log = tempfile.TemporaryFile()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(NO_AUTH_REQUESTS))
    proc = subprocess.Popen(
        command + ["-H", "127.0.0.1", "-p", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    SERVER.update(proc=proc, log=log, endpoint=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            # /moto-api/ is not an AWS action: it does not count against NO_AUTH_REQUESTS.
            urllib.request.urlopen(f"{SERVER['endpoint']}/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"moto server did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
    _setup()


def tearDownModule():
    proc = SERVER.get("proc")
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        SERVER["log"].close()


def client(service: str, keys: tuple[str, str] | None):
    import boto3
    from botocore.config import Config

    access, secret = keys if keys else ("AKIAUNSIGNED00000000", "unsigned")
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=SERVER["endpoint"],
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _user(iam, name: str, policy: dict) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def tenant_policies() -> dict:
    return tfeval.iam_policies(
        bucket=BUCKET, table_arn=TABLE_ARN, kms_key_arn=KEY_ARN, tenants=TENANTS,
        storage_prefix="orch/", oidc_provider_arn=OIDC,
    )["tenant_worker"]


def dynamodb_actions_only(policy: dict) -> dict:
    """The policy with its DynamoDB statements' resources widened to "*": how moto can check
    their actions (it authorizes DynamoDB against "*" and ignores the LeadingKeys condition)."""
    policy = copy.deepcopy(policy)
    for s in policy["Statement"]:
        if any(a.startswith("dynamodb:") for a in s["Action"]):
            s["Resource"] = ["*"]
    return policy


def _probe(resource, condition=None) -> dict:
    stmt = {"Effect": "Allow", "Action": ["dynamodb:UpdateItem"], "Resource": resource}
    if condition:
        stmt["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [stmt]}


def _setup():
    iam = client("iam", None)  # within NO_AUTH_REQUESTS: the only unsigned requests
    SERVER["admin"] = _user(iam, "admin", ADMIN_POLICY)
    iam = client("iam", SERVER["admin"])
    s3 = client("s3", SERVER["admin"])
    ddb = client("dynamodb", SERVER["admin"])

    s3.create_bucket(Bucket=BUCKET)
    for key in ("orch/team-a/jobs/j1/job.json", "orch/team-b/jobs/j2/job.json", "team-b/input/part-0.jsonl"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"operator")
    ddb.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                              for n in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": "by-state", "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"}, {"AttributeName": "gsi1sk", "KeyType": "RANGE"}]},
            {"IndexName": "jobs", "Projection": {"ProjectionType": "KEYS_ONLY"},
             "KeySchema": [{"AttributeName": "gsi2pk", "KeyType": "HASH"}, {"AttributeName": "gsi2sk", "KeyType": "RANGE"}]},
        ],
    )
    for ns, job in (("team-a", "j1"), ("team-b", "j2")):
        ddb.put_item(TableName=TABLE, Item={
            "pk": {"S": f"{BUCKET}/orch/{ns}/JOB#{job}"}, "sk": {"S": "TASK#000001"}, "version": {"N": "1"},
            "state": {"S": "pending"}, "gsi1pk": {"S": f"{BUCKET}/orch/{ns}/JOB#{job}#pending"}, "gsi1sk": {"S": "TASK#000001"},
        })

    policies = tenant_policies()
    SERVER["policies"] = policies
    SERVER["keys"] = {ns: _user(iam, f"worker-{ns}", policies[ns]) for ns in TENANTS}
    SERVER["actions_only_keys"] = {
        ns: _user(iam, f"worker-{ns}-ddb-actions", dynamodb_actions_only(policies[ns])) for ns in TENANTS
    }
    leading = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{BUCKET}/orch/team-a/*"]}}
    listing = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:ListObjectsV2"], "Resource": [f"arn:aws:s3:::{BUCKET}"],
        "Condition": {"StringLike": {"s3:prefix": ["orch/team-a/jobs/*"]}},
    }]}
    SERVER["probes"] = {
        "list_objects_v2": _user(iam, "probe-list-objects-v2", listing),
        "table_arn": _user(iam, "probe-table-arn", _probe([TABLE_ARN])),
        "leading_keys": _user(iam, "probe-leading-keys", _probe(["*"], leading)),
    }


def error_code(call) -> str | None:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as e:
        error = e.response["Error"]
        # moto answers a denied DynamoDB (JSON protocol) request with IAM's XML error body, which
        # botocore cannot parse: it reports the HTTP status as the code.
        if error.get("Code") == "403" and "<Code>AccessDenied</Code>" in error.get("Message", ""):
            return "AccessDenied"
        return error["Code"]
    return None


DENIED = {"AccessDenied", "AccessDeniedException"}


def update(ddb, ns: str, job: str):
    return lambda: ddb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"{BUCKET}/orch/{ns}/JOB#{job}"}, "sk": {"S": "TASK#000001"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":s": {"S": "running"}},
    )


def moto_evaluates_dynamodb() -> tuple[bool, bool]:
    """(table ARNs match, LeadingKeys evaluated), found by the probe users."""
    table_arn = error_code(update(client("dynamodb", SERVER["probes"]["table_arn"]), "team-a", "j1")) is None
    leading = error_code(update(client("dynamodb", SERVER["probes"]["leading_keys"]), "team-b", "j2")) in DENIED
    return table_arn, leading


class EnforcementIsOnTest(unittest.TestCase):
    def test_unknown_keys_are_refused(self):
        code = error_code(lambda: client("s3", None).list_objects_v2(Bucket=BUCKET))
        self.assertEqual(code, "InvalidAccessKeyId", "moto does not check credentials: IAM is not enforced")

    def test_admin_can_and_a_tenant_cannot_administer(self):
        self.assertIsNone(error_code(lambda: client("s3", SERVER["admin"]).list_objects_v2(Bucket=BUCKET)))
        iam = client("iam", SERVER["keys"]["team-a"])
        self.assertIn(error_code(lambda: iam.create_user(UserName="intruder")), DENIED)


class TenantS3Test(unittest.TestCase):
    """Enforced by moto on the real object ARNs."""

    def s3(self, ns):
        return client("s3", SERVER["keys"][ns])

    def put(self, ns, key, body=b"x"):
        return error_code(lambda: self.s3(ns).put_object(Bucket=BUCKET, Key=key, Body=body))

    def get(self, ns, key):
        return error_code(lambda: self.s3(ns).get_object(Bucket=BUCKET, Key=key))

    def test_own_job_objects_are_writable(self):
        for ns, job in (("team-a", "j1"), ("team-b", "j2")):
            with self.subTest(ns=ns):
                key = f"orch/{ns}/jobs/{job}/tasks/000001/result.parquet"
                self.assertIsNone(self.put(ns, key))
                self.assertIsNone(self.get(ns, key))
                tagging = {"TagSet": [{"Key": "orch-intermediate", "Value": "true"}]}
                ckpt = f"orch/{ns}/jobs/{job}/checkpoints/000001"
                self.assertIsNone(self.put(ns, ckpt))
                self.assertIsNone(error_code(lambda: self.s3(ns).put_object_tagging(Bucket=BUCKET, Key=ckpt, Tagging=tagging)))

    def test_another_tenants_job_objects_are_denied(self):
        self.assertIn(self.put("team-a", "orch/team-b/jobs/j2/anything"), DENIED)
        self.assertIn(self.get("team-a", "orch/team-b/jobs/j2/job.json"), DENIED)
        self.assertIn(self.put("team-b", "orch/team-a/jobs/j1/tasks/000001/result.parquet"), DENIED)

    def test_job_spec_is_read_only(self):
        spec = "orch/team-a/jobs/j1/job.json"
        self.assertIsNone(self.get("team-a", spec), "workers read their job's spec")
        self.assertIn(self.put("team-a", spec, b"tenant"), DENIED, "the explicit Deny")
        tagging = {"TagSet": [{"Key": "orch-intermediate", "Value": "true"}]}
        self.assertIn(error_code(lambda: self.s3("team-a").put_object_tagging(Bucket=BUCKET, Key=spec, Tagging=tagging)), DENIED)
        self.assertIn(error_code(lambda: self.s3("team-a").delete_object(Bucket=BUCKET, Key=spec)), DENIED)
        body = client("s3", SERVER["admin"]).get_object(Bucket=BUCKET, Key=spec)["Body"].read()
        self.assertEqual(body, b"operator")

    def test_data_prefixes(self):
        self.assertIsNone(self.put("team-a", "team-a/output/part-00000.parquet"))
        self.assertIsNone(self.get("team-a", "team-a/output/part-00000.parquet"))
        self.assertIn(self.get("team-a", "team-b/input/part-0.jsonl"), DENIED)
        self.assertIn(self.put("team-a", "team-b/output/part-00000.parquet"), DENIED)
        self.assertIsNone(self.get("team-b", "team-b/input/part-0.jsonl"))
        self.assertIn(
            error_code(lambda: self.s3("team-a").delete_object(Bucket=BUCKET, Key="team-a/output/part-00000.parquet")),
            DENIED, "workers never delete",
        )



class TenantDynamoDbTest(unittest.TestCase):
    def test_actions(self):
        """With the DynamoDB statements widened to Resource "*" (the only resource moto checks
        DynamoDB against): the worker's three actions, nothing else."""
        ddb = client("dynamodb", SERVER["actions_only_keys"]["team-a"])
        key = {"pk": {"S": f"{BUCKET}/orch/team-a/JOB#j1"}, "sk": {"S": "TASK#000001"}}
        self.assertIsNone(error_code(update(ddb, "team-a", "j1")))
        self.assertIsNone(error_code(lambda: ddb.get_item(TableName=TABLE, Key=key)))
        self.assertIsNone(error_code(lambda: ddb.query(
            TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": key["pk"]})))
        self.assertIsNone(error_code(lambda: ddb.query(
            TableName=TABLE, IndexName="by-state", KeyConditionExpression="gsi1pk = :p",
            ExpressionAttributeValues={":p": {"S": f"{BUCKET}/orch/team-a/JOB#j1#running"}})))
        for name, call in {
            "PutItem": lambda: ddb.put_item(TableName=TABLE, Item=dict(key, sk={"S": "TASK#000002"})),
            "DeleteItem": lambda: ddb.delete_item(TableName=TABLE, Key=key),
            "BatchWriteItem": lambda: ddb.batch_write_item(RequestItems={TABLE: [{"DeleteRequest": {"Key": key}}]}),
            "Scan": lambda: ddb.scan(TableName=TABLE),
            "DeleteTable": lambda: ddb.delete_table(TableName=TABLE),
        }.items():
            with self.subTest(action=name):
                self.assertIn(error_code(call), DENIED)

    def test_leading_keys_when_moto_evaluates_them(self):
        table_arn, leading = moto_evaluates_dynamodb()
        if not (table_arn and leading):
            self.skipTest(
                "moto does not evaluate DynamoDB resource ARNs and dynamodb:LeadingKeys "
                f"(table ARN: {table_arn}, LeadingKeys: {leading}); checked only statically (test_infra.py)"
            )
        ddb = client("dynamodb", SERVER["keys"]["team-a"])
        self.assertIsNone(error_code(update(ddb, "team-a", "j1")))
        self.assertIn(error_code(update(ddb, "team-b", "j2")), DENIED)


class MotoLimitsTest(unittest.TestCase):
    """What moto does not enforce, as found by experiment. These fail when moto changes, so that
    the assertions above (and infra/README.md) can be tightened instead of going stale."""

    def test_dynamodb_is_authorized_against_resource_star(self):
        table_arn, _ = moto_evaluates_dynamodb()
        self.assertFalse(table_arn, "moto now matches DynamoDB table ARNs: see test_leading_keys_when_moto_evaluates_them")
        # Hence the tenant policy as written is denied even its own items in moto.
        self.assertIn(error_code(update(client("dynamodb", SERVER["keys"]["team-a"]), "team-a", "j1")), DENIED)

    def test_leading_keys_condition_is_ignored(self):
        _, leading = moto_evaluates_dynamodb()
        self.assertFalse(leading, "moto now evaluates dynamodb:LeadingKeys: enforce it here")

    def test_s3_listing_is_authorized_as_the_operation_not_s3_list_bucket(self):
        """moto authorizes a request as s3:<botocore operation name>: ListObjectsV2 needs
        "s3:ListObjectsV2" (no such IAM action), not s3:ListBucket. So the tenant policy's
        ListBucket grant cannot be exercised in moto, not even on the tenant's own prefix."""
        own = "orch/team-a/jobs/j1/"
        tenant = client("s3", SERVER["keys"]["team-a"])
        self.assertIn(error_code(lambda: tenant.list_objects_v2(Bucket=BUCKET, Prefix=own)), DENIED,
                      "moto now maps ListObjectsV2 to s3:ListBucket: test the tenant's listings")
        probe = client("s3", SERVER["probes"]["list_objects_v2"])
        self.assertIsNone(error_code(lambda: probe.list_objects_v2(Bucket=BUCKET, Prefix=own)))

    def test_s3_prefix_condition_is_ignored(self):
        probe = client("s3", SERVER["probes"]["list_objects_v2"])
        code = error_code(lambda: probe.list_objects_v2(Bucket=BUCKET, Prefix="orch/team-b/"))
        self.assertIsNone(code, "moto now evaluates s3:prefix: assert the cross-tenant listing is denied")


if __name__ == "__main__":
    unittest.main()
