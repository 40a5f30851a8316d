#!/usr/bin/env bash
# Packs the CUDA kernel tests for a GPU machine that has a driver but none of our build
# dependencies: the test binary from the build, the shared libraries it links that a bare system
# lacks (fmt, spdlog, gtest if shared, libstdc++, and libcudart from the toolkit, since the
# target's toolkit may be another version), and run.sh, which runs the tests against them.
# Usage: scripts/gpu_pack.sh [build_dir (default build)] [out_dir (default out/gpu-pack)]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
out="${2:-$root/out/gpu-pack}"
bin="$build/bin/helix_kernels_cuda_tests"
[ -x "$bin" ] || { echo "gpu_pack: $bin not found; build target helix_kernels_cuda_tests" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/lib"
cp "$bin" "$out/"

# glibc and the driver (libcuda, libnvidia-*) belong to the target machine; everything else goes.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libresolv\.|libcuda\.|libnvidia)'
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$out/lib/$name"
done
if ! ls "$out/lib" | grep -q '^libcudart\.so'; then
  cp -L /usr/local/cuda/lib64/libcudart.so.* "$out/lib/" 2>/dev/null || true
fi

cat > "$out/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs the Helix CUDA kernel tests with the bundled libraries. Extra arguments go to GoogleTest,
# e.g. ./run.sh --gtest_filter='-*Slow*' to leave out the 64K-token MLA comparison.
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The bundled libcudart 13 needs a driver for CUDA >= 13.0; with an older one every GPU test
# skips ("no CUDA device") instead of running, so say what the driver offers.
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi | grep -o 'Driver Version: [0-9.]*.*CUDA Version: [0-9.]*' || true
fi
exec "$here/helix_kernels_cuda_tests" "$@"
EOF
chmod +x "$out/run.sh"
echo "gpu_pack: $out ($(ls "$out/lib" | tr '\n' ' '))"
