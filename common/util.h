/* Small parsers and validators shared by the CLI, the config and the daemon. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define QV_NAME_MAX 63

/* VM, image, pool and task names become paths: [a-z0-9][a-z0-9-]{0,62}.
 * No dots, no slashes, nothing that could climb out of a directory. */
bool qv_name_valid(const char *name);

/* s ends with suffix and has something before it. */
bool qv_has_suffix(const char *s, const char *suffix);

/* Sizes always carry a unit: "512M", "20G", "1T", "4096K", also "20GiB",
 * "20GB" (both binary: 1G = 1024^3 bytes) and "0".  A bare number like "100"
 * is rejected (-EINVAL): it never silently means bytes.
 * -ERANGE on overflow of 64 bits. */
int qv_parse_size(const char *s, uint64_t *ret);
/* "20G", "512M", "1536K", "123B": the largest unit that divides exactly. */
void qv_format_size(uint64_t bytes, char *buf, size_t size);

/* Durations: "500ms", "60s", "2m", "1h"; a bare integer means seconds.
 * Result in milliseconds. */
int qv_parse_duration_ms(const char *s, uint64_t *ret);
void qv_format_duration_ms(uint64_t ms, char *buf, size_t size);

/* Decimal unsigned integer in [min, max]; -EINVAL for junk, -ERANGE outside. */
int qv_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret);

/* Case-sensitive exact-match lookup of s in a NULL-terminated list;
 * returns the index or -EINVAL. */
int qv_string_index(const char *const *list, const char *s);
/* Entries of a NULL-terminated string list; 0 for NULL. */
size_t qv_strv_len(char *const *v);

/* qsort() for arrays that may be empty: qsort(NULL, 0, ...) is undefined
 * behaviour (its base must be valid), and UBSan says so. */
static inline void qv_qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    if (n > 1)
        qsort(base, n, size, cmp);
}
/* Frees the strings and the list; accepts NULL. */
void qv_strv_free(char **v);
static inline void qv_strv_freep(char ***v) {
    qv_strv_free(*v);
}

/* CPU numbers are below this: the kernel's largest NR_CPUS. */
#define QV_CPU_MAX 8192

/* CPU lists as the kernel writes them (sysfs cpulist, Cpus_allowed_list) and
 * as `--pin` takes them: "0-3,8,10-11".  Items are N or N-M with N <= M,
 * separated by single commas; no spaces, signs, newline or empty items.
 * Overlapping items are merged, as the kernel merges them.  The empty string
 * is -EINVAL (a CPU-less NUMA node's empty cpulist is the caller's case).
 * *ret holds the CPUs sorted and without duplicates (caller frees), *ret_n
 * their count (>= 1).  -EINVAL for junk, -ERANGE for a CPU >= QV_CPU_MAX. */
int qv_parse_cpulist(const char *s, unsigned **ret, size_t *ret_n);
/* The inverse for a sorted list without duplicates: ranges folded,
 * "" for none.  -ENOBUFS when buf is too small (buf then holds ""). */
int qv_format_cpulist(const unsigned *cpus, size_t n, char *buf, size_t size);

/* Monotonic clock in milliseconds / nanoseconds. */
uint64_t qv_now_ms(void);
uint64_t qv_now_ns(void);

/* Approximate size for tables: "812B", "193.4M", "20.0G". */
void qv_format_size_human(uint64_t bytes, char *buf, size_t size);
