/*
 * The C tests' checks: CHECK counts a failed condition and prints it; OK ends
 * the program (exit code 1) when a C ABI call does not return MOE_OK.
 */
#ifndef MOE_EP_TEST_CHECK_H
#define MOE_EP_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "moe_ep.h"

static int failures = 0;
#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      failures++;                                 \
      printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      printf(__VA_ARGS__);                        \
      printf("\n");                               \
    }                                             \
  } while (0)
#define OK(call)                                                                                              \
  do {                                                                                                        \
    moe_status s_ = (call);                                                                                   \
    if (s_ != MOE_OK) {                                                                                       \
      printf("FAIL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, moe_status_name(s_), moe_last_error()); \
      exit(1);                                                                                                \
    }                                                                                                         \
  } while (0)

#endif
