#!/usr/bin/env bash
# Builds the three edge Lambdas and the migration's rollout controller for
# provided.al2023 with cargo-lambda
# (installed from PyPI, with zig, into .build/venv) and zips each bootstrap.
# Output: target/lambda/<binary>/bootstrap and target/lambda/<binary>.zip, the
# paths deploy/template.yaml's CodeUri points at.
#
# STREAMER_LAMBDA_ARCH=arm64 (default; Graviton, as the template's
# LambdaArchitecture defaults to) or x86_64. arm64 needs Rust's
# aarch64-unknown-linux-gnu standard library (`rustup target add`); where it
# cannot be had, build x86_64 and deploy with
# `--parameter-overrides LambdaArchitecture=x86_64`.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${STREAMER_LAMBDA_ARCH:-arm64}"
case "$arch" in
    arm64) target=aarch64-unknown-linux-gnu; flag=--arm64 ;;
    x86_64) target=x86_64-unknown-linux-gnu; flag=--x86-64 ;;
    *) echo "STREAMER_LAMBDA_ARCH must be arm64 or x86_64, not $arch" >&2; exit 2 ;;
esac
venv=.build/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
export PATH="$PWD/$venv/bin:$PATH"
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || {
        echo "Rust's $target standard library is not installed and cannot be added here." >&2
        echo "Build x86_64 instead (STREAMER_LAMBDA_ARCH=x86_64) and deploy with LambdaArchitecture=x86_64." >&2
        exit 1
    }
fi
for pair in streamer-edge:streamer-edge-connect streamer-edge:streamer-edge-disconnect \
    streamer-edge:streamer-edge-default streamer-rollout:streamer-rollout; do
    package=${pair%%:*} bin=${pair#*:}
    cargo lambda build --release "$flag" -p "$package" --bin "$bin"
    (cd "target/lambda/$bin" && rm -f "../$bin.zip" && python3 -m zipfile -c "../$bin.zip" bootstrap)
    echo "built target/lambda/$bin.zip ($arch)"
done
