/* The byte-level pre-check in front of libyaml: see yamlguard.h.
 *
 * It follows just enough of YAML to know where a '[' or '{' opens a flow
 * collection: quoted scalars ('' and "" with their escapes), comments (a
 * '#' after white space), block scalars (| and > with the lines indented
 * under them) and plain scalars that continue on the next line.  Block
 * structure is libyaml's own stack of indentation columns: a sequence opens
 * at the column of its "- ", a mapping at the column of its first key (a
 * "key: " on one line), and a line less indented closes those deeper; it
 * decides where a plain scalar goes on and where a block scalar ends.
 * Every step looks at one byte and moves on, so
 * the whole pass is linear in the input. */
#include "yamlguard.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef enum { M_NORMAL, M_SQUOTE, M_DQUOTE, M_BLOCK } guard_mode;

typedef struct guard {
    const unsigned char *p;
    size_t len;
    size_t line;     /* 1-based */
    size_t ls;       /* offset where the current line starts */
    guard_mode mode;
    int flow;        /* open [ ] / { } collections */
    int stack[QV_YAML_MAX_DEPTH];
    int n;           /* block levels on the stack */
    bool tok_start;  /* a node may start here: a quote opens a quoted scalar */
    bool in_plain;   /* inside a plain scalar, which may continue on the next line */
    int key_col;     /* column where the last node on this line started (-1: none) */
    int bs_parent;   /* block scalar: indentation of its parent */
    int bs_indent;   /* block scalar: indentation of its text; 0 until the first line */
    int bs_blank;    /* block scalar: most spaces on a blank line before its first line */
    qv_yaml_guard_error *ret;
} guard;

static int fail(guard *g, int code, size_t off, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int fail(guard *g, int code, size_t off, const char *fmt, ...) {
    if (g->ret) {
        g->ret->line = g->line;
        g->ret->column = off - g->ls + 1;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->ret->why, sizeof g->ret->why, fmt, ap);
        va_end(ap);
    }
    return -code;
}

static bool is_ws(int c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_flow_ind(int c) {
    return c == ',' || c == '[' || c == ']' || c == '{' || c == '}';
}

static int push_level(guard *g, int col, size_t off) {
    if (g->n > 0 && g->stack[g->n - 1] >= col)
        return 0;
    if (g->n == QV_YAML_MAX_DEPTH)
        return fail(g, ELOOP, off, "indented more than %d levels deep", QV_YAML_MAX_DEPTH);
    g->stack[g->n++] = col;
    return 0;
}

/* "---" or "..." at column 0 followed by white space or the end of the line */
static bool doc_marker(const guard *g, size_t le) {
    const unsigned char *s = g->p + g->ls;
    if (le - g->ls < 3 || !((s[0] == '-' && s[1] == '-' && s[2] == '-') || (s[0] == '.' && s[1] == '.' && s[2] == '.')))
        return false;
    return le - g->ls == 3 || is_ws(s[3]);
}

/* Scans bytes [k, le) of the current line. */
static int scan(guard *g, size_t k, size_t le) {
    const unsigned char *p = g->p;
    while (k < le) {
        int c = p[k];
        if (g->mode == M_SQUOTE) {
            if (c == '\'') {
                if (k + 1 < le && p[k + 1] == '\'') {
                    k += 2;
                    continue;
                }
                g->mode = M_NORMAL;
                g->tok_start = true; /* libyaml's scanner starts a token right after */
            }
            k++;
            continue;
        }
        if (g->mode == M_DQUOTE) {
            if (c == '\\') {
                k += 2; /* an escaped line break is a continuation: still quoted */
                continue;
            }
            if (c == '"') {
                g->mode = M_NORMAL;
                g->tok_start = true;
            }
            k++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            k++;
            continue;
        }
        int col = (int)(k - g->ls);
        int next = k + 1 < le ? p[k + 1] : '\n';
        /* where a token may start, '#' opens a comment even without a space */
        if (c == '#' && (g->tok_start || k == g->ls || p[k - 1] == ' ' || p[k - 1] == '\t')) {
            g->in_plain = false; /* a comment ends a plain scalar */
            return 0;
        }
        /* in a flow collection libyaml takes any ':' where a token may
         * start for a value indicator */
        if (c == ':' && (is_ws(next) || (g->flow > 0 && (is_flow_ind(next) || g->tok_start)))) {
            if (g->flow == 0) {
                /* a block mapping at the column of its key, or of the ':'
                 * when there is none */
                int kc = g->key_col >= 0 ? g->key_col : col;
                int r = push_level(g, kc, g->ls + (size_t)kc);
                if (r < 0)
                    return r;
                g->key_col = -1;
            }
            g->in_plain = false;
            g->tok_start = true;
            k++;
            continue;
        }
        if (c == ',' && g->flow > 0) {
            g->in_plain = false;
            g->tok_start = true;
            k++;
            continue;
        }
        if (c == '[' || c == '{') {
            /* in a block-context plain scalar these are just text */
            if (g->flow > 0 || g->tok_start) {
                if (g->flow == 0 && g->key_col < 0)
                    g->key_col = col; /* "[a, b]: c" */
                if (++g->flow > QV_YAML_MAX_DEPTH)
                    return fail(g, ELOOP, k, "more than %d nested [ ] / { } collections", QV_YAML_MAX_DEPTH);
                g->in_plain = false;
                g->tok_start = true;
            }
            k++;
            continue;
        }
        if (c == ']' || c == '}') {
            if (g->flow > 0) {
                g->flow--;
                g->in_plain = false;
                g->tok_start = true; /* "[][" is two flow sequences to the scanner */
            }
            k++;
            continue;
        }
        if (!g->tok_start) {
            /* more of a plain scalar (or junk libyaml will refuse): a quote
             * here does not open a quoted scalar */
            g->in_plain = true;
            k++;
            continue;
        }
        if ((c == '-' && is_ws(next)) || (c == '?' && (is_ws(next) || g->flow > 0))) {
            if (g->flow == 0) {
                /* a block sequence (or complex key) at the column of its "- " */
                int r = push_level(g, col, k);
                if (r < 0)
                    return r;
                g->key_col = -1;
            }
            k++;
            continue;
        }
        if (c == '\'' || c == '"') {
            if (g->flow == 0 && g->key_col < 0)
                g->key_col = col;
            g->mode = c == '\'' ? M_SQUOTE : M_DQUOTE;
            g->tok_start = false;
            g->in_plain = false;
            k++;
            continue;
        }
        if ((c == '|' || c == '>') && g->flow == 0) {
            int explicit_indent = 0;
            for (size_t q = k + 1; q < le && q < k + 3; q++)
                if (p[q] >= '1' && p[q] <= '9')
                    explicit_indent = p[q] - '0';
                else if (p[q] != '+' && p[q] != '-')
                    break;
            g->mode = M_BLOCK;
            g->bs_parent = g->n > 0 ? g->stack[g->n - 1] : -1;
            g->bs_indent = explicit_indent ? (g->bs_parent < 0 ? 0 : g->bs_parent) + explicit_indent : 0;
            g->bs_blank = 0;
            g->tok_start = false;
            g->in_plain = false;
            return 0; /* the rest of the header line is indicators and a comment */
        }
        if (c == '&' || c == '*') {
            if (g->flow == 0 && g->key_col < 0)
                g->key_col = col; /* "&a key: v" is a key from the '&' on */
            /* an anchor is followed by its node, an alias is one; their names
             * are [0-9A-Za-z_-] (libyaml), so "*a: [" is a key and a value */
            k++;
            while (k < le && (isalnum(p[k]) || p[k] == '_' || p[k] == '-'))
                k++;
            g->in_plain = false;
            continue;
        }
        if (c == '!') {
            if (g->flow == 0 && g->key_col < 0)
                g->key_col = col;
            /* a tag runs to white space (libyaml wants one after it) */
            while (k < le && !is_ws(p[k]) && !(g->flow > 0 && is_flow_ind(p[k])))
                k++;
            continue;
        }
        /* a plain scalar starts */
        if (g->flow == 0 && g->key_col < 0)
            g->key_col = col;
        g->in_plain = true;
        g->tok_start = false;
        k++;
    }
    return 0;
}

static int line(guard *g, size_t le) {
    const unsigned char *p = g->p;
    size_t j = g->ls;
    while (j < le && p[j] == ' ')
        j++;
    int indent = (int)(j - g->ls);
    bool blank = true;
    for (size_t q = j; q < le; q++)
        if (!is_ws(p[q])) {
            blank = false;
            break;
        }

    if (doc_marker(g, le)) {
        /* ends a block scalar; libyaml refuses one inside quotes */
        if (g->mode == M_BLOCK)
            g->mode = M_NORMAL;
        if (g->mode == M_NORMAL) {
            g->in_plain = false;
            g->tok_start = true;
            g->key_col = -1;
            if (g->flow == 0)
                g->n = 0;
            return scan(g, g->ls + 3, le);
        }
    }
    if (g->mode == M_BLOCK) {
        if (blank) {
            if (g->bs_indent == 0 && indent > g->bs_blank)
                g->bs_blank = indent; /* libyaml counts these when it detects the indentation */
            return 0;
        }
        if (g->bs_indent == 0) {
            int want = g->bs_blank;
            if (want < g->bs_parent + 1)
                want = g->bs_parent + 1;
            if (want < 1)
                want = 1;
            if (indent >= want) {
                g->bs_indent = indent;
                return 0;
            }
        }
        if (g->bs_indent > 0 && indent >= g->bs_indent)
            return 0;
        g->mode = M_NORMAL;
    }
    if (g->mode != M_NORMAL)
        return scan(g, g->ls, le);
    if (blank)
        return 0; /* a plain scalar may go on after an empty line */
    if (p[j] == '#') {
        g->in_plain = false;
        return 0;
    }
    int top = g->n > 0 ? g->stack[g->n - 1] : -1;
    bool continued = g->in_plain && (g->flow > 0 || indent > top);
    if (!continued && indent == 0 && p[j] == '%') {
        g->in_plain = false; /* a directive: "%YAML 1.1" */
        g->tok_start = true;
        return 0;
    }
    if (g->in_plain && (g->flow > 0 || indent > top)) {
        g->tok_start = false; /* the plain scalar continues */
    } else {
        g->in_plain = false;
        g->tok_start = true;
        g->key_col = -1;
        if (g->flow == 0)
            while (g->n > 0 && g->stack[g->n - 1] > indent)
                g->n--;
    }
    return scan(g, j, le);
}

/* Every bracket counts, quoted or not: a second line of defence should the
 * model above ever disagree with libyaml about what is quoted. */
static int raw_brackets(guard *g) {
    int open = 0;
    g->line = 1;
    g->ls = 0;
    for (size_t i = 0; i < g->len; i++) {
        int c = g->p[i];
        if (c == '\n') {
            g->line++;
            g->ls = i + 1;
        } else if (c == '[' || c == '{') {
            if (++open > QV_YAML_MAX_RAW_BRACKETS)
                return fail(g, ELOOP, i, "more than %d '[' or '{' not closed (counting those in strings too)",
                            QV_YAML_MAX_RAW_BRACKETS);
        } else if ((c == ']' || c == '}') && open > 0) {
            open--;
        }
    }
    return 0;
}

/* libyaml's line breaks: LF, CR LF, CR, NEL, LS and PS (UTF-8).  Returns
 * where the line ends and sets *ret_next to where the next one starts. */
static size_t line_end(const unsigned char *p, size_t i, size_t len, size_t *ret_next) {
    for (; i < len; i++) {
        size_t t = 0;
        if (p[i] == '\n')
            t = 1;
        else if (p[i] == '\r')
            t = i + 1 < len && p[i + 1] == '\n' ? 2 : 1;
        else if (p[i] == 0xC2 && i + 1 < len && p[i + 1] == 0x85)
            t = 2;
        else if (p[i] == 0xE2 && i + 2 < len && p[i + 1] == 0x80 && (p[i + 2] == 0xA8 || p[i + 2] == 0xA9))
            t = 3;
        if (t) {
            *ret_next = i + t;
            return i;
        }
    }
    *ret_next = len + 1;
    return len;
}

int qv_yaml_guard(const void *data, size_t len, qv_yaml_guard_error *ret) {
    if (len > QV_YAML_MAX_SIZE) {
        if (ret) {
            ret->line = ret->column = 0;
            snprintf(ret->why, sizeof ret->why, "%zu bytes is more than the %u allowed for YAML", len,
                     QV_YAML_MAX_SIZE);
        }
        return -EFBIG;
    }
    guard g = {.p = data, .len = len, .line = 1, .key_col = -1, .ret = ret};
    size_t i = 0;
    if (len >= 2 && ((g.p[0] == 0xFF && g.p[1] == 0xFE) || (g.p[0] == 0xFE && g.p[1] == 0xFF)))
        return fail(&g, EILSEQ, 0, "UTF-16 is not accepted: use UTF-8");
    if (len >= 3 && g.p[0] == 0xEF && g.p[1] == 0xBB && g.p[2] == 0xBF)
        i = 3; /* libyaml skips a UTF-8 byte order mark */
    while (i <= len) {
        size_t next;
        size_t le = line_end(g.p, i, len, &next);
        g.ls = i;
        int r = line(&g, le);
        if (r < 0)
            return r;
        i = next;
        g.line++;
    }
    return raw_brackets(&g);
}
