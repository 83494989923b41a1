#!/usr/bin/env bash
# Install a one-node SLURM cluster's packages on Debian 12 (run as root).
# Idempotent: a quick no-op when every package is already installed.
set -euo pipefail

PKGS=(slurm-wlm munge slurmdbd mariadb-server)

missing=()
for p in "${PKGS[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "slurm packages already installed: ${PKGS[*]}"
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  echo "install-debian.sh: must run as root (missing: ${missing[*]})" >&2
  exit 1
fi

start=$SECONDS
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed in $((SECONDS - start)) s"
