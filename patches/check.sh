#!/usr/bin/env bash
# Checks that patches/yamux is the published yamux 0.14.1 with patches/yamux.diff applied, and
# nothing else. The published crate comes through cargo, which verifies it against the registry's
# checksum, in a throwaway project that does not carry the patch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/fetch/src"
cat >"$work/fetch/Cargo.toml" <<'TOML'
[package]
name = "fetch-upstream-yamux"
version = "0.0.0"
edition = "2021"

[dependencies]
yamux = "=0.14.1"
TOML
touch "$work/fetch/src/lib.rs"
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/yamux-0.14.1.crate | head -1)
mkdir "$work/upstream"
tar -xzf "$crate" -C "$work/upstream"
(cd "$work/upstream/yamux-0.14.1" && patch -p1 --quiet <"$here/yamux.diff")
if ! diff -r --exclude=.cargo-ok "$work/upstream/yamux-0.14.1" "$here/yamux"; then
  echo "patches/yamux differs from yamux 0.14.1 + patches/yamux.diff (above)"
  exit 1
fi
echo "patches/yamux is yamux 0.14.1 + patches/yamux.diff"
