#!/usr/bin/env python3
"""Helper of bench/aws_requests.sh: talks to moto (recorder, input upload, output check) and
classifies every request that `orch run` made to S3, DynamoDB and SQS.

    aws_requests.py wait ENDPOINT                    until moto answers
    aws_requests.py recorder ENDPOINT ACTION [FILE]  reset | start | stop | download FILE
    aws_requests.py upload ENDPOINT BUCKET N         N JSONL records to s3://BUCKET/input/data.jsonl
    aws_requests.py check ENDPOINT BUCKET N DIR      output rows == N (pyarrow); DynamoDB item sizes
    aws_requests.py report RECORDING TASKS ITEMS WALL ORCH_LOG ITEM_SIZES MOTO_LOG

Every request made by `orch run` carries the SDK's user agent with `app/<name>` from
AWS_SDK_UA_APP_ID: the script sets `orch-driver` for `orch run` and, through a wrapper around
orch-worker, `orch-work` / `orch-merge` for the worker processes, so each request is attributed
to the process kind that made it. The recording (moto's recorder: one JSON object per request,
in arrival order, with method, URL, headers and body) has no timestamps of its own; phases are
cut by arrival order:

- setup:        the driver's requests before its first write to a task row (job lock,
                listing and reading the input, batch manifest, job snapshot, task rows);
- work:         from there to the driver's write of the job phase `aggregating`;
- aggregation:  from that write on (result discovery, merge workers, final merge, _SUCCESS,
                the job's final state, lock release).
"""

import base64
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict


# ---------------------------------------------------------------------------------------------
# moto and boto3


def wait(endpoint):
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.time() > deadline:
                sys.exit(f"moto_server did not answer at {endpoint}")
            time.sleep(0.2)


def recorder(endpoint, action, out=None):
    url = f"{endpoint}/moto-api/recorder/{action}-recording"
    if action == "download":
        with urllib.request.urlopen(url, timeout=600) as r, open(out, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    else:
        req = urllib.request.Request(url, data=b"", method="POST")
        urllib.request.urlopen(req, timeout=60).read()


def boto(endpoint, service):
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def upload(endpoint, bucket, n):
    # The records of examples/identity-bench/make_data.py, written in memory.
    lines = []
    for i in range(n):
        value = (i * 7919) % 1000003 / 1000003
        lines.append(f'{{"id":{i},"key":"k{i:08d}","group":{i % 97},"value":{value:.6f}}}\n')
    body = "".join(lines).encode("ascii")
    boto(endpoint, "s3").put_object(Bucket=bucket, Key="input/data.jsonl", Body=body)
    print(f"uploaded {n:,} records ({len(body):,} bytes) to s3://{bucket}/input/data.jsonl")


def ddb_size(value):
    """Approximate DynamoDB size of an attribute value (low-level JSON form), in bytes."""
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return (len(v.lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind == "B":
        return len(v)
    if kind == "BOOL" or kind == "NULL":
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + ddb_size(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(ddb_size(x) + 1 for x in v)
    return len(json.dumps(v))


def item_size(item):
    return sum(len(k.encode()) + ddb_size(v) for k, v in item.items())


def check(endpoint, bucket, n, table, out_json):
    import pyarrow.parquet as pq
    import io

    s3 = boto(endpoint, "s3")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    parts = [k for k in keys if re.fullmatch(r"out/part-.*\.parquet", k)]
    rows = 0
    for k in parts:
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        rows += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
    assert "out/_SUCCESS" in keys, f"no _SUCCESS in {keys}"
    assert rows == n, f"output has {rows} rows in {len(parts)} part files, expected {n}"
    print(f"output check: {rows:,} rows in {len(parts)} part file(s), _SUCCESS present")

    # Item sizes, for the capacity-unit estimate (moto does not report consumed capacity).
    ddb = boto(endpoint, "dynamodb")
    sizes = defaultdict(list)
    for page in ddb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            sk = item["sk"]["S"]
            kind = "task" if sk.startswith("TASK#") else sk.lower()
            sizes[kind].append(item_size(item))
    summary = {k: {"count": len(v), "avg": sum(v) / len(v), "max": max(v)} for k, v in sizes.items()}
    with open(out_json, "w") as f:
        json.dump(summary, f)
    for k, v in sorted(summary.items()):
        print(f"DynamoDB {k} items: {v['count']:,}, {v['avg']:.0f} B average, {v['max']} B max")


# ---------------------------------------------------------------------------------------------
# classification


def body_bytes(rec):
    b = rec.get("body") or ""
    if rec.get("body_encoded"):
        return base64.b64decode(b)
    return b.encode() if isinstance(b, str) else b


def body_json(rec):
    try:
        return json.loads(body_bytes(rec) or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def norm_key(key):
    """An S3 key with the job id, task numbers and attempts replaced, to group alike objects."""
    key = re.sub(r"jobs/[^/]+/", "jobs/J/", key)
    key = re.sub(r"results/\d{6}/\d+/", "results/T/A/", key)
    key = re.sub(r"\d{6}", "T", key)
    key = re.sub(r"\d+", "N", key)
    return key


def s3_op(method, path, query, headers):
    parts = path.lstrip("/").split("/", 1)
    key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    if not key:
        if method == "GET":
            if q.get("list-type") == ["2"]:
                return "ListObjectsV2", ""
            return "GET bucket ?" + ",".join(sorted(q)), ""
        if method == "POST" and "delete" in q:
            return "DeleteObjects", ""
        return f"{method} bucket ?" + ",".join(sorted(q)), ""
    if method == "GET":
        if "tagging" in q:
            return "GetObjectTagging", key
        return ("GetObject (ranged)" if "range" in headers else "GetObject"), key
    if method == "HEAD":
        return "HeadObject", key
    if method == "PUT":
        if "partNumber" in q:
            return "UploadPart", key
        if "tagging" in q:
            return "PutObjectTagging", key
        if "x-amz-copy-source" in headers:
            return "CopyObject", key
        if headers.get("if-none-match") == "*":
            return "PutObject (If-None-Match)", key
        return "PutObject", key
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", key
        if "uploadId" in q:
            return "CompleteMultipartUpload", key
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload", key
        return "DeleteObject", key
    return f"{method} object ?" + ",".join(sorted(q)), key


def ddb_detail(op, body):
    """What a DynamoDB request touched: job / task / lock item, which index, how many items."""
    def kind(key):
        sk = (key or {}).get("sk", {}).get("S", "")
        if sk.startswith("TASK#"):
            return "task"
        return "attempt" if sk.startswith("ATTEMPT#") else (sk.lower() or "?")

    if op in ("GetItem", "UpdateItem", "DeleteItem"):
        return kind(body.get("Key")), 1
    if op == "PutItem":
        return kind(body.get("Item")), 1
    if op == "BatchWriteItem":
        n = sum(len(v) for v in body.get("RequestItems", {}).values())
        return "task", n
    if op == "Query":
        index = body.get("IndexName") or "table"
        page = "next page" if body.get("ExclusiveStartKey") else "first page"
        cond = body.get("KeyConditionExpression", "")
        values = json.dumps(body.get("ExpressionAttributeValues", {}))
        if "ATTEMPT#" in values:
            what = "attempts"  # a task's attempt records (a few small items)
        elif "begins_with" in cond or "sk" in cond:
            what = "tasks"
        else:
            what = "partition"
        return f"{index}, {what}, {page}", 1
    return "", 1


def classify(rec):
    """(service, operation, detail, process, units) of one recorded request."""
    headers = {k.lower(): v for k, v in rec["headers"].items()}
    ua = headers.get("user-agent", "") + " " + headers.get("x-amz-user-agent", "")
    m = re.search(r"app/(orch-\w+)", ua)
    process = m.group(1)[5:] if m else "other"
    target = headers.get("x-amz-target", "")
    url = urllib.parse.urlsplit(rec["url"])
    if target.startswith("DynamoDB_"):
        op = target.split(".", 1)[1]
        detail, units = ddb_detail(op, body_json(rec))
        return "DynamoDB", op, detail, process, units
    if target.startswith("AmazonSQS."):
        op = target.split(".", 1)[1]
        body = body_json(rec)
        n = len(body.get("Entries", [])) or 1
        return "SQS", op, "", process, n
    if "Action=" in url.query or (rec["method"] == "POST" and b"Action=" in body_bytes(rec)[:200]):
        q = urllib.parse.parse_qs(url.query or body_bytes(rec).decode(errors="replace"))
        return "SQS", q.get("Action", ["?"])[0], "", process, 1
    op, key = s3_op(rec["method"], url.path, url.query, headers)
    return "S3", op, norm_key(key) if key else "", process, 1


# ---------------------------------------------------------------------------------------------
# report

PRICE = {  # USD, AWS list prices (us-east-1), as given in docs/benchmarks.md
    "s3_put": 0.005 / 1000,  # PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1000,  # GET, HEAD, all other
    "wru": 1.25 / 1e6,
    "rru": 0.25 / 1e6,
    "sqs": 0.40 / 1e6,
}
S3_PUT_CLASS = {"PutObject", "PutObject (If-None-Match)", "UploadPart", "CopyObject",
                "CreateMultipartUpload", "CompleteMultipartUpload", "ListObjectsV2",
                "PutObjectTagging"}


def s3_statuses(moto_log):
    """(method, normalised key) -> Counter of HTTP statuses, from moto's access log."""
    out = defaultdict(Counter)
    pat = re.compile(r'"([A-Z]+) (/[^ ?]*)(\?\S*)? HTTP/[\d.]+" (\d{3})')
    for line in open(moto_log, errors="replace"):
        m = pat.search(line)
        if not m or m.group(2) == "/" or m.group(2).startswith("/moto-api"):
            continue
        parts = m.group(2).lstrip("/").split("/", 1)
        key = norm_key(urllib.parse.unquote(parts[1])) if len(parts) > 1 and parts[1] else ""
        out[(m.group(1), key)][m.group(4)] += 1
    return out


S3_METHOD = {"GetObject": "GET", "GetObject (ranged)": "GET", "ListObjectsV2": "GET",
             "HeadObject": "HEAD", "PutObject": "PUT", "PutObject (If-None-Match)": "PUT",
             "UploadPart": "PUT", "DeleteObject": "DELETE", "DeleteObjects": "POST",
             "CreateMultipartUpload": "POST", "CompleteMultipartUpload": "POST"}


def read_recording(path):
    """The recorded requests, and the number of unreadable pieces. moto's recorder appends each
    request from its own thread with two buffered writes, so under load a large entry (over
    8 KB) can end up with another entry glued behind it on the same line and its newline on a
    line of its own: every line is decoded as a sequence of JSON objects."""
    decoder = json.JSONDecoder()
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            pos, line = 0, line.strip()
            while pos < len(line):
                try:
                    obj, end = decoder.raw_decode(line, pos)
                except ValueError:
                    bad += 1
                    break
                records.append(obj)
                pos = end
                while pos < len(line) and line[pos].isspace():
                    pos += 1
    return records, bad


def report(recording, tasks, items, wall, orch_log, sizes_json, moto_log):
    records, bad = read_recording(recording)
    sizes = json.load(open(sizes_json))
    rows = [classify(r) for r in records]

    # Phases by arrival order (see the module doc).
    first_work = next((i for i, r in enumerate(rows)
                       if r[0] == "DynamoDB" and r[1] == "UpdateItem" and r[2] == "task"),
                      len(rows))
    agg_start = None
    for i, (rec, r) in enumerate(zip(records, rows)):
        if i > first_work and r[0] == "DynamoDB" and r[1] == "UpdateItem" and r[2] == "job":
            if b"aggregating" in body_bytes(rec):
                agg_start = i
                break
    if agg_start is None:  # fall back: the first merge worker request
        agg_start = next((i for i, r in enumerate(rows) if r[3] == "merge"), len(rows))

    def phase(i):
        if i < first_work:
            return "setup"
        return "work" if i < agg_start else "aggregation"

    count = Counter()
    units = Counter()
    by_phase = Counter()
    by_proc = Counter()
    detail = Counter()
    attempts = Counter()
    for i, (rec, (svc, op, det, proc, n)) in enumerate(zip(records, rows)):
        count[(svc, op)] += 1
        units[(svc, op)] += n
        by_phase[(svc, op, phase(i))] += 1
        by_proc[(svc, proc)] += 1
        detail[(svc, op, det, proc)] += 1
        a = re.search(r"attempt=(\d+)", {k.lower(): v for k, v in rec["headers"].items()}
                      .get("amz-sdk-request", ""))
        if a and int(a.group(1)) > 1:
            attempts[svc] += 1

    t = tasks
    print()
    print(f"orch run: {tasks:,} tasks x {items} items = {tasks * items:,} items, wall {wall:.1f} s"
          f" against moto; {len(records):,} requests recorded"
          + (f" ({bad} unreadable recording lines)" if bad else ""))
    print()
    hdr = f"{'service':9} {'operation':28} {'total':>9} {'per task':>9}   {'setup':>7} {'work':>9} {'aggreg.':>8}"
    print(hdr)
    print("-" * len(hdr))
    for svc in ("S3", "DynamoDB", "SQS"):
        ops = sorted((k for k in count if k[0] == svc), key=lambda k: -count[k])
        for k in ops:
            extra = ""
            if units[k] != count[k]:
                extra = f"  ({units[k]:,} items, {units[k] / t:.2f}/task)"
            print(f"{svc:9} {k[1]:28} {count[k]:9,} {count[k] / t:9.3f}   "
                  f"{by_phase[(*k, 'setup')]:7,} {by_phase[(*k, 'work')]:9,} "
                  f"{by_phase[(*k, 'aggregation')]:8,}{extra}")
        tot = sum(count[k] for k in ops)
        ph = [sum(by_phase[(*k, p)] for k in ops) for p in ("setup", "work", "aggregation")]
        print(f"{svc:9} {'= all ' + svc:28} {tot:9,} {tot / t:9.3f}   {ph[0]:7,} {ph[1]:9,} {ph[2]:8,}")
        print()
    total = len(records)
    print(f"{'all':9} {'':28} {total:9,} {total / t:9.3f}")
    print()
    print("by process (requests per task): " + ", ".join(
        f"{svc} {proc} {n / t:.3f}" for (svc, proc), n in sorted(by_proc.items())))
    if attempts:
        print("SDK retries (amz-sdk-request attempt > 1): " + ", ".join(
            f"{k} {v}" for k, v in attempts.items()))
    print()
    statuses = s3_statuses(moto_log)
    print("detail (service, operation, object or item, process): count, per task"
          " [S3 answers other than 200 and 206, from moto's log, for all processes]")
    for (svc, op, det, proc), n in sorted(detail.items(), key=lambda kv: (kv[0][0], -kv[1])):
        note = ""
        if svc == "S3":
            st = statuses.get((S3_METHOD.get(op, ""), det), {})
            note = " ".join(f"{code}x{c}" for code, c in sorted(st.items())
                            if code not in ("200", "206"))
        print(f"  {svc:8} {op:26} {det:44} {proc:7} {n:9,} {n / t:9.3f}  {note}")

    # Estimate at AWS list prices. Capacity units from item sizes (moto reports none):
    # a write costs ceil(size / 1 KB) WRU on the table, plus the same again on a GSI that holds
    # the item before or after it, twice when the write moves the item's index key (a delete and
    # a put in the index; `by-state` is sparse: a task is in it only while dispatched or
    # running, projection ALL); a strongly consistent read ceil(size / 4 KB) RRU, a listing of
    # the job's tasks reads every task row.
    task_item = sizes.get("task", {}).get("avg", 1000)
    job_item = sizes.get("job", {}).get("avg", 1000)
    w_task = max(1, math.ceil(task_item / 1024))
    w_job = max(1, math.ceil(job_item / 1024))
    wru_table = wru_gsi = 0
    rru = 0.0
    task_state = {}
    for rec, (svc, op, det, proc, n) in zip(records, rows):
        if svc != "DynamoDB":
            continue
        body = body_json(rec) if op in ("UpdateItem", "BatchWriteItem", "PutItem") else {}
        if op == "BatchWriteItem":
            for reqs in body.get("RequestItems", {}).values():
                for r in reqs:
                    item = r.get("PutRequest", {}).get("Item", {})
                    w = max(1, math.ceil(item_size(item) / 1024))
                    wru_table += w
                    wru_gsi += w if "gsi1pk" in item else 0
                    task_state[item.get("sk", {}).get("S")] = item.get("gsi1pk", {}).get("S")
        elif op == "PutItem":
            item = body.get("Item", {})
            wru_table += max(1, math.ceil(item_size(item) / 1024))
            wru_gsi += 1 if "gsi2pk" in item or "gsi1pk" in item else 0
        elif op == "UpdateItem" and det == "task":
            # The item's `by-state` key after the write: set by `#g1pk = :g1pk`, removed by a
            # REMOVE of it, else unchanged.
            sk = body["Key"]["sk"]["S"]
            expr = body.get("UpdateExpression", "")
            old = task_state.get(sk)
            set_part, _, remove_part = expr.partition(" REMOVE ")
            if "#g1pk = :g1pk" in set_part:
                new = body.get("ExpressionAttributeValues", {}).get(":g1pk", {}).get("S")
            elif "#g1pk" in remove_part:
                new = None
            else:
                new = old
            wru_table += w_task
            if old is not None and new is not None:
                wru_gsi += w_task * (2 if new != old else 1)
            elif old is not None or new is not None:
                wru_gsi += w_task
            task_state[sk] = new
        elif op in ("UpdateItem", "DeleteItem"):
            wru_table += w_job if det == "job" else 1
        elif op == "GetItem":
            rru += max(1, math.ceil((task_item if det == "task" else job_item) / 4096))
        elif op == "Query":
            if "table, tasks, first page" in det:
                rru += math.ceil(tasks * task_item / 4096)
            elif "next page" not in det:
                rru += 0.5  # a small index query (eventually consistent)
    wru = wru_table + wru_gsi
    s3_put = sum(n for (svc, op), n in count.items() if svc == "S3" and op in S3_PUT_CLASS)
    s3_get = sum(n for (svc, op), n in count.items() if svc == "S3" and op not in S3_PUT_CLASS)
    sqs = sum(n for (svc, op), n in count.items() if svc == "SQS")
    cost = {
        "S3 PUT/LIST class": s3_put * PRICE["s3_put"],
        "S3 GET/HEAD class": s3_get * PRICE["s3_get"],
        "DynamoDB writes": wru * PRICE["wru"],
        "DynamoDB reads": rru * PRICE["rru"],
        "SQS requests": sqs * PRICE["sqs"],
    }
    print()
    print(f"estimate at AWS list prices, per million tasks (task item ~{task_item:.0f} B; a full "
          f"task listing reads {tasks:,} rows = {math.ceil(tasks * task_item / 4096):,} RRU, "
          f"so reads per task grow with the job):")
    print(f"  S3 PUT/LIST class {s3_put / t:.2f}/task, GET/HEAD class {s3_get / t:.2f}/task; "
          f"DynamoDB {wru / t:.2f} WRU/task ({wru_table / t:.2f} table + {wru_gsi / t:.2f} "
          f"index), {rru / t:.2f} RRU/task; SQS {sqs / t:.3f}/task")
    for k, v in cost.items():
        print(f"  {k:20} ${v / t * 1e6:10,.2f}")
    print(f"  {'total':20} ${sum(cost.values()) / t * 1e6:10,.2f}")

    # Times from the driver's log, for the record.
    for line in open(orch_log, errors="replace"):
        if any(s in line for s in ("partitioned the input", "aggregated", "job finished")):
            print("log: " + re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip()))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "wait":
        wait(args[0])
    elif cmd == "recorder":
        recorder(*args)
    elif cmd == "upload":
        upload(args[0], args[1], int(args[2]))
    elif cmd == "check":
        check(args[0], args[1], int(args[2]), args[3], args[4])
    elif cmd == "report":
        report(args[0], int(args[1]), int(args[2]), float(args[3]), args[4], args[5], args[6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
