#!/usr/bin/env bash
# Start a real one-node SLURM cluster as plain background daemons (root, no systemd):
# munged -> conf files -> MariaDB -> slurmdbd -> slurmctld -> slurmd.
# Everything lives under ${WE_SLURM_STATE:-/tmp/we-repro-slurm}; use `. slurm/cluster-env.sh`.
# Idempotent: when the cluster already answers it only says so. Bounded: gives up after
# WE_SLURM_UP_TIMEOUT (60) seconds with a one-line reason and the tail of the daemon's log.
# Env: WE_SLURM_CPUS (4) CPUs the node advertises (see README: SlurmdParameters=config_overrides).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=cluster-env.sh
. "$HERE/cluster-env.sh"
# shellcheck source-path=SCRIPTDIR source=daemons.sh
. "$HERE/daemons.sh"
STATE="$WE_SLURM_STATE"
DB="$STATE/mariadb"                    # MariaDB datadir (owned by mysql; its log and pid too)
MYSOCK=/run/mysqld/mysqld.sock         # default socket: slurmdbd's client finds it there
CLUSTER=werepro
UP_TIMEOUT="${WE_SLURM_UP_TIMEOUT:-60}"
DEADLINE=$((SECONDS + UP_TIMEOUT))
T0=$(date +%s%N)

took() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }

die() { # die REASON [LOG]: one-line reason, then the tail of the relevant log
  echo "cluster-up: FAILED after $(took): $1" >&2
  if [[ -n "${2:-}" && -r "$2" ]]; then
    echo "--- tail of $2 ---" >&2
    tail -n 20 "$2" >&2
  fi
  exit 1
}

# Readiness probes: every client call is capped at 5 s.
probe_munge() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
probe_mysql() { timeout 5 mysqladmin --socket="$MYSOCK" ping >/dev/null 2>&1; }
probe_dbd()   { timeout 5 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
probe_ctld()  { [[ "$(timeout 5 scontrol ping 2>/dev/null)" == *"is UP"* ]]; }
probe_node()  { [[ "$(timeout 5 sinfo -h -o %T 2>/dev/null)" =~ ^(idle|mixed|allocated|completing|planned)$ ]]; }

wait_for() { # wait_for WHAT LOG PROBE [PIDFILE NAME]: retry PROBE until it passes or the
  # deadline hits; give up at once if the daemon wrote its pid file and then died
  until "$3"; do
    if (($# == 5)) && [[ -e "$4" ]] && ! alive "$4" "$5"; then
      die "$1 exited while starting" "$2"
    fi
    ((SECONDS < DEADLINE)) || die "$1 not ready within ${UP_TIMEOUT} s" "$2"
    sleep 0.2
  done
}

daemon_pids=(
  "$STATE/munge/munged.pid munged" "$DB/mariadbd.pid mariadbd" "$STATE/run/slurmdbd.pid slurmdbd"
  "$STATE/run/slurmctld.pid slurmctld" "$STATE/run/slurmd.pid slurmd"
)
all_alive() {
  local entry
  for entry in "${daemon_pids[@]}"; do
    # shellcheck disable=SC2086  # "PIDFILE NAME" splits into two arguments on purpose
    alive $entry || return 1
  done
}

# --- 0. already up? then this is a no-op --------------------------------------------------
if all_alive && probe_ctld && probe_node; then
  echo "cluster-up: already up, nothing to do ($(took)); SLURM_CONF=$SLURM_CONF"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "must run as root"
[[ "$STATE" == /* ]] || die "WE_SLURM_STATE must be an absolute path, not '$STATE'"
for cmd in munged mariadbd slurmdbd slurmctld slurmd sacctmgr; do
  command -v "$cmd" >/dev/null || die "$cmd not found: run slurm/install-debian.sh first"
done
mkdir -p "$STATE"/{state,spool,log,run,munge}
for user in munge mysql; do  # both daemons drop root and must reach their folders in $STATE
  runuser -u "$user" -- test -x "$STATE" || die "user $user cannot enter $STATE (pick another WE_SLURM_STATE)"
done

# --- 1. munge (socket in /run/munge where clients look; log and pid in the state folder) ---
if ! probe_munge; then
  install -d -o munge -g munge -m 0755 /run/munge
  chown munge:munge "$STATE/munge" && chmod 0700 "$STATE/munge"
  rm -f "$STATE/munge/munged.pid"
  runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log" </dev/null >/dev/null 2>&1 \
    || die "munged failed to start" "$STATE/munge/munged.log"
  wait_for munged "$STATE/munge/munged.log" probe_munge "$STATE/munge/munged.pid" munged
fi

# --- 2. conf files, before any slurm daemon (rewritten each time; content is deterministic) --
NODE=$(hostname -s)
HW=$(env -u SLURM_CONF slurmd -C | head -n 1)   # "NodeName=... CPUs=2 ... RealMemory=24105"
REAL_CPUS=$(grep -oP '\bCPUs=\K[0-9]+' <<<"$HW") || die "cannot parse 'slurmd -C': $HW"
MEM=$(grep -oP '\bRealMemory=\K[0-9]+' <<<"$HW") || die "cannot parse 'slurmd -C': $HW"
CPUS=$(( ${WE_SLURM_CPUS:-4} > REAL_CPUS ? ${WE_SLURM_CPUS:-4} : REAL_CPUS ))

cat >"$STATE/slurm.conf.tmp" <<EOF
# Written by slurm/cluster-up.sh: a one-node test cluster. Do not edit; it is rewritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after 10 s instead of 120 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
# reject an impossible request at submit time instead of leaving it pending forever
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
# advertise $CPUS CPUs (the machine has $REAL_CPUS) so a few 1-CPU jobs run at once
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
mv "$STATE/slurm.conf.tmp" "$STATE/slurm.conf"

(umask 077 && cat >"$STATE/slurmdbd.conf.tmp" <<EOF
# Written by slurm/cluster-up.sh.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
EOF
)
chmod 600 "$STATE/slurmdbd.conf.tmp" && mv "$STATE/slurmdbd.conf.tmp" "$STATE/slurmdbd.conf"

# --- 3. MariaDB on the Unix socket only; root logs in over the socket without a password ---
if ! alive "$DB/mariadbd.pid" mariadbd; then
  # only one such cluster per machine (fixed sockets and ports 6817-6819)
  ! probe_mysql || die "another MariaDB already serves $MYSOCK (another state folder's cluster?)"
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  install -d -o mysql -g mysql -m 0700 "$DB"
  if [[ ! -d "$DB/mysql" ]]; then
    mariadb-install-db --user=mysql --datadir="$DB" --skip-test-db \
      >"$STATE/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed" "$STATE/log/mariadb-install.log"
  fi
  rm -f "$DB/mariadbd.pid"
  setsid -f mariadbd --user=mysql --datadir="$DB" --socket="$MYSOCK" \
    --pid-file="$DB/mariadbd.pid" --skip-networking --log-error="$DB/mariadb.err" \
    </dev/null >/dev/null 2>&1
fi
wait_for mariadbd "$DB/mariadb.err" probe_mysql "$DB/mariadbd.pid" mariadbd

# --- 4. slurmdbd, then make sure the cluster is registered so sacct sees its jobs --------
if ! alive "$STATE/run/slurmdbd.pid" slurmdbd; then
  rm -f "$STATE/run/slurmdbd.pid"
  slurmdbd </dev/null >/dev/null 2>&1 || die "slurmdbd failed to start" "$STATE/log/slurmdbd.log"
fi
wait_for slurmdbd "$STATE/log/slurmdbd.log" probe_dbd "$STATE/run/slurmdbd.pid" slurmdbd
if ! timeout 5 sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  timeout 5 sacctmgr -i add cluster "$CLUSTER" >/dev/null \
    || die "cannot register cluster $CLUSTER in slurmdbd" "$STATE/log/slurmdbd.log"
fi

# --- 5. slurmctld, then slurmd ------------------------------------------------------------
if ! alive "$STATE/run/slurmctld.pid" slurmctld; then
  rm -f "$STATE/run/slurmctld.pid"
  slurmctld </dev/null >/dev/null 2>&1 || die "slurmctld failed to start" "$STATE/log/slurmctld.log"
fi
wait_for slurmctld "$STATE/log/slurmctld.log" probe_ctld "$STATE/run/slurmctld.pid" slurmctld
if ! alive "$STATE/run/slurmd.pid" slurmd; then
  rm -f "$STATE/run/slurmd.pid"
  slurmd </dev/null >/dev/null 2>&1 || die "slurmd failed to start" "$STATE/log/slurmd.log"
fi
wait_for "node $NODE (slurmd)" "$STATE/log/slurmd.log" probe_node "$STATE/run/slurmd.pid" slurmd

# --- 6. accounting answers (submitit polls job state with sacct only) ----------------------
timeout 5 sacct -n -X -S now-1minutes >/dev/null 2>&1 \
  || die "sacct does not answer" "$STATE/log/slurmdbd.log"

echo "cluster-up: up in $(took): node $NODE, $CPUS CPUs (real $REAL_CPUS), partition debug;" \
  "SLURM_CONF=$SLURM_CONF"
