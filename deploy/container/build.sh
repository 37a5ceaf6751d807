#!/bin/sh
# Builds the runtime image (Containerfile) from a release binary.
#   deploy/container/build.sh [TAG]        default TAG beacon-collector:latest
# Environment: BIN (default target/release/beacon-collector, built if missing), BASE (the
# base image, default in Containerfile), ENGINE (podman or docker; default podman).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAG=${1:-beacon-collector:latest}
BIN=${BIN:-$ROOT/target/release/beacon-collector}
ENGINE=${ENGINE:-podman}
[ -x "$BIN" ] || cargo build --release --locked --bin beacon-collector --manifest-path "$ROOT/Cargo.toml"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The release profile keeps debug info (for perf); the image does not need it.
strip -o "$ctx/beacon-collector" "$BIN"
cp "$ROOT/config/collector.toml" "$ctx/collector.toml"
mkdir "$ctx/state"
set -- -f "$ROOT/deploy/container/Containerfile" -t "$TAG"
[ -z "${BASE:-}" ] || set -- "$@" --build-arg "BASE=$BASE"
# HEALTHCHECK is a Docker image-format field (OCI images have none).
[ "$ENGINE" != podman ] || set -- "$@" --format docker
"$ENGINE" build "$@" "$ctx"
