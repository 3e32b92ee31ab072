/* Shared helpers for the C test programs. */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

/* QVISOR_TEST_TIMEOUT_MULTIPLIER (default 1) scales every test timeout, so
 * slow builds (sanitizers, valgrind) do not fail on time alone. */
uint64_t qv_test_timeout_ms(uint64_t base_ms);

/* Makes a fresh directory under $TMPDIR (or /tmp); caller frees the path and
 * removes the tree with qv_test_rm_rf(). */
char *qv_test_mkdtemp(const char *prefix);
void qv_test_rm_rf(const char *path);

/* Writes a file below dir (creating parent directories). */
void qv_test_write(const char *dir, const char *rel, const char *content);

/* A VM spec from JSON, completed with the built-in node defaults (fails the
 * test on an error).  Free with sv_vmspec_free(). */
struct sv_vmspec;
struct sv_vmspec *qv_test_spec(const char *json);
