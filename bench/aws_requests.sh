#!/usr/bin/env bash
# Benchmark: S3 requests, DynamoDB writes and SQS calls per task of `orch run` with input,
# storage and output on S3 (task state in DynamoDB, retries in SQS), counted on a private moto
# server with moto's request recorder. Only `orch run` is recorded (not `orch init`, the input
# upload or the output check). The handler is the builtin identity, so every request is orch's.
#
#   bench/aws_requests.sh [TASKS] [ITEMS_PER_TASK]     default 10000 tasks of 10 items
#
# Needs `pip install 'moto[server]' pyarrow` (boto3 comes with moto). Wall time is moto's, not
# AWS's: the point is the request counts. On a 2-vCPU machine 2,000 tasks take about 7 min and
# 10,000 well over an hour (moto is one Python process). AWS_REQUESTS_KEEP=DIR keeps the
# recording and the logs; PROFILE=dev counts with a debug build, ORCH_BIN=DIR with the binaries
# in DIR. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-10000}
ITEMS=${2:-10}
N=$((TASKS * ITEMS))
here=$(pwd)
py="python3 $here/bench/aws_requests.py"

# Request counts do not depend on the build: PROFILE=dev (or a profile already built) saves
# a release build when only the counts are wanted.
# ORCH_BIN=DIR counts the `orch` and `orch-worker` already built in DIR (another commit's, for
# a before/after in one session) instead of building this checkout.
PROFILE=${PROFILE:-release}
if [ -n "${ORCH_BIN:-}" ]; then
    release=$(cd "$ORCH_BIN" && pwd)
else
    cargo build --profile "$PROFILE" -q -p orch-cli -p orch-worker
    [ "$PROFILE" = dev ] && profile_dir=debug || profile_dir=$PROFILE
    release="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/$profile_dir"
fi
command -v moto_server >/dev/null || python3 -m pip install --quiet 'moto[server]'
python3 -c "import boto3, pyarrow" 2>/dev/null || python3 -m pip install --quiet boto3 pyarrow

work=$(mktemp -d)
moto_pid=
cleanup() {
    if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
    # AWS_REQUESTS_KEEP=DIR keeps the recording, the job and the logs for a closer look.
    if [ -n "${AWS_REQUESTS_KEEP:-}" ]; then
        mkdir -p "$AWS_REQUESTS_KEEP"
        cp "$work"/*.jsonl "$work"/*.log "$work"/*.yaml "$work"/*.json "$AWS_REQUESTS_KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
MOTO_RECORDER_FILEPATH="$work/recording.jsonl" moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
$py wait "$endpoint"

export AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export ORCH_DYNAMODB_TABLE=bench-orch ORCH_SQS_QUEUE=bench-orch-retries ORCH_SCRATCH="$work/scratch"
bucket=bench-orch
mkdir -p "$work/scratch"

"$release/orch" init --bucket "$bucket" >/dev/null
$py upload "$endpoint" "$bucket" "$N"

cat > "$work/job.yaml" <<YAML
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: aws-requests-bench}
spec:
  input: {uri: "s3://$bucket/input/data.jsonl"}
  batch: {size: $ITEMS}
  handler: {builtin: {name: identity}}
  storage: {uri: "s3://$bucket/orch/"}
  output: {uri: "s3://$bucket/out/"}
  executor: {local: {parallelism: 2}}
YAML

# Each process kind names itself in the SDK's user agent (app/<name>), so every recorded
# request is attributed to the driver, a work worker or a merge worker.
cat > "$work/worker.sh" <<SH
#!/bin/sh
if [ "\$1" = run ]; then AWS_SDK_UA_APP_ID=orch-work; else AWS_SDK_UA_APP_ID=orch-merge; fi
export AWS_SDK_UA_APP_ID
exec "$release/orch-worker" "\$@"
SH
chmod +x "$work/worker.sh"

$py recorder "$endpoint" reset
$py recorder "$endpoint" start
log0=$(wc -l <"$work/moto.log")
t0=$(date +%s.%N)
(cd "$work" && AWS_SDK_UA_APP_ID=orch-driver ORCH_WORKER="$work/worker.sh" \
    "$release/orch" run job.yaml --no-progress -v >orch.out 2>orch.log) \
    || { tail -20 "$work/orch.log"; exit 1; }
t1=$(date +%s.%N)
$py recorder "$endpoint" stop
# moto's access log of the same window: the HTTP status of each S3 answer (the recording has none).
tail -n +"$((log0 + 1))" "$work/moto.log" >"$work/moto.run.log"
$py recorder "$endpoint" download "$work/recording.out.jsonl"

$py check "$endpoint" "$bucket" "$N" "$ORCH_DYNAMODB_TABLE" "$work/sizes.json"
wall=$(python3 -c "print($t1 - $t0)")
$py report "$work/recording.out.jsonl" "$TASKS" "$ITEMS" "$wall" "$work/orch.log" "$work/sizes.json" "$work/moto.run.log"
