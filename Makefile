# The two commands of the quick start, plus build and the sanitizer run.
#   make run    install missing packages, build, run the default long-context decode and report
#   make test   install missing packages, build, run the test suite (ctest, CPU + skipped GPU)
#   make build  install missing packages and build, nothing else
#   make test-asan   the unit tests under ASan + UBSan (CPU-only debug build)
#   make fuzz   the libFuzzer targets (clang 14, ASan + UBSan; fuzz/README.md) for FUZZ_TIME
#               seconds each (default 30), or FUZZ_RUNS executions each (make fuzz FUZZ_RUNS=10000000)
JOBS ?= $(shell nproc)
FUZZ_TIME ?= 30
FUZZ_RUNS ?=

.PHONY: deps build run test test-asan test-slow format clean fuzz

deps:
	@scripts/bootstrap.sh

build: deps
	@cmake --preset default >/dev/null
	@cmake --build --preset default -j $(JOBS)

run: build
	@./build/bin/helix demo

test: build
	@ctest --preset default

test-slow: build
	@ctest --test-dir build -L slow --output-on-failure

test-asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@ctest --preset asan

fuzz:
	@scripts/bootstrap.sh fuzz
	@cmake --preset fuzz >/dev/null
	@cmake --build --preset fuzz -j $(JOBS)
	@FUZZ_TIME=$(FUZZ_TIME) FUZZ_RUNS=$(FUZZ_RUNS) fuzz/run.sh

format:
	@git ls-files '*.hpp' '*.cpp' '*.cu' | xargs clang-format -i

clean:
	@rm -rf build build-asan build-fuzz
