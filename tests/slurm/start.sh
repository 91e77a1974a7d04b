#!/usr/bin/env bash
# Starts a private one-node Slurm 22.05 cluster with accounting (MariaDB + slurmdbd) and
# slurmrestd (REST API v0.0.38, JWT auth), installing the Debian packages when missing.
#
#   bash tests/slurm/start.sh [STATE_DIR]      (default: $ORCH_SLURM_DIR or /tmp/orch-slurm)
#
# Everything lives under STATE_DIR: configs, keys, spool/state, the database, logs, pid files.
# /etc/slurm is never written. On success STATE_DIR/env is a sourceable file with SLURM_CONF,
# SLURMRESTD_URL, SLURM_JWT and ORCH_SLURM_DIR; STATE_DIR/jwt holds the token (mode 0600).
# Idempotent: when the cluster already runs it only refreshes the token and the env file.
# STATE_DIR/run/last-start then holds `reused`, after starting the daemons `started`.
# Stop it with tests/slurm/stop.sh (same argument). See tests/slurm/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-${ORCH_SLURM_DIR:-/tmp/orch-slurm}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF=$DIR/etc/slurm.conf
# A caller that sourced an earlier env file has SLURM_JWT set, which would make scontrol/sacctmgr
# use that (maybe expired) token instead of munge.
unset SLURM_JWT
CLUSTER=orch
ACCOUNT=orch
REST_USER=slurmrest
TOKEN_LIFESPAN=86400

t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[slurm %6ss] %s\n' "$(elapsed "$t0")" "$*"; }
die() { printf 'slurm start: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it starts munged, mariadb and the Slurm daemons)"

# ---- 1. packages -------------------------------------------------------------------------------
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v slurmrestd >/dev/null || need+=(slurmrestd)
# auth/jwt (AuthAltTypes) is only a Recommends of the Slurm packages.
compgen -G '/usr/lib/*/slurm-wlm/auth_jwt.so' >/dev/null || need+=(slurm-wlm-jwt-plugin)
command -v munged >/dev/null || need+=(munge)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  ti=$(date +%s.%N)
  log "installing ${need[*]}"
  # The packages' maintainer scripts try to start services; there is no init system here.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >"${TMPDIR:-/tmp}/orch-slurm-apt.log" 2>&1 \
    || { tail -30 "${TMPDIR:-/tmp}/orch-slurm-apt.log" >&2; die "apt-get install failed"; }
  log "install took $(elapsed "$ti")s"
fi

# One start at a time per state dir (tests may call this concurrently). Every daemon below is
# started with fd 9 closed, or it would hold the lock for its whole life.
exec 9>"$DIR/.lock"
flock 9

alive() { # alive NAME: the pid in $DIR/run/NAME.pid is a running process
  local f=$DIR/run/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

rest_url() { [ -s "$DIR/run/rest.port" ] && echo "http://127.0.0.1:$(cat "$DIR/run/rest.port")"; }

rest_ping() { # rest_ping TOKEN: HTTP 200 from /slurm/v0.0.38/ping
  local url
  url=$(rest_url) || return 1
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        -H "X-SLURM-USER-NAME: root" -H "X-SLURM-USER-TOKEN: $1" \
        "$url/slurm/v0.0.38/ping")" = 200 ]
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

write_env() { # new token, env file, jwt file
  local token
  token=$(scontrol token lifespan=$TOKEN_LIFESPAN | sed -n 's/^SLURM_JWT=//p')
  [ -n "$token" ] || die "scontrol token gave no token"
  (umask 077; printf '%s\n' "$token" >"$DIR/jwt.tmp"; mv "$DIR/jwt.tmp" "$DIR/jwt")
  (umask 077; cat >"$DIR/env.tmp") <<EOF
# Written by tests/slurm/start.sh; source it: . $DIR/env
export ORCH_SLURM_DIR=$DIR
export SLURM_CONF=$SLURM_CONF
export SLURMRESTD_URL=$(rest_url)
export SLURM_JWT=$token
EOF
  mv "$DIR/env.tmp" "$DIR/env"
  chmod 0600 "$DIR/env"
  SLURM_JWT=$token
}

show_env() { sed "s|^export SLURM_JWT=.*|export SLURM_JWT=...  (the token is in $DIR/jwt)|" "$DIR/env"; }

daemons=(munged mariadb slurmdbd slurmctld slurmd slurmrestd)

# ---- already running? ----------------------------------------------------------------------------
# DIR/run/last-start says what this start did, for a caller that stops only what it started:
# `started` (the daemons were started now) or `reused` (they were running already).
rm -f "$DIR/run/last-start"
all_alive=1
for d in "${daemons[@]}"; do alive "$d" || { all_alive=0; break; }; done
if [ $all_alive = 1 ] && [ -f "$SLURM_CONF" ] && ctld_up; then
  write_env
  if rest_ping "$SLURM_JWT"; then
    log "already running; token and $DIR/env refreshed"
    echo reused >"$DIR/run/last-start"
    show_env
    exit 0
  fi
fi
any_alive=0
for d in "${daemons[@]}"; do alive "$d" && any_alive=1; done
if [ $any_alive = 1 ]; then
  log "partly running: stopping it first"
  flock -u 9
  bash "$here/stop.sh" "$DIR"
  flock 9
fi

# ---- 2. layout, users, keys ----------------------------------------------------------------------
chmod 0755 "$DIR"
mkdir -p "$DIR"/{etc,run,log,spool/ctld,spool/d,munge,mysql}
chmod 0755 "$DIR"/{etc,run,log,spool}
chmod 0700 "$DIR"/spool/ctld "$DIR"/spool/d

if ! id "$REST_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$REST_USER"
fi

# munge: own key and socket under the state dir, daemon running as the munge user.
chown munge:munge "$DIR/munge"
chmod 0755 "$DIR/munge" # others must reach the socket
if [ ! -s "$DIR/munge/munge.key" ]; then
  dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none
fi
chown munge:munge "$DIR/munge/munge.key"
chmod 0400 "$DIR/munge/munge.key"
MUNGE_SOCKET=$DIR/munge/munge.socket

# JWT key for auth/jwt (slurmctld and slurmdbd read it; 32 random bytes).
if [ ! -s "$DIR/jwt.key" ]; then
  (umask 077; dd if=/dev/urandom bs=32 count=1 of="$DIR/jwt.key" status=none)
fi
chmod 0600 "$DIR/jwt.key"

# Five distinct free TCP ports on 127.0.0.1: mariadb, slurmdbd, slurmctld, slurmd, slurmrestd.
# The previous start's ports are kept when they are all still free, so a restart does not
# change SLURMRESTD_URL under a client that read the env file earlier.
read -r DB_PORT DBD_PORT CTLD_PORT SLURMD_PORT REST_PORT < <(python3 - "$DIR/etc/ports" <<'PY'
import socket, sys
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s
try:
    old = [int(p) for p in open(sys.argv[1]).read().split()]
    held = [bind(p) for p in old]
    assert len(set(old)) == 5
    ports = old
except Exception:
    held = [bind(0) for _ in range(5)]
    ports = [s.getsockname()[1] for s in held]
print(" ".join(map(str, ports)))
PY
)
echo "$DB_PORT $DBD_PORT $CTLD_PORT $SLURMD_PORT $REST_PORT" >"$DIR/etc/ports"
echo "$REST_PORT" >"$DIR/run/rest.port"

NODE=$(hostname -s)
mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
REAL_MEM=$((mem_mb * 95 / 100))
DB_PASS_FILE=$DIR/mysql/slurm.pass
if [ ! -s "$DB_PASS_FILE" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$DB_PASS_FILE")
fi
DB_PASS=$(cat "$DB_PASS_FILE")

# Task plugin: task/cgroup when this machine has a writable cgroup v1 memory controller (a task
# over --mem is then killed by the kernel and ends OUT_OF_MEMORY), else task/none with
# jobacct_gather's OverMemoryKill. ORCH_SLURM_TASK_PLUGIN=task/none|task/cgroup overrides.
cgroup_v1_memory() {
  local probe=/sys/fs/cgroup/memory/orch-slurm-probe.$$
  [ "$(stat -f -c %T /sys/fs/cgroup/memory 2>/dev/null)" = cgroupfs ] || return 1
  mkdir "$probe" 2>/dev/null || return 1
  rmdir "$probe"
}
if [ -n "${ORCH_SLURM_TASK_PLUGIN:-}" ]; then
  TASK_PLUGIN=$ORCH_SLURM_TASK_PLUGIN
elif cgroup_v1_memory; then
  TASK_PLUGIN=task/cgroup
else
  TASK_PLUGIN=task/none
fi
if [ "$TASK_PLUGIN" = task/cgroup ]; then
  MEM_ENFORCE="# memory enforced by cgroup.conf ConstrainRAMSpace (OverMemoryKill would conflict)"
else
  MEM_ENFORCE="JobAcctGatherParams=OverMemoryKill"
fi

cat >"$SLURM_CONF" <<EOF
# Written by tests/slurm/start.sh: a private one-node cluster for orch's tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$DIR/jwt.key
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job would ask for the whole node's memory and run alone.
DefMemPerCPU=2048
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# Job limits the tests read back: a 10k-task job needs several arrays.
MaxArraySize=1001
MaxJobCount=100000
# Finished jobs stay in slurmctld (squeue/scontrol/REST) for an hour.
MinJobAge=3600
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=300
# Fast scheduling for tests: main scheduler every 2 s, backfill every second.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=100000,batch_sched_delay=0
PriorityType=priority/basic
# Accounting through slurmdbd (sacct shows the arrays and their names).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Connections to slurmdbd take the munge socket from here, not from AuthInfo.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=cpu,mem
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
$MEM_ENFORCE
JobCompType=jobcomp/none
# sacct shows --comment only when it is stored.
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=2 RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=30 State=UP
PartitionName=short Nodes=$NODE Default=NO MaxTime=5 State=UP
EOF
chmod 0644 "$SLURM_CONF"

cat >"$DIR/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
chmod 0644 "$DIR/etc/cgroup.conf"

cat >"$DIR/etc/slurmdbd.conf" <<EOF
# Written by tests/slurm/start.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$DIR/jwt.key
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$DIR/etc/slurmdbd.conf"

show_logs() {
  local f
  for f in "$DIR"/log/*.log "$DIR"/munge/munged.log; do
    [ -s "$f" ] || continue
    echo "--- $f" >&2
    tail -15 "$f" >&2
  done
}

wait_for() { # wait_for SECONDS WHAT DAEMON CMD...: poll CMD every 0.2 s; fail early if DAEMON died
  local secs=$1 what=$2 daemon=$3 deadline
  shift 3
  deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$daemon" != - ] && [ -s "$DIR/run/$daemon.pid" ] && ! alive "$daemon"; then
      echo "slurm start: $daemon exited while waiting for $what" >&2
      show_logs
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "slurm start: timed out after ${secs}s waiting for $what" >&2
      show_logs
      exit 1
    fi
    sleep 0.2
  done
}

# ---- 3. daemons ----------------------------------------------------------------------------------
ts=$(date +%s.%N)
started=0
# A failed start stops whatever it had started, so the next attempt begins clean.
trap '[ $started = 1 ] || { echo "slurm start: failed; stopping what was started" >&2; bash "$here/stop.sh" "$DIR" >&2; }' EXIT

# munged (as munge; it forks and writes its pid file).
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
setpriv --reuid=munge --regid=munge --init-groups \
  munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
  --seed-file="$DIR/munge/munged.seed" --num-threads=4 </dev/null >>"$DIR/log/munged.out" 2>&1 9>&-
wait_for 10 "munged" - test -s "$DIR/munge/munged.pid"
cp "$DIR/munge/munged.pid" "$DIR/run/munged.pid"
wait_for 10 "munge socket" munged sh -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
log "munged up"

# MariaDB with its data dir under the state dir, TCP on 127.0.0.1 only.
DB_DIR=$DIR/mysql
chown mysql:mysql "$DB_DIR"
chmod 0750 "$DB_DIR"
chown root:root "$DB_PASS_FILE"
first_db=0
if [ ! -d "$DB_DIR/data/mysql" ]; then
  first_db=1
  mariadb-install-db --user=mysql --datadir="$DB_DIR/data" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
    || { tail -20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
cat >"$DB_DIR/my.cnf" <<EOF
[mariadbd]
datadir=$DB_DIR/data
socket=$DB_DIR/mysqld.sock
pid-file=$DB_DIR/mysqld.pid
log-error=$DIR/log/mariadb.log
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
chmod 0644 "$DB_DIR/my.cnf"
rm -f "$DB_DIR/mysqld.sock" "$DB_DIR/mysqld.pid"
setsid mariadbd --defaults-file="$DB_DIR/my.cnf" --user=mysql </dev/null >>"$DIR/log/mariadb.out" 2>&1 9>&- &
echo $! >"$DIR/run/mariadb.pid"
# shellcheck disable=SC2120 # wait_for below passes sql its arguments
sql() { mariadb --no-defaults --socket="$DB_DIR/mysqld.sock" -u root "$@"; }
wait_for 60 "mariadb" mariadb sql -e 'SELECT 1'
sql <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
log "mariadb up (port $DB_PORT$([ $first_db = 1 ] && echo ', new data dir'))"

# slurmdbd (forks, writes its pid file).
# slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.
slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1 9>&- \
  || { tail -20 "$DIR/log/slurmdbd.log" >&2; die "slurmdbd failed to start"; }
wait_for 60 "slurmdbd" slurmdbd sacctmgr -n show cluster
log "slurmdbd up (port $DBD_PORT)"

# Cluster, account and users (only what is missing; sacctmgr -i fails on "nothing new").
sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" \
  || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT" \
  || sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=orch organization=orch >/dev/null
for u in root "$REST_USER"; do
  sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=user | grep -qx "$u" \
    || sacctmgr -i add user "$u" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" >/dev/null
done
log "accounting: cluster $CLUSTER, account $ACCOUNT, users root and $REST_USER"

# slurmctld and slurmd (both fork and write their pid files).
slurmctld -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 9>&- \
  || { tail -20 "$DIR/log/slurmctld.log" >&2; die "slurmctld failed to start"; }
wait_for 60 "slurmctld" slurmctld ctld_up
slurmd -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmd.out" 2>&1 9>&- \
  || { tail -20 "$DIR/log/slurmd.log" >&2; die "slurmd failed to start"; }
node_idle() { sinfo -h -n "$NODE" -o %t | grep -qx idle; }
wait_for 60 "node $NODE idle" slurmd node_idle
log "slurmctld (port $CTLD_PORT) and slurmd up; node $NODE idle; $TASK_PLUGIN"

# slurmrestd as the unprivileged user (it refuses root and SlurmUser), JWT auth, API v0.0.38
# plus the accounting API dbv0.0.38 when the plugin exists.
plugins=openapi/v0.0.38
if compgen -G '/usr/lib/*/slurm-wlm/openapi_dbv0_0_38.so' >/dev/null; then
  plugins=$plugins,openapi/dbv0.0.38
fi
# SLURM_CONF is exported above. SLURM_JWT=daemon makes slurmrestd talk to slurmctld/slurmdbd
# with auth/jwt, passing each request's token through; without it auth/munge rejects every token
# ("Rejecting thread config token for user ...").
# A job submitted without current_working_directory runs in slurmrestd's working directory:
# /tmp, which any user may write to.
(cd /tmp && SLURM_JWT=daemon exec setsid setpriv --reuid="$REST_USER" --regid="$REST_USER" --init-groups \
  slurmrestd -f "$SLURM_CONF" -a rest_auth/jwt -s "$plugins" "127.0.0.1:$REST_PORT" \
  </dev/null >>"$DIR/log/slurmrestd.log" 2>&1 9>&- &
  echo $! >"$DIR/run/slurmrestd.pid")
write_env
wait_for 60 "slurmrestd" slurmrestd rest_ping "$SLURM_JWT"
log "slurmrestd up on $(rest_url) ($plugins)"

started=1
echo started >"$DIR/run/last-start"
log "started in $(elapsed "$ts")s (daemons), $(elapsed "$t0")s in all"
show_env
