#!/usr/bin/env bash
# The chaos suite's one runner: every fault scenario with one seed and one size, then a table of
# what each injected and found (items lost and duplicated must be 0; a test fails otherwise).
#
#   tests/chaos/run.sh [-s SEED] [-n FAULTS] [SCENARIO...]
#
# SEED (default: the clock, printed) replays a run: the same faults at the same points of each
# scenario's schedule (the processes' own timing still varies). FAULTS is how many faults each
# scenario injects at least (default: CI's short run, a few each); a long run is `-n 200`.
# SCENARIO picks some of: workers sqlite s3 zombie disk slurmrestd requeue operator eviction.
#
# The tests need what `.ci/run` installs and starts: pyarrow, moto and kubectl on PATH (its
# venv's bin/), the Slurm test cluster (ORCH_SLURM_ENV), root for the tmpfs of the disk scenario.
# The figures of a long run go in docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

seed=$(date +%s)
faults=
while getopts "s:n:h" opt; do
  case $opt in
    s) seed=$OPTARG ;;
    n) faults=$OPTARG ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
all=(workers sqlite s3 zombie disk slurmrestd requeue operator eviction)
scenarios=("${@:-${all[@]}}")

# per_job N K: jobs of K faults each to reach N.
per_job() { echo $(( ($1 + $2 - 1) / $2 )); }

# scenario NAME: the test binary, the test's name, and the settings that size it to $faults.
scenario() {
  local n=$faults
  case $1 in
    workers) echo "chaos kill_9_of_workers_and_driver ${n:+ORCH_CHAOS_FAULTS=5 ORCH_CHAOS_TRIALS=$(per_job "$n" 5)}" ;;
    sqlite) echo "chaos kill_9_during_sqlite_commits ${n:+ORCH_CHAOS_SQLITE_ROUNDS=$n}" ;;
    s3) echo "run_s3 kill_9_of_workers_and_driver_on_a_faulty ${n:+ORCH_CHAOS_S3_KILLS=20 ORCH_CHAOS_S3_TRIALS=$(per_job "$n" 20)}" ;;
    zombie) echo "chaos a_worker_frozen_past_its_lease ${n:+ORCH_CHAOS_ZOMBIES=$n}" ;;
    disk) echo "chaos a_full_disk_stops_the_run ${n:+ORCH_CHAOS_DISK_TRIALS=$n}" ;;
    slurmrestd) echo "slurm slurmrestd_errors_resets_and_latency ${n:+ORCH_CHAOS_REST_FAULTS=$n}" ;;
    requeue) echo "slurm scontrol_requeue_of_a_running_task ${n:+ORCH_CHAOS_REQUEUES=$n}" ;;
    operator) echo "operator_e2e the_operator_and_its_standby_under_repeated_kill_9 ${n:+ORCH_CHAOS_OPERATOR_KILLS=$n}" ;;
    eviction) echo "operator_e2e an_evicted_pod_redoes_its_task_only ${n:+ORCH_CHAOS_EVICTIONS=$n}" ;;
    *) echo "unknown scenario $1 (one of: ${all[*]})" >&2; exit 2 ;;
  esac
}

cargo build -q -p orch-cli -p orch-worker -p orch-operator --bins
log=$(mktemp -d)
size=${faults:-"CI's number of"}
echo "chaos suite: seed $seed, $size faults per scenario; logs in $log"
failed=()
for name in "${scenarios[@]}"; do
  read -r binary test settings <<<"$(scenario "$name")"
  started=$SECONDS
  echo "--- $name: ${settings:+$settings }cargo test -p orch-cli --test $binary -- $test"
  # shellcheck disable=SC2086 # the settings are words on purpose
  if env ORCH_CHAOS_SEED="$seed" $settings \
    cargo test -q -p orch-cli --test "$binary" -- "$test" --nocapture >"$log/$name.log" 2>&1; then
    verdict=ok
    # A scenario whose component is missing passes as SKIPPED outside CI: not a result.
    if grep -q '^SKIPPED' "$log/$name.log"; then
      verdict=SKIPPED
      failed+=("$name")
    fi
  else
    verdict=FAILED
    failed+=("$name")
  fi
  # The last word of the test, as cli/tests/common chaos_summary() prints it.
  summary=$(grep -E '^chaos.*: seed [0-9-]+:' "$log/$name.log" | tail -1 || true)
  echo "$verdict in $((SECONDS - started)) s: ${summary:-(no summary: see $log/$name.log)}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED or SKIPPED: ${failed[*]} (logs in $log)"
  exit 1
fi
