#!/usr/bin/env bash
# Installs the Debian packages Helix builds against, if any is missing. Idempotent: does nothing
# (and needs no privileges) when everything is present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libcaf-dev libucx-dev ucx-utils libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev nlohmann-json3-dev libssl-dev libcpp-httplib-dev curl
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  python3-dev pybind11-dev python3-pytest
  libpcre2-dev libutf8proc-dev libsentencepiece-dev
)
# The test of the official OpenAI client against helix serve (tests/serve) runs it with node and
# npm; any node install will do (a newer one from elsewhere provides npm itself).
if ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi
# `scripts/bootstrap.sh fuzz` (what `make fuzz` runs) also needs clang 14 with its sanitizer
# runtimes and libFuzzer; plain builds do not, so they are not installed otherwise.
fuzz_packages=(clang-14 libclang-rt-14-dev libfuzzer-14-dev)
if [ "${1:-}" = fuzz ]; then
  packages+=("${fuzz_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "helix bootstrap: installing missing packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo_cmd=(sudo -n)
else
  echo "helix bootstrap: error: packages ${missing[*]} are missing and installing them needs root" >&2
  echo "  run as root, give this user passwordless sudo, or install them yourself:" >&2
  echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
