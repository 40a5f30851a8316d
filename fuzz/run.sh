#!/usr/bin/env bash
# Runs every fuzz target of the `fuzz` preset (build-fuzz/bin/fuzz_*) for a bounded time, each on a
# scratch copy of its seed corpus (fuzz/corpus/<target>/ is never modified), and fails if any
# target crashes, leaks, times out or breaks an invariant. Used by `make fuzz`; see fuzz/README.md.
#   FUZZ_TIME=30      seconds per target (the default)
#   FUZZ_RUNS=N       N executions per target instead of a time bound (e.g. 10000000)
#   FUZZ_TARGETS="a b"  a subset of the targets
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=build-fuzz/bin
work_dir=build-fuzz/fuzz-work
all_targets=(safetensors hf_config engine_config_text engine_config_json layout cli_args cluster_wire
  completion_request tokenizer_json)
read -r -a targets <<<"${FUZZ_TARGETS:-${all_targets[*]}}"

limit=(-max_total_time="${FUZZ_TIME:-30}")
if [ -n "${FUZZ_RUNS:-}" ]; then
  limit=(-runs="${FUZZ_RUNS}")
fi

failed=()
summary=()
for t in "${targets[@]}"; do
  exe="$bin_dir/fuzz_$t"
  if [ ! -x "$exe" ]; then
    echo "fuzz: $exe is missing (build it with: cmake --preset fuzz && cmake --build --preset fuzz)" >&2
    exit 2
  fi
  dir="$work_dir/$t"
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -R "fuzz/corpus/$t/." "$dir/corpus/"
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then
    dict=(-dict="fuzz/dict/$t.dict")
  fi
  echo "fuzz: $t (${limit[*]})"
  rc=0
  "$exe" "${limit[@]}" "${dict[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log.txt" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log.txt" | tail -n 1)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) after ${execs:-?} executions; log $dir/log.txt, input in $dir/artifacts/")
    tail -n 40 "$dir/log.txt" >&2
  else
    summary+=("$t: ok, ${execs:-?} executions, corpus $(find "$dir/corpus" -type f | wc -l) inputs")
  fi
done

printf 'fuzz: %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (reproduce: build-fuzz/bin/fuzz_<target> <artifact>)" >&2
  exit 1
fi
