/* A fast path for the one large reply the supervisor asks for often:
 * query-blockstats, about 3 KB per VM and scrape, which jansson takes
 * ~50 us to turn into objects (most of a metrics scrape's CPU with 50 VMs).
 *
 * These scanners read the line in place, allocate nothing, and accept only
 * the plain shape QEMU writes: printable ASCII, strings without escapes,
 * integers without sign, fraction or exponent that fit in 63 bits, nesting
 * at most SCAN_DEPTH deep, every key once where it matters.  Anything else,
 * valid JSON or not, makes them return -1 and the line goes the ordinary
 * way (jansson, then the typed helper's checks), which decides what it is.
 * So where a scanner answers, it answers what the ordinary way would have:
 * test-qmp-fake checks both ways against each other on real and mutated
 * replies. */
#include "qmp-internal.h"

#include <stdbool.h>
#include <string.h>

#define SCAN_DEPTH 32
#define SCAN_MAX_DIGITS 18 /* below 2^63: what json_int_t holds */

typedef struct scan {
    const char *p, *end;
} scan;

static void ws(scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool lit(scan *s, char c) {
    ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return true;
    }
    return false;
}

/* A string of printable ASCII without escapes: its span. */
static bool string(scan *s, const char **ret, size_t *ret_len) {
    if (!lit(s, '"'))
        return false;
    const char *b = s->p;
    while (s->p < s->end && *s->p != '"') {
        unsigned char c = (unsigned char)*s->p;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return false;
        s->p++;
    }
    if (s->p >= s->end)
        return false;
    *ret = b;
    *ret_len = (size_t)(s->p - b);
    s->p++;
    return true;
}

static bool is_key(const char *k, size_t n, const char *want) {
    return strlen(want) == n && memcmp(k, want, n) == 0;
}

/* An unsigned integer as JSON writes it (no leading zero). */
static bool uint_(scan *s, uint64_t *ret) {
    ws(s);
    const char *b = s->p;
    uint64_t v = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        v = v * 10 + (uint64_t)(*s->p++ - '0');
    size_t n = (size_t)(s->p - b);
    if (n == 0 || n > SCAN_MAX_DIGITS || (n > 1 && *b == '0'))
        return false;
    /* a fraction or an exponent makes it a real: not ours */
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return false;
    *ret = v;
    return true;
}

static bool digits(scan *s) {
    const char *b = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > b;
}

/* Any number of the JSON grammar whose integer part jansson can hold. */
static bool number(scan *s) {
    if (s->p < s->end && *s->p == '-')
        s->p++;
    const char *b = s->p;
    if (!digits(s) || (s->p - b > 1 && *b == '0') || s->p - b > SCAN_MAX_DIGITS)
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!digits(s))
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        const char *e = s->p;
        if (!digits(s) || s->p - e > 2) /* no overflow to infinity, which jansson refuses */
            return false;
    }
    return true;
}

static bool word(scan *s, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool value(scan *s, int depth);

/* The members of an object whose '{' was read, or the items of an array
 * whose '[' was read, skipped. */
static bool skip_container(scan *s, char close, int depth) {
    if (depth > SCAN_DEPTH)
        return false;
    if (lit(s, close))
        return true;
    do {
        if (close == '}') {
            const char *k;
            size_t kn;
            if (!string(s, &k, &kn) || !lit(s, ':'))
                return false;
        }
        if (!value(s, depth + 1))
            return false;
    } while (lit(s, ','));
    return lit(s, close);
}

static bool value(scan *s, int depth) {
    ws(s);
    if (s->p >= s->end)
        return false;
    const char *k;
    size_t n;
    switch (*s->p) {
    case '{':
        s->p++;
        return skip_container(s, '}', depth);
    case '[':
        s->p++;
        return skip_container(s, ']', depth);
    case '"':
        return string(s, &k, &n);
    case 't':
        return word(s, "true");
    case 'f':
        return word(s, "false");
    case 'n':
        return word(s, "null");
    default:
        return number(s);
    }
}

static bool at_end(scan *s) {
    ws(s);
    return s->p == s->end;
}

int qmp__scan_reply(const char *line, size_t len, const char **ret_value, size_t *ret_value_len, uint64_t *ret_id) {
    scan s = {line, line + len};
    const char *val = NULL, *val_end = NULL;
    uint64_t id = 0;
    bool have_id = false;
    if (!lit(&s, '{'))
        return -1;
    do {
        const char *k;
        size_t kn;
        if (!string(&s, &k, &kn) || !lit(&s, ':'))
            return -1;
        if (is_key(k, kn, "return") && !val) {
            ws(&s);
            val = s.p;
            if (!value(&s, 1))
                return -1;
            val_end = s.p;
        } else if (is_key(k, kn, "id") && !have_id) {
            if (!uint_(&s, &id))
                return -1;
            have_id = true;
        } else {
            return -1; /* another key, or one of them twice */
        }
    } while (lit(&s, ','));
    if (!lit(&s, '}') || !at_end(&s) || !val || !have_id)
        return -1;
    *ret_value = val;
    *ret_value_len = (size_t)(val_end - val);
    *ret_id = id;
    return 0;
}

/* One element of query-blockstats' array, whose '{' was read. */
typedef struct element {
    const char *name[3]; /* node-name, device, qdev: spans */
    size_t name_len[3];
    bool have_stats;
    uint64_t counter[4]; /* rd_bytes, wr_bytes, rd_operations, wr_operations */
} element;

static const char *const name_keys[3] = {"node-name", "device", "qdev"};
static const char *const counter_keys[4] = {"rd_bytes", "wr_bytes", "rd_operations", "wr_operations"};

static bool stats_object(scan *s, element *e) {
    if (!lit(s, '{'))
        return false;
    bool seen[4] = {false};
    if (lit(s, '}'))
        return false; /* no counters */
    do {
        const char *k;
        size_t kn;
        if (!string(s, &k, &kn) || !lit(s, ':'))
            return false;
        size_t c = 0;
        while (c < 4 && !is_key(k, kn, counter_keys[c]))
            c++;
        if (c == 4) {
            if (!value(s, 3))
                return false;
            continue;
        }
        if (seen[c] || !uint_(s, &e->counter[c]))
            return false;
        seen[c] = true;
    } while (lit(s, ','));
    return lit(s, '}') && seen[0] && seen[1] && seen[2] && seen[3];
}

static bool element_object(scan *s, element *e) {
    memset(e, 0, sizeof *e);
    bool seen_name[3] = {false};
    if (!lit(s, '{'))
        return false;
    if (lit(s, '}'))
        return false;
    do {
        const char *k;
        size_t kn;
        if (!string(s, &k, &kn) || !lit(s, ':'))
            return false;
        size_t i = 0;
        while (i < 3 && !is_key(k, kn, name_keys[i]))
            i++;
        if (i < 3) {
            if (seen_name[i] || !string(s, &e->name[i], &e->name_len[i]))
                return false;
            seen_name[i] = true;
        } else if (is_key(k, kn, "stats")) {
            if (e->have_stats || !stats_object(s, e))
                return false;
            e->have_stats = true;
        } else if (!value(s, 2)) {
            return false;
        }
    } while (lit(s, ','));
    return lit(s, '}') && e->have_stats;
}

/* The ordinary way's choice (qmp.c block_name): the first of node-name,
 * device, qdev that is not empty; it must be a usable name. */
static bool element_name(const element *e, char *buf) {
    for (size_t i = 0; i < 3; i++) {
        if (!e->name[i] || e->name_len[i] == 0)
            continue;
        if (e->name_len[i] > QMP_BLOCK_NAME_MAX || memchr(e->name[i], ' ', e->name_len[i]) ||
            memchr(e->name[i], '"', e->name_len[i]))
            return false;
        memcpy(buf, e->name[i], e->name_len[i]);
        buf[e->name_len[i]] = '\0';
        return true;
    }
    return false;
}

int qmp__scan_blockstats(const char *str, size_t len, qmp_blockstats *v, char (*names)[QMP_BLOCK_NAME_MAX + 1],
                         size_t *ret_n) {
    scan s = {str, str + len};
    size_t n = 0;
    if (!lit(&s, '['))
        return -1;
    if (!lit(&s, ']')) {
        do {
            element e;
            if (n == QMP_BLOCKSTATS_MAX || !element_object(&s, &e) || !element_name(&e, names[n]))
                return -1;
            v[n] = (qmp_blockstats){.device = names[n], .rd_bytes = e.counter[0], .wr_bytes = e.counter[1],
                                    .rd_operations = e.counter[2], .wr_operations = e.counter[3]};
            n++;
        } while (lit(&s, ','));
        if (!lit(&s, ']'))
            return -1;
    }
    if (!at_end(&s))
        return -1;
    *ret_n = n;
    return 0;
}
