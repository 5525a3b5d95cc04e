#!/usr/bin/env bash
# `make bench`: install what the benchmark needs if missing, then run bench/bench.py (see its docstring).
# Knobs by environment: DURATION (20), CONNECTIONS (64), WARMUP (3), RSS_SECONDS (60, 0 skips), ONLY, NOTE.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "bench: needs 2 CPUs (server on CPU 0, wrk on CPU 1)" >&2
    exit 2
fi
export PATH="$PATH:/usr/sbin"
exec .venv/bin/python bench/bench.py "$@"
