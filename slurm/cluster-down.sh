#!/usr/bin/env bash
# Stop the one-node SLURM cluster that slurm/cluster-up.sh started from the state folder
# ${WE_SLURM_STATE:-/tmp/we-repro-slurm}: cancel all jobs, wait for an empty queue,
# `scontrol shutdown` (slurmctld + slurmd), then SIGTERM by pid file to slurmdbd, mariadbd,
# munged. Never kills by name. Idempotent (down when down says so); every wait is bounded.
# `--purge` also deletes the state folder (conf, logs, accounting database).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=cluster-env.sh
. "$HERE/cluster-env.sh"
# shellcheck source-path=SCRIPTDIR source=daemons.sh
. "$HERE/daemons.sh"
STATE="$WE_SLURM_STATE"
T0=$(date +%s%N)
took() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }
failed=0

wait_gone() { # wait_gone PIDFILE NAME SECONDS: true once the process is gone (or a zombie)
  local end=$((SECONDS + $3))
  while alive "$1" "$2"; do
    ((SECONDS < end)) || return 1
    sleep 0.2
  done
}

stop() { # stop PIDFILE NAME: SIGTERM by pid file, then wait up to 20 s
  alive "$1" "$2" || return 0
  kill -TERM "$(cat "$1")" 2>/dev/null || true
  if wait_gone "$1" "$2" 20; then
    echo "cluster-down: stopped $2"
  else
    echo "cluster-down: $2 (pid $(cat "$1")) still running 20 s after SIGTERM" >&2
    failed=1
  fi
}

CTLD="$STATE/run/slurmctld.pid" SLURMD="$STATE/run/slurmd.pid"
DBD="$STATE/run/slurmdbd.pid" MARIADB="$STATE/mariadb/mariadbd.pid" MUNGED="$STATE/munge/munged.pid"

any=0
for entry in "$CTLD slurmctld" "$SLURMD slurmd" "$DBD slurmdbd" "$MARIADB mariadbd" "$MUNGED munged"; do
  # shellcheck disable=SC2086  # "PIDFILE NAME" splits into two arguments on purpose
  if alive $entry; then any=1; fi
done
if ((any == 0)); then
  echo "cluster-down: already down, nothing to do ($(took))"
else
  if alive "$CTLD" slurmctld; then
    # 1. cancel every job and wait (bounded) for the queue to drain; KillWait is 5 s
    mapfile -t jobs < <(timeout 5 squeue -h -o %A 2>/dev/null || true)
    if ((${#jobs[@]} > 0)); then
      timeout 5 scancel "${jobs[@]}" 2>/dev/null || true
      end=$((SECONDS + 30))
      while [[ -n "$(timeout 5 squeue -h -o %A 2>/dev/null || true)" ]] && ((SECONDS < end)); do
        sleep 0.5
      done
      echo "cluster-down: cancelled all jobs (${#jobs[@]} queue entries)"
    fi
    # 2. slurmctld stops itself and every slurmd
    timeout 5 scontrol shutdown >/dev/null 2>&1 || true
    wait_gone "$CTLD" slurmctld 20 || true
    wait_gone "$SLURMD" slurmd 10 || true
  fi
  # 3. whatever is left, by pid file, in reverse start order
  stop "$SLURMD" slurmd
  stop "$CTLD" slurmctld
  stop "$DBD" slurmdbd
  stop "$MARIADB" mariadbd
  stop "$MUNGED" munged
  ((failed == 0)) || { echo "cluster-down: FAILED after $(took)" >&2; exit 1; }
  echo "cluster-down: down in $(took)"
fi

if [[ "${1:-}" == "--purge" ]]; then
  rm -rf -- "$STATE"
  echo "cluster-down: removed $STATE"
fi
