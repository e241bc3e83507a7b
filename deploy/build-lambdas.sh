#!/usr/bin/env bash
# Builds the three edge Lambdas for provided.al2023 on arm64 with cargo-lambda
# (installed from PyPI with zig into .build/venv) and zips each bootstrap.
# Output: target/lambda/<binary>/bootstrap and target/lambda/<binary>.zip, the
# paths deploy/template.yaml's CodeUri points at.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'cargo-lambda==1.9.2' 'ziglang==0.13.0'
export PATH="$PWD/$venv/bin:$PATH"
rustup target list --installed | grep -q aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu
for bin in streamer-edge-connect streamer-edge-disconnect streamer-edge-default; do
    cargo lambda build --release --arm64 -p streamer-edge --bin "$bin"
    (cd "target/lambda/$bin" && rm -f "../$bin.zip" && python3 -m zipfile -c "../$bin.zip" bootstrap)
    echo "built target/lambda/$bin.zip"
done
