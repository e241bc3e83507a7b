#!/usr/bin/env bash
# Runs every check and test of the project. This is the README's test
# command and exactly what CI runs (.ci/run). It installs what the tests need
# (pinned, into .build/venv), starts a DynamoDB-compatible server (moto) on a
# free loopback port for the DynamoDB tests, and stops it afterwards. A
# missing tool is a loud failure, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Each step's name and time, and a verdict at the end.
steps=()
current=""
started=$SECONDS
step_started=$SECONDS
finish_step() {
    if [ -n "$current" ]; then
        steps+=("$(printf '%5ss  %s' $((SECONDS - step_started)) "$current")")
    fi
}
step() {
    finish_step
    current=$*
    step_started=$SECONDS
    printf '\n==> %s\n' "$*"
}
summary() {
    local status=${1:-$?}
    finish_step
    printf '\n==> summary (%ss in all)\n' $((SECONDS - started))
    printf '%s\n' "${steps[@]}"
    if [ "$status" -eq 0 ]; then
        printf '\nPASSED: every check and test\n'
    else
        printf '\nFAILED during: %s (exit %s)\n' "$current" "$status"
    fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
trap 'summary $?' EXIT

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 is needed for the test tools (moto, cfn-lint, grpcurl)"
command -v npm >/dev/null || die "node and npm (Node 20+) are needed for the TypeScript client's tests"

step "test tools (.build/venv)"
venv=$root/.build/venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || die "cannot create a virtual environment (install python3-venv)"
fi
stamp=$venv/.requirements.sha
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the pinned tools of scripts/requirements.txt (moto, cfn-lint, grpcurl, SAM CLI, cargo-lambda); about a minute the first time"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt \
        || die "cannot install the pinned test tools from scripts/requirements.txt"
    echo "$want" > "$stamp"
fi
for tool in moto_server cfn-lint grpcurl sam cargo-lambda; do
    [ -x "$venv/bin/$tool" ] || die "$tool is missing from $venv/bin"
done
export PATH="$venv/bin:$PATH"

step "browsers for the console's tests (Debian's chromium and firefox-esr)"
chromium=${STREAMER_CHROMIUM:-/usr/bin/chromium}
firefox=${STREAMER_FIREFOX:-/usr/bin/firefox-esr}
missing=()
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
export STREAMER_CHROMIUM=$chromium STREAMER_FIREFOX=$firefox

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

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

step "DynamoDB-compatible server (moto)"
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
log=$root/.build/moto.log
"$venv/bin/python" "$root/scripts/moto_server.py" 127.0.0.1 "$port" > "$log" 2>&1 &
moto_pid=$!
trap 'status=$?; kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; summary $status' EXIT
for _ in $(seq 1 100); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
        break
    fi
    kill -0 "$moto_pid" 2>/dev/null || { cat "$log" >&2; die "moto_server exited; see its log above"; }
    sleep 0.2
done
"$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" \
    || { cat "$log" >&2; die "moto_server did not answer on 127.0.0.1:$port"; }
echo "moto listening on 127.0.0.1:$port (log: $log)"
export STREAMER_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$port"

step "cargo build (every binary: the tests run the real ones)"
cargo build --workspace --bins --locked

step "cargo test"
# The chaos suite runs next, on its own, so its log shows what it injected.
# lambda_runtime.rs runs the edge Lambdas built above against `cargo lambda
# watch --only-lambda-apis`, cargo-lambda's Lambda Runtime API emulator.
cargo test --workspace --locked -- --skip chaos_

step "chaos suite (faults injected between the real processes)"
cargo test -p streamer-server --locked --test chaos -- --nocapture

step "soak (60 s of mixed load against dev)"
"$root/target/debug/streamer-bench" soak --minutes 1 --clients 30

step "TypeScript client (npm ci, tsc, node --test against the real dev server)"
(
    cd clients/typescript
    npm ci --no-audit --no-fund --loglevel=error
    npm run build
    STREAMER_DEV_BIN="$root/target/debug/streamer-control-plane" \
    STREAMER_CTL_BIN="$root/target/debug/streamerctl" \
        npm test
)

step "console (npm ci, build checked against the embedded one, browser tests in headless Chromium and Firefox)"
(
    cd control-plane/console
    npm ci --no-audit --no-fund --loglevel=error
    npm run build
    # The control plane embeds dist/ (include_bytes!): a stale commit of it
    # would ship a page that is not what src/ says.
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git diff --exit-code --stat -- dist src/gen \
            || die "control-plane/console/dist or src/gen differs from a fresh build: run npm run build there and commit"
    fi
    STREAMER_DEV_BIN="$root/target/debug/streamer-control-plane" npm test
)
