// A check for the fuzz targets: an invariant of a parser's result that does not hold is a bug
// like a crash, so it aborts (libFuzzer then saves the input as a crash artifact).
#pragma once

#include <cstdio>
#include <cstdlib>

#define HELIX_FUZZ_CHECK(cond)                                                               \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)
