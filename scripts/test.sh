#!/usr/bin/env bash
# Runs every check and test of the project. This is the README's test
# command and exactly what CI runs (.ci/run). It installs what the tests need
# (pinned, into .build/venv), starts a DynamoDB-compatible server (moto) on a
# free loopback port for the DynamoDB tests, and stops it afterwards. A
# missing tool is a loud failure, never a skipped test.
#
#   bash scripts/test.sh           # everything (what CI runs)
#   bash scripts/test.sh --quick   # the loop for a change: formatting,
#                                  # clippy, the unit tests and one
#                                  # end-to-end smoke through `dev`
#
# Work that waits on the network or on a few processes runs beside work
# that needs the CPU: the tools, the browsers and the web builds install
# while clippy and the build compile; the soak and the browser tests run
# beside the Rust tests. Each background job's output goes to
# .build/logs/<job>.log and is printed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=false
case "${1:-}" in
    --quick) quick=true ;;
    "") ;;
    *) echo "usage: bash scripts/test.sh [--quick]" >&2; exit 2 ;;
esac

# A clean build gains nothing from incremental compilation and pays for
# it; a developer's repeated runs keep it.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi

logs=$root/.build/logs
mkdir -p "$logs"

# Each step's name and time, and a verdict at the end.
steps=()
current=""
started=$SECONDS
step_started=$SECONDS
finish_step() {
    if [ -n "$current" ]; then
        steps+=("$(printf '%5ss  %s' $((SECONDS - step_started)) "$current")")
    fi
    current=""
}
step() {
    finish_step
    current=$*
    step_started=$SECONDS
    printf '\n==> %s\n' "$*"
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Background jobs: started with `start_job ID TITLE FUNCTION`, joined with
# `finish_job ID` (prints the job's log; a failed job fails the run).
declare -A job_pid=() job_title=()
failed_job=""
start_job() {
    local id=$1 title=$2
    shift 2
    local log=$logs/$id.log
    printf '\n==> %s (beside the steps below; log: %s)\n' "$title" "${log#"$root"/}"
    (
        t0=$SECONDS
        status=0
        "$@" || status=$?
        echo $((SECONDS - t0)) > "$log.time"
        exit $status
    ) > "$log" 2>&1 &
    job_pid[$id]=$!
    job_title[$id]=$title
}
finish_job() {
    local id=$1
    local log=$logs/$id.log
    local title=${job_title[$id]}
    local status=0
    finish_step
    wait "${job_pid[$id]}" || status=$?
    unset "job_pid[$id]"
    printf '\n==> %s (ran beside the steps above)\n' "$title"
    cat "$log"
    steps+=("$(printf '%5ss  %s (alongside)' "$(cat "$log.time" 2>/dev/null || echo '?')" "$title")")
    if [ "$status" -ne 0 ]; then
        failed_job=$title
        exit "$status"
    fi
}

summary() {
    local status=${1:-$?}
    local failed_in=$current
    finish_step
    for pid in "${job_pid[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    printf '\n==> summary (%ss in all)\n' $((SECONDS - started))
    printf '%s\n' "${steps[@]}"
    if [ "$status" -ne 0 ]; then
        printf '\nFAILED during: %s (exit %s)\n' "${failed_in:-$failed_job}" "$status"
    elif $quick; then
        printf '\nPASSED the quick loop (formatting, clippy, unit tests, one smoke test through dev).\n'
        printf 'Skipped: cfn-lint and sam validate, the DynamoDB tests, every other end-to-end test, the chaos suite,\n'
        printf 'the doc tests, the soak, the TypeScript client and the console. This is not the full command:\n'
        printf 'run `bash scripts/test.sh` (what CI runs) before you push.\n'
    else
        printf '\nPASSED: every check and test\n'
    fi
}
trap 'summary $?' EXIT
# Stopped from outside (a CI time limit, ^C): the verdict says so, never PASSED.
trap 'exit 143' TERM
trap 'exit 130' INT

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 is needed for the test tools (moto, cfn-lint, grpcurl, cargo-nextest)"
$quick || command -v npm >/dev/null || die "node and npm (Node 20+) are needed for the TypeScript client's tests"

venv=$root/.build/venv
install_tools() {
    # A venv whose creation was cut short has no pip: make it again.
    if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv" || die "cannot create a virtual environment (install python3-venv)"
    fi
    local stamp=$venv/.requirements.sha
    local want
    want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "installing the pinned tools of scripts/requirements.txt (moto, cfn-lint, grpcurl, SAM CLI, cargo-lambda, cargo-nextest); about a minute the first time"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt \
            || die "cannot install the pinned test tools from scripts/requirements.txt"
        echo "$want" > "$stamp"
    fi
    for tool in moto_server cfn-lint grpcurl sam cargo-lambda cargo-nextest; do
        [ -x "$venv/bin/$tool" ] || die "$tool is missing from $venv/bin"
    done
    "$venv/bin/cargo-nextest" --version | head -1
}

chromium=${STREAMER_CHROMIUM:-/usr/bin/chromium}
firefox=${STREAMER_FIREFOX:-/usr/bin/firefox-esr}
install_browsers() {
    local missing=()
    [ -x "$chromium" ] || missing+=(chromium)
    [ -x "$firefox" ] || missing+=(firefox-esr)
    if [ ${#missing[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "no ${missing[*]} and no apt-get to install them: install them and set STREAMER_CHROMIUM / STREAMER_FIREFOX"
        [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install Debian's packages (apt-get install ${missing[*]}) or set STREAMER_CHROMIUM / STREAMER_FIREFOX"
        echo "installing Debian's ${missing[*]} (a minute or two the first time)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
            || die "apt-get update failed: cannot install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
    "$chromium" --version || die "$chromium does not run"
    "$firefox" --version || die "$firefox does not run"
}

# The TypeScript client's and the console's dependencies and builds.
build_web() {
    (
        cd clients/typescript
        npm ci --no-audit --no-fund --loglevel=error
        npm run build
    )
    (
        cd control-plane/console
        npm ci --no-audit --no-fund --loglevel=error
        npm run build
        # The control plane embeds dist/ (include_bytes!): a stale commit of
        # it would ship a page that is not what src/ says.
        if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
            git diff --exit-code --stat -- dist src/gen \
                || die "control-plane/console/dist or src/gen differs from a fresh build: run npm run build there and commit"
        fi
    )
}

# The TypeScript client's tests (in Node and in headless Chromium), then the
# console's browser tests (headless Chromium and Firefox), each against the
# real `dev` the build made.
test_web() {
    (
        cd clients/typescript
        STREAMER_CHROMIUM=$chromium \
        STREAMER_DEV_BIN="$root/target/debug/streamer-control-plane" \
        STREAMER_CTL_BIN="$root/target/debug/streamerctl" \
            npm test
    )
    (
        cd control-plane/console
        STREAMER_CHROMIUM=$chromium STREAMER_FIREFOX=$firefox \
        STREAMER_DEV_BIN="$root/target/debug/streamer-control-plane" \
            npm test
    )
}

soak() {
    "$root/target/debug/streamer-bench" soak --minutes 1 --clients 30
}

start_job tools "test tools (.build/venv)" install_tools
if ! $quick; then
    start_job browsers "browsers (Debian's chromium and firefox-esr)" install_browsers
    start_job web "TypeScript client and console: npm ci and build" build_web
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if $quick; then
    step "build: the libraries' unit tests and the system test binary"
    cargo test --workspace --locked --no-run --lib --test system
else
    # One compile for everything that runs below: every binary (the tests
    # start the real ones) and every test binary, with the same features
    # (a separate `cargo build` would compile the graph again without the
    # dev-dependencies' features).
    step "build: every binary and test binary"
    cargo test --workspace --locked --no-run
fi

finish_job tools
export PATH="$venv/bin:$PATH"

if $quick; then
    step "unit tests and a smoke test through dev (cargo nextest)"
    cargo nextest run --workspace --locked --lib --test system \
        -E 'kind(lib) | test(=e2e::echo_whoami_ping_health)'
    exit 0
fi

step "doc tests"
cargo test --workspace --locked --doc

step "cfn-lint deploy/template.yaml"
cfn-lint deploy/template.yaml

step "sam validate --lint deploy/template.yaml"
# SAM CLI keeps its state in .build/sam: telemetry off and its weekly version
# check (a call out to PyPI) marked as done, so it sends nothing anywhere.
sam_dir=$root/.build/sam
mkdir -p "$sam_dir"
printf '{"telemetryEnabled": false, "lastVersionCheck": %s.0}\n' "$(date +%s)" > "$sam_dir/metadata.json"
__SAM_CLI_APP_DIR=$sam_dir SAM_CLI_TELEMETRY=0 AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    sam validate --lint -t deploy/template.yaml

# Starts moto on a free loopback port, logging to $1; sets moto_port and
# adds its pid to moto_pids (all stopped on exit).
moto_pids=()
start_moto() {
    local log=$1 port
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$venv/bin/python" "$root/scripts/moto_server.py" 127.0.0.1 "$port" > "$log" 2>&1 &
    local pid=$!
    moto_pids+=("$pid")
    for _ in $(seq 1 100); do
        if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
            break
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "moto_server exited; see its log above"; }
        sleep 0.2
    done
    "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" \
        || { cat "$log" >&2; die "moto_server did not answer on 127.0.0.1:$port"; }
    echo "moto listening on 127.0.0.1:$port (log: $log)"
    moto_port=$port
}

step "DynamoDB-compatible server (moto)"
trap 'status=$?; for pid in "${moto_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; summary $status' EXIT
start_moto "$root/.build/moto.log"
export STREAMER_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$moto_port"

finish_job browsers
finish_job web

start_job soak "soak (60 s of mixed load against dev)" soak

# Every Rust test: unit, integration, end to end and the chaos suite (its
# tests print what they injected and checked), each in its own process with
# a time limit (.config/nextest.toml). lambda_runtime runs the edge Lambdas
# built above against `cargo lambda watch --only-lambda-apis`, cargo-lambda's
# Lambda Runtime API emulator.
step "cargo nextest run (every Rust test, the chaos suite included)"
cargo nextest run --workspace --locked

finish_job soak

# The seed's targets under the seed's chaos, two minutes of it: a fleet of
# two replicas on a moto of its own (one Python process: the tests' tables
# would slow it), faults injected window by window. A debug build on a
# loaded CI machine says nothing about speed, so this run fails only on a
# correctness guarantee (each message once and in order, each accepted
# request completed once, no connection dropped, reports exact) and prints
# the rest; the 15-minute release figures are in docs/performance.md.
step "streamer-bench slo --minutes 2 (the seed's targets under its chaos)"
start_moto "$root/.build/moto-slo.log"
"$root/target/debug/streamer-bench" slo --minutes 2 --correctness-only --recipients 200 --followers 20 \
    --dynamodb "http://127.0.0.1:$moto_port"

step "TypeScript client and console: tests against the real dev (Node; headless Chromium and Firefox)"
test_web
