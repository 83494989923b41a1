# shellcheck shell=sh
# Source me (bash/sh): points SLURM clients at the one-node cluster that
# slurm/cluster-up.sh runs from the state folder ${WE_SLURM_STATE:-/tmp/we-repro-slurm}.
#   . slurm/cluster-env.sh && sinfo
# Sets nothing else in the caller's shell (no `set -e` here: this file is sourced).
export WE_SLURM_STATE="${WE_SLURM_STATE:-/tmp/we-repro-slurm}"
export SLURM_CONF="$WE_SLURM_STATE/slurm.conf"
