/* Slurm's gres.conf and slurm.conf as far as qvisor reads them, and the GPUs
 * it offers to Slurm (slurmconf.h). */
#include "slurm/slurmconf.h"

#include "cleanup.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- string vectors ---------------------------------------------------- */

typedef struct strv {
    char **v;
    size_t n, cap;
} strv;

/* Adds owned (taken, also on failure); NULL only with null_ok (a GPU
 * without a File= path: the vector is then counted, not NULL-ended). */
static int strv_push(strv *s, char *owned, bool null_ok) {
    if (!owned && !null_ok)
        return -ENOMEM;
    if (s->n >= SLURM_EXPAND_MAX) {
        free(owned);
        return -E2BIG;
    }
    if (s->n + 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        char **v = realloc(s->v, cap * sizeof *v);
        if (!v) {
            free(owned);
            return -ENOMEM;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = owned;
    s->v[s->n] = NULL;
    return 0;
}

static int strv_add(strv *s, char *owned) {
    return strv_push(s, owned, false);
}

static void strv_clear(strv *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    *s = (strv){0};
}

void slurm_strv_free(char **v) {
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* ---- bracket expressions ----------------------------------------------- */

static bool all_digits(const char *s, size_t n) {
    if (n == 0 || n > 9)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Expands one name (no top-level comma) into out: the first bracket's
 * ranges, each with the rest of the name expanded in turn. */
static int expand_name(const char *name, size_t len, strv *out) {
    const char *open = memchr(name, '[', len);
    if (!open) {
        if (memchr(name, ']', len))
            return -EINVAL;
        return len ? strv_add(out, strndup(name, len)) : -EINVAL;
    }
    const char *close = memchr(open, ']', len - (size_t)(open - name));
    if (!close || memchr(open + 1, '[', (size_t)(close - open - 1)) || close == open + 1)
        return -EINVAL;
    size_t pre = (size_t)(open - name), post = len - (size_t)(close + 1 - name);
    for (const char *p = open + 1; p < close;) {
        const char *comma = memchr(p, ',', (size_t)(close - p));
        const char *end = comma ? comma : close;
        const char *dash = memchr(p, '-', (size_t)(end - p));
        const char *lo = p, *hi = dash ? dash + 1 : p;
        size_t lo_n = (size_t)((dash ? dash : end) - lo), hi_n = (size_t)(end - hi);
        if (!all_digits(lo, lo_n) || !all_digits(hi, hi_n))
            return -EINVAL;
        unsigned long a = strtoul(lo, NULL, 10), b = strtoul(hi, NULL, 10);
        if (b < a)
            return -EINVAL;
        if (b - a >= SLURM_EXPAND_MAX)
            return -E2BIG;
        int width = lo_n > 1 && lo[0] == '0' ? (int)lo_n : 0;
        for (unsigned long k = a; k <= b; k++) {
            char num[16];
            int nl = snprintf(num, sizeof num, "%0*lu", width, k);
            size_t total = pre + (size_t)nl + post;
            _cleanup_free_ char *s = malloc(total + 1);
            if (!s)
                return -ENOMEM;
            memcpy(s, name, pre);
            memcpy(s + pre, num, (size_t)nl);
            memcpy(s + pre + (size_t)nl, close + 1, post);
            s[total] = '\0';
            int r = expand_name(s, total, out);
            if (r < 0)
                return r;
        }
        p = comma ? comma + 1 : close;
    }
    return 0;
}

int slurm_hostlist_expand(const char *expr, char ***ret, size_t *ret_n) {
    strv out = {0};
    int r = 0, depth = 0;
    const char *start = expr;
    for (const char *p = expr;; p++) {
        if (*p == '[')
            depth++;
        else if (*p == ']')
            depth--;
        if ((*p == ',' && depth == 0) || *p == '\0') {
            if (depth != 0 || (r = expand_name(start, (size_t)(p - start), &out)) < 0) {
                r = r < 0 ? r : -EINVAL;
                break;
            }
            if (*p == '\0')
                break;
            start = p + 1;
        }
    }
    if (r == 0 && out.n == 0)
        r = -EINVAL;
    if (r < 0) {
        strv_clear(&out);
        return r;
    }
    *ret = out.v;
    if (ret_n)
        *ret_n = out.n;
    return 0;
}

bool slurm_hostlist_has(const char *expr, const char *host) {
    char **names = NULL;
    if (slurm_hostlist_expand(expr, &names, NULL) < 0)
        return false;
    bool has = false;
    for (size_t i = 0; names[i] && !has; i++)
        has = strcmp(names[i], host) == 0;
    slurm_strv_free(names);
    return has;
}

/* ---- lines of KEY=VALUE ------------------------------------------------ */

enum { LINE_MAX_KEYS = 32 };

typedef struct conf_line {
    unsigned no; /* 1-based, the first physical line */
    size_t n;
    struct {
        char key[32];
        char *value; /* points into the line buffer */
    } kv[LINE_MAX_KEYS];
} conf_line;

/* The next logical line of text (comments removed, `\` continuations
 * joined: slurm.conf has them) into buf; its KEY=VALUE words into line.
 * Returns 1 for a line, 0 at the end, -EINVAL for a word that is not
 * KEY=VALUE or too many words. */
static int next_line(const char **text, unsigned *line_no, char *buf, size_t size, conf_line *line,
                     bool continuations) {
    for (;;) {
        if (!**text)
            return 0;
        size_t used = 0;
        line->no = *line_no + 1;
        bool more = true;
        while (more && **text) {
            const char *nl = strchr(*text, '\n');
            size_t len = nl ? (size_t)(nl - *text) : strlen(*text);
            const char *hash = memchr(*text, '#', len);
            size_t keep = hash ? (size_t)(hash - *text) : len;
            while (keep && isspace((unsigned char)(*text)[keep - 1]))
                keep--;
            more = continuations && !hash && keep && (*text)[keep - 1] == '\\';
            if (more)
                keep--;
            if (used + keep + 2 > size)
                return -E2BIG;
            memcpy(buf + used, *text, keep);
            used += keep;
            buf[used++] = ' ';
            *text += len + (nl ? 1 : 0);
            (*line_no)++;
        }
        buf[used] = '\0';
        line->n = 0;
        for (char *save = NULL, *w = strtok_r(buf, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
            char *eq = strchr(w, '=');
            if (!eq && line->n == 0 && strcasecmp(w, "include") == 0) {
                /* "Include FILE": kept as Include=FILE */
                snprintf(line->kv[0].key, sizeof line->kv[0].key, "Include");
                char *file = strtok_r(NULL, " \t\r", &save);
                line->kv[0].value = file ? file : w + strlen(w); /* "" */
                line->n = 1;
                break;
            }
            if (!eq || eq == w || (size_t)(eq - w) >= sizeof line->kv[0].key || line->n >= LINE_MAX_KEYS)
                return -EINVAL;
            memcpy(line->kv[line->n].key, w, (size_t)(eq - w));
            line->kv[line->n].key[eq - w] = '\0';
            line->kv[line->n].value = eq + 1;
            line->n++;
        }
        if (line->n)
            return 1;
    }
}

static const char *get(const conf_line *l, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (strcasecmp(l->kv[i].key, key) == 0)
            return l->kv[i].value;
    return NULL;
}

enum { CONF_LINE_MAX = 65536 };

/* ---- gres.conf --------------------------------------------------------- */

void slurm_gres_files_free(char **files, size_t n) {
    for (size_t i = 0; files && i < n; i++)
        free(files[i]);
    free(files);
}

/* Adds a line's GPUs to out (paths, or count NULLs). */
static int gres_line_gpus(const conf_line *l, strv *out, qv_error *err) {
    const char *file = get(l, "File") ?: get(l, "Files");
    if (file) {
        char **paths = NULL;
        size_t n = 0;
        int r = slurm_hostlist_expand(file, &paths, &n);
        if (r < 0)
            return qv_error_set(err, -r, "gres.conf line %u: File=%s: %s", l->no, file,
                                r == -E2BIG ? "too many files" : "not a valid file name or range");
        for (size_t i = 0; i < n && r == 0; i++)
            r = strv_add(out, TAKE_PTR(paths[i]));
        slurm_strv_free(paths);
        return r < 0 ? qv_error_set(err, -r, "gres.conf line %u: %s", l->no, strerror(-r)) : 0;
    }
    const char *count = get(l, "Count");
    char *end = NULL;
    unsigned long n = count ? strtoul(count, &end, 10) : 1;
    if (count && (end == count || *end || n == 0 || n > SLURM_EXPAND_MAX))
        return qv_error_set(err, EINVAL, "gres.conf line %u: Count=%s is not a GPU count", l->no, count);
    for (unsigned long i = 0; i < n; i++) {
        int r = strv_push(out, NULL, true);
        if (r < 0)
            return qv_error_set(err, -r, "gres.conf line %u: %s", l->no,
                                r == -E2BIG ? "too many GPUs" : strerror(-r));
    }
    return 0;
}

int slurm_gres_conf_gpus(const char *text, const char *node, char ***ret, size_t *ret_n, qv_error *err) {
    _cleanup_free_ char *buf = malloc(CONF_LINE_MAX);
    if (!buf)
        return qv_error_set(err, ENOMEM, "out of memory");
    strv out = {0};
    unsigned no = 0;
    conf_line l;
    int r;
    while ((r = next_line(&text, &no, buf, CONF_LINE_MAX, &l, false)) > 0) {
        const char *name = get(&l, "Name"), *nodes = get(&l, "NodeName");
        if (!name || strcasecmp(name, "gpu") != 0)
            continue; /* AutoDetect=, other resources */
        if (nodes && !slurm_hostlist_has(nodes, node))
            continue;
        if ((r = gres_line_gpus(&l, &out, err)) < 0) {
            slurm_gres_files_free(out.v, out.n);
            return r;
        }
    }
    if (r < 0) {
        slurm_gres_files_free(out.v, out.n);
        return qv_error_set(err, EINVAL, "gres.conf line %u: %s", no,
                            r == -E2BIG ? "line too long" : "a word that is not KEY=VALUE");
    }
    *ret = out.v;
    *ret_n = out.n;
    return 0;
}

/* ---- slurm.conf -------------------------------------------------------- */

/* GPUs in a Gres= value: "gpu:2,gpu:t4:1(S:0),mps:100" -> 3. */
static int gres_gpu_count(const char *value, long *ret) {
    long total = 0;
    _cleanup_free_ char *copy = strdup(value);
    if (!copy)
        return -ENOMEM;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *paren = strchr(item, '(');
        if (paren)
            *paren = '\0';
        char *fields[3] = {0};
        size_t nf = 0;
        for (char *s2 = NULL, *f = strtok_r(item, ":", &s2); f && nf < 3; f = strtok_r(NULL, ":", &s2))
            fields[nf++] = f;
        if (nf == 0 || strcasecmp(fields[0], "gpu") != 0)
            continue;
        const char *count = nf == 1 ? "1" : fields[nf - 1];
        if (nf == 2 && !isdigit((unsigned char)count[0]))
            count = "1"; /* gpu:TYPE */
        char *end = NULL;
        long n = strtol(count, &end, 10);
        if (end == count || *end || n < 0 || n > SLURM_EXPAND_MAX)
            return -EINVAL;
        total += n;
    }
    *ret = total;
    return 0;
}

int slurm_conf_node_gpus(const char *text, const char *node, long *ret, bool *ret_include, qv_error *err) {
    _cleanup_free_ char *buf = malloc(CONF_LINE_MAX);
    _cleanup_free_ char *dflt = NULL;
    if (!buf)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret_include = false;
    unsigned no = 0;
    conf_line l;
    int r;
    const char *t = text;
    while ((r = next_line(&t, &no, buf, CONF_LINE_MAX, &l, true)) >= 0) {
        if (r == 0)
            return qv_error_set(err, ENOENT, "slurm.conf has no NodeName line for %s", node);
        if (strncasecmp(l.kv[0].key, "include", 7) == 0) {
            *ret_include = true;
            continue;
        }
        if (strcasecmp(l.kv[0].key, "NodeName") != 0)
            continue;
        const char *gres = get(&l, "Gres");
        if (strcasecmp(l.kv[0].value, "DEFAULT") == 0) {
            free(dflt);
            dflt = gres ? strdup(gres) : NULL;
            continue;
        }
        if (!slurm_hostlist_has(l.kv[0].value, node))
            continue;
        gres = gres ?: dflt;
        long n = 0;
        if (gres && gres_gpu_count(gres, &n) < 0)
            return qv_error_set(err, EINVAL, "slurm.conf line %u: Gres=%s: not a count of GPUs", l.no, gres);
        *ret = n;
        return 0;
    }
    return qv_error_set(err, EINVAL, "slurm.conf line %u: %s", no,
                        r == -E2BIG ? "line too long" : "a word that is not KEY=VALUE");
}

/* ---- a job's allocation ------------------------------------------------ */

/* The largest number of a range: CPU ids and GPU indexes are far below
 * it, and no range ends at ULONG_MAX, where k <= b would never end. */
#define RANGE_NUMBER_MAX (1ul << 24)

/* One decimal number of a range at s (digits only, no sign or space, at
 * most RANGE_NUMBER_MAX); *e after it.  -EINVAL when there is none. */
static int range_number(const char *s, const char *end, unsigned long *ret, const char **e) {
    if (s >= end || !isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long v = 0;
    for (; s < end && isdigit((unsigned char)*s); s++) {
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > RANGE_NUMBER_MAX)
            return -E2BIG;
    }
    *ret = v;
    *e = s;
    return 0;
}

/* "0-3,8" -> each number through fn; -EINVAL for anything else, -E2BIG
 * for a number or a range too large. */
static int parse_ranges(const char *s, size_t len, int (*fn)(unsigned long, void *), void *userdata) {
    const char *end = s + len;
    while (s < end) {
        const char *e = NULL;
        unsigned long a, b;
        int r = range_number(s, end, &a, &e);
        if (r < 0)
            return r;
        b = a;
        if (e < end && *e == '-') {
            if ((r = range_number(e + 1, end, &b, &e)) < 0)
                return r;
            if (b < a)
                return -EINVAL;
        }
        if (b - a >= SLURM_EXPAND_MAX)
            return -E2BIG;
        for (unsigned long k = a; k <= b; k++)
            if ((r = fn(k, userdata)) < 0)
                return r;
        if (e < end && *e != ',')
            return -EINVAL;
        s = e + (e < end);
    }
    return 0;
}

static int count_cpu(unsigned long k, void *userdata) {
    (void)k;
    ((slurm_alloc *)userdata)->cpus++;
    return 0;
}

static int add_gpu(unsigned long k, void *userdata) {
    slurm_alloc *a = userdata;
    if (a->n_gpus >= SLURM_ALLOC_GPUS_MAX || k > 4096)
        return -E2BIG;
    a->gpus[a->n_gpus++] = (unsigned)k;
    return 0;
}

/* GRES=gpu:2(IDX:0-1),gpu:t4:1(IDX:3): the indexes of every gpu item. */
static int parse_gres_idx(const char *v, slurm_alloc *a) {
    for (const char *p = v; (p = strstr(p, "gpu")) != NULL;) {
        if (p != v && p[-1] != ',') {
            p += 3;
            continue;
        }
        const char *idx = strstr(p, "(IDX:");
        const char *next = strchr(p, ')');
        if (!idx || !next || idx > next)
            return -EINVAL;
        idx += 5;
        int r = parse_ranges(idx, (size_t)(next - idx), add_gpu, a);
        if (r < 0)
            return r;
        p = next + 1;
    }
    return 0;
}

int slurm_job_alloc(const char *text, const char *node, slurm_alloc *ret, qv_error *err) {
    *ret = (slurm_alloc){0};
    const char *uid = strstr(text, "UserId=");
    const char *paren = uid ? strchr(uid, '(') : NULL, *word_end = uid ? strpbrk(uid, " \n") : NULL;
    if (paren && (!word_end || paren < word_end)) {
        char *e = NULL;
        unsigned long u = strtoul(paren + 1, &e, 10);
        if (e != paren + 1 && *e == ')' && u < 0x7fffffffUL) {
            ret->uid = (unsigned)u;
            ret->has_uid = true;
        }
    }
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        _cleanup_free_ char *l = strndup(line, len);
        line = nl ? nl + 1 : NULL;
        if (!l)
            return qv_error_set(err, ENOMEM, "out of memory");
        char *s = l + strspn(l, " \t");
        if (strncmp(s, "Nodes=", 6) != 0 || s == l)
            continue; /* the detail lines are indented; NodeList= is not one */
        bool ours = false, seen_cpus = false;
        slurm_alloc a = {.uid = ret->uid, .has_uid = ret->has_uid};
        int r = 0;
        for (char *save = NULL, *w = strtok_r(s, " \t", &save); w && r == 0; w = strtok_r(NULL, " \t", &save)) {
            if (strncmp(w, "Nodes=", 6) == 0)
                ours = slurm_hostlist_has(w + 6, node);
            else if (strncmp(w, "CPU_IDs=", 8) == 0) {
                r = parse_ranges(w + 8, strlen(w + 8), count_cpu, &a);
                seen_cpus = true;
            } else if (strncmp(w, "Mem=", 4) == 0) {
                char *e = NULL;
                a.mem_mib = strtoull(w + 4, &e, 10);
                r = e == w + 4 || *e ? -EINVAL : 0;
            } else if (strncmp(w, "GRES=", 5) == 0)
                r = parse_gres_idx(w + 5, &a);
        }
        if (!ours)
            continue;
        if (r < 0 || !seen_cpus)
            return qv_error_set(err, EINVAL, "scontrol's allocation line for %s cannot be read: %s", node,
                                r == -E2BIG ? "too many CPUs or GPUs" : "bad CPU_IDs, Mem or GRES");
        *ret = a;
        return 0;
    }
    return qv_error_set(err, ENOENT, "the job has no allocation on %s (not running there?)", node);
}

int slurm_config_kill_wait(const char *text, unsigned *ret) {
    for (const char *next = text; next;) {
        const char *line = next;
        next = strchr(line, '\n');
        next = next ? next + 1 : NULL;
        if (strncmp(line, "KillWait", 8) != 0 || (line[8] != ' ' && line[8] != '='))
            continue;
        const char *v = line + 8 + strspn(line + 8, " ");
        if (*v++ != '=')
            continue;
        v += strspn(v, " ");
        char *e = NULL;
        errno = 0;
        unsigned long s = strtoul(v, &e, 10);
        if (e == v || errno || s > 65533 || (*e && *e != ' ' && *e != '\n'))
            return -EINVAL;
        *ret = (unsigned)s;
        return 0;
    }
    return -ENOENT;
}

/* ---- the GPUs offered to Slurm ----------------------------------------- */

size_t slurm_offered_gpus(const vfio_gpu_list *l, const vfio_gpu **ret, char (*why)[128]) {
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++) {
        const vfio_gpu *g = &l->gpus[i];
        if (why)
            why[i][0] = '\0';
        if (g->dev.iommu_group < 0) {
            if (why)
                snprintf(why[i], sizeof why[i], "no IOMMU group: it cannot be passed through");
            continue;
        }
        const vfio_gpu *other = NULL;
        for (size_t k = 0; k < l->n && !other; k++)
            if (k != i && l->gpus[k].dev.iommu_group == g->dev.iommu_group)
                other = &l->gpus[k];
        if (other) {
            if (why)
                snprintf(why[i], sizeof why[i], "shares IOMMU group %d with GPU %s: they can only go to one VM "
                         "together", g->dev.iommu_group, other->dev.bdf);
            continue;
        }
        /* a member the host uses (a NIC, a USB controller: not a function
         * of the GPU's slot, not a bridge) goes to vfio-pci only with
         * take-group, which a job's VM does not ask for: it would take the
         * device from the host */
        const vfio_pci_dev *host = NULL;
        for (size_t k = 0; k < g->n_group && !host; k++) {
            const vfio_pci_dev *m = &g->group[k];
            if (strcmp(m->bdf, g->dev.bdf) == 0 || m->bridge || vfio_bdf_same_slot(m->bdf, g->dev.bdf) ||
                !m->driver[0] || strcmp(m->driver, "vfio-pci") == 0 || strcmp(m->driver, "pci-stub") == 0)
                continue;
            host = m;
        }
        if (host) {
            if (why)
                snprintf(why[i], sizeof why[i], "IOMMU group %d holds host device %s (%s, %s): only take-group "
                         "could pass it through", g->dev.iommu_group, host->bdf, vfio_class_name(host->class_code),
                         host->driver);
            continue;
        }
        ret[n++] = g;
    }
    return n;
}

int slurm_gpu_file(const vfio_gpu *g, const char *dir, char *buf, size_t len) {
    int n = snprintf(buf, len, "%s/%d", dir && dir[0] ? dir : "/dev/vfio", g->dev.iommu_group);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}
