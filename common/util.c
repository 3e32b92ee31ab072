#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool qv_has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && memcmp(s + a - b, suffix, b) == 0;
}

bool qv_name_valid(const char *name) {
    if (!name || !*name)
        return false;
    size_t n = strlen(name);
    if (n > QV_NAME_MAX)
        return false;
    if (!(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int qv_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret) {
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    uint64_t v = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return -ERANGE;
    *ret = v;
    return 0;
}

/* Splits "123abc" into its number and its suffix. */
static int split_number(const char *s, uint64_t *num, const char **suffix) {
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
        s++;
    }
    *num = v;
    *suffix = s;
    return 0;
}

static const struct {
    const char *suffix;
    unsigned shift;
} size_units[] = {
    {"B", 0},   {"K", 10},  {"KB", 10}, {"KiB", 10}, {"M", 20},  {"MB", 20}, {"MiB", 20},
    {"G", 30},  {"GB", 30}, {"GiB", 30}, {"T", 40},  {"TB", 40}, {"TiB", 40},
};

int qv_parse_size(const char *s, uint64_t *ret) {
    uint64_t v;
    const char *suffix;
    int r = split_number(s, &v, &suffix);
    if (r < 0)
        return r;
    if (!*suffix) {
        if (v != 0)
            return -EINVAL; /* a bare number is ambiguous: demand a unit */
        *ret = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
        if (strcmp(size_units[i].suffix, suffix) != 0)
            continue;
        unsigned sh = size_units[i].shift;
        if (sh && v > (UINT64_MAX >> sh))
            return -ERANGE;
        *ret = v << sh;
        return 0;
    }
    return -EINVAL;
}

void qv_format_size(uint64_t bytes, char *buf, size_t size) {
    static const char units[] = "KMGT";
    int u = -1;
    uint64_t v = bytes;
    while (v && (v % 1024) == 0 && u < 3) {
        v /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, size, "%lluB", (unsigned long long)v);
    else
        snprintf(buf, size, "%llu%c", (unsigned long long)v, units[u]);
}

int qv_parse_duration_ms(const char *s, uint64_t *ret) {
    uint64_t v;
    const char *suffix;
    int r = split_number(s, &v, &suffix);
    if (r < 0)
        return r;
    uint64_t mul;
    if (!*suffix || strcmp(suffix, "s") == 0)
        mul = 1000;
    else if (strcmp(suffix, "ms") == 0)
        mul = 1;
    else if (strcmp(suffix, "m") == 0 || strcmp(suffix, "min") == 0)
        mul = 60 * 1000;
    else if (strcmp(suffix, "h") == 0)
        mul = 3600 * 1000;
    else
        return -EINVAL;
    if (v > UINT64_MAX / mul)
        return -ERANGE;
    *ret = v * mul;
    return 0;
}

void qv_format_duration_ms(uint64_t ms, char *buf, size_t size) {
    if (ms % 1000)
        snprintf(buf, size, "%llums", (unsigned long long)ms);
    else
        snprintf(buf, size, "%llus", (unsigned long long)(ms / 1000));
}

int qv_string_index(const char *const *list, const char *s) {
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return i;
    return -EINVAL;
}

uint64_t qv_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t qv_now_ms(void) {
    return qv_now_ns() / 1000000ull;
}

void qv_format_size_human(uint64_t bytes, char *buf, size_t size) {
    static const char units[] = "KMGTP";
    if (bytes < 1024) {
        snprintf(buf, size, "%lluB", (unsigned long long)bytes);
        return;
    }
    double v = (double)bytes / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, size, "%.1f%c", v, units[u]);
}

void qv_strv_free(char **v) {
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

size_t qv_strv_len(char *const *v) {
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

/* One CPU number of a list: digits only, below QV_CPU_MAX. */
static int cpu_number(const char **p, unsigned *ret) {
    const char *s = *p;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long v = 0;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (unsigned long)(*s - '0');
        if (v >= QV_CPU_MAX)
            return -ERANGE;
        s++;
    }
    *ret = (unsigned)v;
    *p = s;
    return 0;
}

int qv_parse_cpulist(const char *s, unsigned **ret, size_t *ret_n) {
    if (!s || !*s)
        return -EINVAL;
    unsigned char bits[QV_CPU_MAX / 8] = {0};
    size_t n = 0;
    const char *p = s;
    for (;;) {
        unsigned lo, hi;
        int r = cpu_number(&p, &lo);
        if (r < 0)
            return r;
        hi = lo;
        if (*p == '-') {
            p++;
            r = cpu_number(&p, &hi);
            if (r < 0)
                return r;
            if (hi < lo)
                return -EINVAL;
        }
        for (unsigned c = lo; c <= hi; c++) {
            if (!(bits[c / 8] & (1u << (c % 8))))
                n++;
            bits[c / 8] |= (unsigned char)(1u << (c % 8));
        }
        if (!*p)
            break;
        if (*p != ',')
            return -EINVAL;
        p++; /* an empty item after it fails in cpu_number() */
    }
    unsigned *cpus = malloc(n * sizeof *cpus);
    if (!cpus)
        return -ENOMEM;
    size_t i = 0;
    for (unsigned c = 0; c < QV_CPU_MAX; c++)
        if (bits[c / 8] & (1u << (c % 8)))
            cpus[i++] = c;
    *ret = cpus;
    *ret_n = n;
    return 0;
}

int qv_format_cpulist(const unsigned *cpus, size_t n, char *buf, size_t size) {
    if (!size)
        return -ENOBUFS;
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && cpus[j + 1] == cpus[j] + 1)
            j++;
        int w = j == i ? snprintf(buf + off, size - off, "%s%u", i ? "," : "", cpus[i])
                       : snprintf(buf + off, size - off, "%s%u-%u", i ? "," : "", cpus[i], cpus[j]);
        if (w < 0 || (size_t)w >= size - off) {
            buf[0] = '\0';
            return -ENOBUFS;
        }
        off += (size_t)w;
        i = j + 1;
    }
    return 0;
}
