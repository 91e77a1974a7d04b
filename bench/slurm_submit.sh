#!/usr/bin/env bash
# Benchmark: submitting N tasks to Slurm (default 100 000) — orch's SlurmExecutor over the REST
# and the CLI transport, against plain `sbatch --array` (one call per MaxArraySize tasks, no
# orch) and one `sbatch` per task (measured for M tasks, extrapolated to N), in the same run,
# on the same cluster. Reports the number of arrays, wall time, submit calls, slurmctld's CPU
# time and sdiag counters, and for orch the cost of one poll of all N tasks and of cancelling
# them. The driver is slurm/examples/submit_bench.rs (its doc comment says what is measured).
#
#   bench/slurm_submit.sh [N] [M]     default 100000 tasks, 1000 for one-sbatch-per-task
#
# The cluster. Slurm counts every task of a pending array against MaxJobCount (a 1001-task
# array takes 1001 of it, though it is one record until its tasks start), and the shared test
# cluster of tests/slurm has MaxJobCount=100000: 100k pending tasks do not fit there, and even
# fewer would leave other tests' submissions failing ("MaxJobCount limit reached", EAGAIN)
# while they are queued. So by default this script runs its own one-node cluster:
# tests/slurm/start.sh in $ORCH_SLURM_BENCH_DIR (default /tmp/orch-slurm-bench, task/none, its
# own ports, munge, MariaDB), MaxJobCount raised to 2N + 10000 in that cluster's slurm.conf and
# its slurmctld restarted (the setting needs a restart); the cluster is stopped at exit unless
# ORCH_SLURM_BENCH_KEEP=1. With ORCH_SLURM_ENV=<env file> it uses that cluster instead, if its
# MaxJobCount leaves room for N + 10000 jobs. Run as root on the slurmctld host (the driver
# reads slurmctld's CPU time from /proc; the script creates a reservation).
#
# No task runs: every submission names a reservation of the node that starts a day from now
# (created here, one minute long, deleted at exit), so the tasks stay pending until cancelled.
# At exit, whatever the outcome, everything submitted in the reservation is cancelled.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
M=${2:-1000}
MARGIN=10000

max_job_count() { scontrol show config | awk '$1 == "MaxJobCount" { print $3 }'; }
ctld_up() { env -u SLURM_JWT scontrol ping 2>/dev/null | grep -q 'is UP'; }

private=
if [[ -n ${ORCH_SLURM_ENV:-} ]]; then
    # shellcheck disable=SC1090
    . "$ORCH_SLURM_ENV"
    ctld_up || { echo "ORCH_SLURM_ENV=$ORCH_SLURM_ENV: slurmctld does not answer" >&2; exit 1; }
    if (( $(max_job_count) < N + MARGIN )); then
        echo "MaxJobCount=$(max_job_count) of that cluster has no room for $N pending tasks" \
            "(+$MARGIN for other jobs); leave ORCH_SLURM_ENV unset for a private cluster" >&2
        exit 1
    fi
else
    private=${ORCH_SLURM_BENCH_DIR:-/tmp/orch-slurm-bench}
    echo "starting the private bench cluster in $private (tests/slurm/start.sh)"
    ORCH_SLURM_TASK_PLUGIN=task/none bash tests/slurm/start.sh "$private" >/dev/null
    # shellcheck disable=SC1091
    . "$private/env"
    want=$((2 * N + MARGIN))
    if (( $(max_job_count) < want )); then
        echo "raising MaxJobCount to $want and restarting the bench cluster's slurmctld"
        sed -i "s/^MaxJobCount=.*/MaxJobCount=$want/" "$SLURM_CONF"
        pid=$(cat "$private/run/slurmctld.pid")
        env -u SLURM_JWT scontrol shutdown slurmctld >/dev/null
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        env -u SLURM_JWT slurmctld -f "$SLURM_CONF" </dev/null >>"$private/log/slurmctld.out" 2>&1
        for _ in $(seq 300); do ctld_up && break; sleep 0.2; done
        ctld_up || { echo "the bench cluster's slurmctld did not come back" >&2; exit 1; }
        # The node registers again; wait until it takes jobs.
        for _ in $(seq 150); do
            sinfo --noheader -o %T | grep -qE '^(idle|mixed|allocated)' && break
            sleep 0.2
        done
        (( $(max_job_count) >= want )) || { echo "MaxJobCount is still $(max_job_count)" >&2; exit 1; }
    fi
fi

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, load average$(cut -d' ' -f1-3 /proc/loadavg | sed 's/^/ /')"
echo "slurm: $(scontrol --version), cluster ${private:-from $ORCH_SLURM_ENV}; $(scontrol show config | grep -E '^(MaxArraySize|MaxJobCount|MinJobAge|SchedulerParameters) ' | tr -s ' ' | paste -sd ';' -)"
echo "queue before: $(squeue --noheader | wc -l) job records pending/running"

cargo build --release -q -p orch-slurm --example submit_bench
bench_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/examples/submit_bench"

resv="orch-bench-$$"
env -u SLURM_JWT scontrol create reservation ReservationName="$resv" StartTime=now+1day \
    Duration=1 Nodes=ALL Users="$(id -un)" >/dev/null
cleanup() {
    scancel --reservation="$resv" 2>/dev/null || true
    # A reservation whose jobs are still being cancelled may refuse deletion for a moment.
    for _ in 1 2 3 4 5; do
        env -u SLURM_JWT scontrol delete ReservationName="$resv" 2>/dev/null && break
        sleep 1
    done
    if [[ -n $private && ${ORCH_SLURM_BENCH_KEEP:-0} != 1 ]]; then
        bash tests/slurm/stop.sh "$private" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

"$bench_bin" --reservation "$resv" --tasks "$N" --naive "$M"
echo "queue after: $(squeue --noheader | wc -l) job records pending/running"
