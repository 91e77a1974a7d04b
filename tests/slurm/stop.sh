#!/usr/bin/env bash
# Stops the cluster that tests/slurm/start.sh started in STATE_DIR (argument, $ORCH_SLURM_DIR or
# /tmp/orch-slurm): cancels its jobs, then stops each daemon named by a pid file under
# STATE_DIR/run, newest first. The state dir (configs, database, logs) is left in place, so a later
# start.sh reuses it; remove the directory yourself for a clean slate.
set -uo pipefail

DIR=${1:-${ORCH_SLURM_DIR:-/tmp/orch-slurm}}
[ -d "$DIR" ] || { echo "slurm stop: no state dir $DIR"; exit 0; }
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF=$DIR/etc/slurm.conf
unset SLURM_JWT # use munge, not a token from a sourced env file

pid_of() { # pid_of NAME: the live pid from $DIR/run/NAME.pid whose command matches, or nothing
  local f=$DIR/run/$1.pid comm=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: the process must be the daemon we started.
  grep -q "$comm" "/proc/$pid/comm" 2>/dev/null || return 1
  echo "$pid"
}

stop_one() { # stop_one NAME COMM: SIGTERM, wait up to 15 s, then SIGKILL
  local pid
  pid=$(pid_of "$1" "$2") || { rm -f "$DIR/run/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "slurm stop: $1 ($pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$DIR/run/$1.pid"
  echo "slurm stop: $1 stopped"
}

# Processes left from this cluster's jobs: slurmstepd and job tasks carry our SLURM_CONF in their
# environment, the tasks also SLURM_JOB_ID (a shell that merely sourced the env file has no
# SLURM_JOB_ID and is left alone).
ours() {
  local p env
  for p in /proc/[0-9]*; do
    env=$( { tr '\0' '\n' <"$p/environ"; } 2>/dev/null) || continue
    grep -qx "SLURM_CONF=$SLURM_CONF" <<<"$env" || continue
    if grep -qx slurmstepd "$p/comm" 2>/dev/null || grep -q '^SLURM_JOB_ID=' <<<"$env"; then
      echo "${p#/proc/}"
    fi
  done
}

stop_one slurmrestd slurmrestd
if pid_of slurmctld slurmctld >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 100); do
      [ -z "$(squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi
stop_one slurmd slurmd
stop_one slurmctld slurmctld
stop_one slurmdbd slurmdbd
stop_one mariadb mariadbd
stop_one munged munged
rm -f "$DIR/munge/munged.pid"

left=$(ours | tr '\n' ' ')
if [ -n "${left// /}" ]; then
  echo "slurm stop: killing leftover job processes: $left"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null
fi
exit 0
