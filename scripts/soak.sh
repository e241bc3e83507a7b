#!/usr/bin/env bash
# A bounded soak of `dev`: a steady mixed load (connects, disconnects,
# messages, joins, broadcasts, async requests) that prints the process's
# RSS, open descriptors, tasks and error counts at each interval and a
# verdict at the end (growth bounded once warm, errors zero); exit 1 when it
# fails.
#
#   scripts/soak.sh                 # 10 minutes, release build
#   scripts/soak.sh --minutes 1     # what CI runs (debug build)
#   scripts/soak.sh --minutes 30 --clients 100
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
clients=40
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        *) echo "usage: scripts/soak.sh [--minutes N] [--clients N] [--debug]" >&2; exit 2 ;;
    esac
done
if [ "$profile" = release ]; then
    cargo build --release --locked -p streamer-server -p streamer-bench
else
    cargo build --locked -p streamer-server -p streamer-bench
fi
exec "target/$profile/streamer-bench" soak --minutes "$minutes" --clients "$clients"
