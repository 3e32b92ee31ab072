/* ISO9660 (ECMA-119) writer with Rock Ridge and Joliet, for seeds.
 *
 * Sectors (2048 bytes):
 *   0-15   system area, zero
 *   16     primary volume descriptor
 *   17     Joliet supplementary volume descriptor
 *   18     volume descriptor set terminator
 *   19, 20 L and M path tables of the ISO tree
 *   21, 22 L and M path tables of the Joliet tree
 *   23..   ISO root directory (as many sectors as the records need)
 *   ..     Joliet root directory
 *   ..     Rock Ridge continuation area (the ER entry)
 *   ..     file data, each file starting on a sector, in ISO directory order
 * All the metadata is built in one buffer; file data is then written from
 * the caller's memory with writev, so nothing is copied twice. */
#include "iso9660.h"
#include "util.h"

#include "fileio.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SECTOR CI_ISO_SECTOR
#define ISO_ID_MAX 40 /* "NAME.EXT;1": 30 + '.' + ";1" fits */

enum {
    SECT_PVD = 16,
    SECT_SVD = 17,
    SECT_TERM = 18,
    SECT_ISO_LPATH = 19,
    SECT_ISO_MPATH = 20,
    SECT_JOL_LPATH = 21,
    SECT_JOL_MPATH = 22,
    SECT_ISO_ROOT = 23,
};

/* Rock Ridge entry sizes (RRIP_1991A) */
enum {
    SP_LEN = 7,
    PX_LEN = 36,
    TF_LEN = 5 + 3 * 7, /* modify, access, attributes; short form */
    CE_LEN = 28,
    NM_HDR = 5,
};

static const char er_id[] = "RRIP_1991A";
static const char er_des[] = "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
static const char er_src[] = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN "
                             "PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
#define ER_LEN (8 + sizeof er_id - 1 + sizeof er_des - 1 + sizeof er_src - 1)

typedef struct iso__ent {
    const ci_iso_file *f;
    char iso_id[ISO_ID_MAX]; /* d-characters, "NAME.EXT;1" */
    uint8_t iso_len;
    uint32_t extent;
    uint32_t nsect;
} iso__ent;

typedef struct iso__layout {
    iso__ent *ents;   /* in ISO directory order */
    iso__ent **jol;   /* the same entries in Joliet directory order */
    size_t n;
    uint32_t iso_root, iso_root_sects;
    uint32_t jol_root, jol_root_sects;
    uint32_t ce;
    uint32_t data;  /* first data sector = number of metadata sectors */
    uint32_t total; /* volume space size in sectors */
} iso__layout;

static void layout_free(iso__layout *l) {
    free(l->ents);
    free(l->jol);
    l->ents = NULL;
    l->jol = NULL;
}

/* ---- byte helpers ---- */

static void put16le(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put16be(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void put32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put32be(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * (3 - i)));
}
/* ECMA-119 7.2.3 / 7.3.3: little-endian copy, then big-endian copy */
static void put16both(uint8_t *p, uint16_t v) {
    put16le(p, v);
    put16be(p + 2, v);
}
static void put32both(uint8_t *p, uint32_t v) {
    put32le(p, v);
    put32be(p + 4, v);
}

/* Pads an a/d-character field with spaces. */
static void put_str(uint8_t *p, size_t width, const char *s) {
    size_t n = strlen(s);
    memset(p, ' ', width);
    memcpy(p, s, n < width ? n : width);
}
/* Joliet fields: UCS-2 big-endian, padded with U+0020 (an odd last byte
 * stays 0). */
static void put_ucs2(uint8_t *p, size_t width, const char *s) {
    memset(p, 0, width);
    size_t n = strlen(s);
    for (size_t i = 0; i + 1 < width; i += 2) {
        p[i] = 0;
        p[i + 1] = i / 2 < n ? (uint8_t)s[i / 2] : ' ';
    }
}

static uint32_t sectors_for(uint64_t bytes) {
    return (uint32_t)((bytes + SECTOR - 1) / SECTOR);
}

/* ---- names ---- */

int ci_iso_validate_label(const char *label, qv_error *err) {
    if (!label || !*label)
        return qv_error_set(err, EINVAL, "volume label is empty");
    size_t n = strlen(label);
    if (n > CI_ISO_LABEL_MAX)
        return qv_error_set(err, EINVAL, "volume label '%.40s%s' is %zu characters long; at most %d fit", label,
                            n > 40 ? "..." : "", n, CI_ISO_LABEL_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)label[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-' || c == '.';
        if (!ok)
            return qv_error_set(err, EINVAL,
                                "volume label '%s' has a forbidden character at position %zu (allowed: A-Z a-z 0-9 _ - .)",
                                label, i + 1);
    }
    return 0;
}

int ci_iso_validate_name(const char *name, qv_error *err) {
    if (!name || !*name)
        return qv_error_set(err, EINVAL, "file name is empty");
    size_t n = strlen(name);
    if (n > CI_ISO_NAME_MAX)
        return qv_error_set(err, ENAMETOOLONG, "file name '%.40s...' is %zu characters long; at most %d fit", name,
                            n, CI_ISO_NAME_MAX);
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return qv_error_set(err, EINVAL, "file name '%s' is reserved", name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x21 || c > 0x7e)
            return qv_error_set(err, EINVAL,
                                "file name '%s': character %zu (0x%02x) is not allowed; names are printable ASCII "
                                "without spaces",
                                name, i + 1, c);
        if (strchr("/\\*:;?\"<>|", c))
            return qv_error_set(err, EINVAL, "file name '%s': character '%c' is not allowed (forbidden: / \\ * : ; ? \" < > |)",
                                name, c);
    }
    return 0;
}

/* ECMA-119 9.3: compare names padded with spaces, then extensions padded
 * with spaces (version numbers are all 1 here). */
static int pad_cmp(const char *a, size_t an, const char *b, size_t bn) {
    size_t n = an > bn ? an : bn;
    for (size_t i = 0; i < n; i++) {
        unsigned char ca = i < an ? (unsigned char)a[i] : ' ';
        unsigned char cb = i < bn ? (unsigned char)b[i] : ' ';
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
    return 0;
}

/* Splits at the last '.' (ISO ids: the only one) and drops ";1". */
static void split_name(const char *s, size_t len, size_t *name_len, const char **ext, size_t *ext_len) {
    const char *semi = memchr(s, ';', len);
    if (semi)
        len = (size_t)(semi - s);
    const char *dot = NULL;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == '.') {
            dot = s + i - 1;
            break;
        }
    if (dot) {
        *name_len = (size_t)(dot - s);
        *ext = dot + 1;
        *ext_len = len - *name_len - 1;
    } else {
        *name_len = len;
        *ext = s + len;
        *ext_len = 0;
    }
}

static int ecma_cmp(const char *a, size_t an, const char *b, size_t bn) {
    size_t anl, ael, bnl, bel;
    const char *ae, *be;
    split_name(a, an, &anl, &ae, &ael);
    split_name(b, bn, &bnl, &be, &bel);
    int r = pad_cmp(a, anl, b, bnl);
    return r ? r : pad_cmp(ae, ael, be, bel);
}

static int cmp_iso(const void *pa, const void *pb) {
    const iso__ent *a = pa, *b = pb;
    return ecma_cmp(a->iso_id, a->iso_len, b->iso_id, b->iso_len);
}
static int cmp_jol(const void *pa, const void *pb) {
    const iso__ent *a = *(iso__ent *const *)pa, *b = *(iso__ent *const *)pb;
    int r = ecma_cmp(a->f->name, strlen(a->f->name), b->f->name, strlen(b->f->name));
    return r ? r : strcmp(a->f->name, b->f->name);
}
static int cmp_orig(const void *pa, const void *pb) {
    const iso__ent *a = pa, *b = pb;
    return strcmp(a->f->name, b->f->name);
}

static char dchar(char c) {
    if (c >= 'a' && c <= 'z')
        return (char)(c - 'a' + 'A');
    if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
        return c;
    return '_';
}

/* The ISO9660 name (level 2: name + extension <= 30 d-characters).  Linux
 * and Windows show the Rock Ridge / Joliet names; this one is only a
 * fallback, made unique with a "_N" suffix when two names map alike. */
static void make_iso_id(iso__ent *e, unsigned serial) {
    const char *s = e->f->name;
    size_t len = strlen(s), nl, el;
    const char *ext;
    split_name(s, len, &nl, &ext, &el);
    if (el > 10)
        el = 10;
    char name[32], suffix[16] = "";
    if (serial)
        snprintf(suffix, sizeof suffix, "_%u", serial);
    size_t room = 30 - el - strlen(suffix);
    if (nl > room)
        nl = room;
    for (size_t i = 0; i < nl; i++)
        name[i] = dchar(s[i]);
    name[nl] = '\0';
    char ex[12];
    for (size_t i = 0; i < el; i++)
        ex[i] = dchar(ext[i]);
    ex[el] = '\0';
    int w = snprintf(e->iso_id, sizeof e->iso_id, "%s%s.%s;1", name, suffix, ex);
    e->iso_len = (uint8_t)w;
}

/* ---- directory records ---- */

static size_t iso_file_su_len(const iso__ent *e) {
    return PX_LEN + TF_LEN + NM_HDR + strlen(e->f->name);
}
static size_t even(size_t n) {
    return n + (n & 1);
}
/* 33 fixed bytes, the identifier, a pad byte after an even-length
 * identifier, the system use area, and a pad to make the length even. */
static size_t dr_len(size_t id_len, size_t su_len) {
    return even(33 + id_len + !(id_len & 1) + su_len);
}
static size_t iso_dot_su_len(void) {
    return SP_LEN + PX_LEN + TF_LEN + CE_LEN;
}
static size_t iso_dotdot_su_len(void) {
    return PX_LEN + TF_LEN;
}

/* Places a record of len bytes at *pos so that it does not cross a sector
 * boundary; returns its offset. */
static size_t dir_place(size_t *pos, size_t len) {
    if (*pos % SECTOR + len > SECTOR)
        *pos = (*pos + SECTOR - 1) / SECTOR * SECTOR;
    size_t at = *pos;
    *pos += len;
    return at;
}

static uint32_t iso_dir_sectors(const iso__layout *l) {
    size_t pos = 0;
    dir_place(&pos, dr_len(1, iso_dot_su_len()));
    dir_place(&pos, dr_len(1, iso_dotdot_su_len()));
    for (size_t i = 0; i < l->n; i++)
        dir_place(&pos, dr_len(l->ents[i].iso_len, iso_file_su_len(&l->ents[i])));
    return sectors_for(pos);
}

static uint32_t jol_dir_sectors(const iso__layout *l) {
    size_t pos = 0;
    dir_place(&pos, dr_len(1, 0));
    dir_place(&pos, dr_len(1, 0));
    for (size_t i = 0; i < l->n; i++)
        dir_place(&pos, dr_len(2 * strlen(l->jol[i]->f->name), 0));
    return sectors_for(pos);
}

static int layout_make(iso__layout *l, const char *label, const ci_iso_file *files, size_t n, qv_error *err) {
    *l = (iso__layout){0};
    int r = ci_iso_validate_label(label, err);
    if (r < 0)
        return r;
    if (n > CI_ISO_FILES_MAX)
        return qv_error_set(err, EINVAL, "%zu files; at most %d fit in a seed", n, CI_ISO_FILES_MAX);
    if (n > 0 && !files)
        return qv_error_set(err, EINVAL, "no file list");
    for (size_t i = 0; i < n; i++) {
        r = ci_iso_validate_name(files[i].name, err);
        if (r < 0)
            return r;
        if (files[i].size > CI_ISO_FILE_MAX)
            return qv_error_set(err, EFBIG, "file '%s' is %llu bytes; ISO9660 stores at most %llu bytes per file",
                                files[i].name, (unsigned long long)files[i].size,
                                (unsigned long long)CI_ISO_FILE_MAX);
        if (files[i].size > 0 && !files[i].data)
            return qv_error_set(err, EINVAL, "file '%s' has a size but no data", files[i].name);
        if (files[i].mode & ~07777u)
            return qv_error_set(err, EINVAL, "file '%s': mode %o has bits beyond 07777", files[i].name,
                                files[i].mode);
    }

    l->n = n;
    l->ents = calloc(n ? n : 1, sizeof *l->ents);
    l->jol = calloc(n ? n : 1, sizeof *l->jol);
    if (!l->ents || !l->jol) {
        layout_free(l);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        l->ents[i].f = &files[i];

    /* ISO ids are assigned in the order of the real names, so a collision
     * is resolved the same way whatever order the caller used. */
    qv_qsort(l->ents, n, sizeof *l->ents, cmp_orig);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(l->ents[i - 1].f->name, l->ents[i].f->name) == 0) {
            r = qv_error_set(err, EEXIST, "file name '%s' appears twice", l->ents[i].f->name);
            layout_free(l);
            return r;
        }
        for (unsigned serial = 0;; serial++) {
            make_iso_id(&l->ents[i], serial);
            bool taken = false;
            for (size_t j = 0; j < i && !taken; j++)
                taken = strcmp(l->ents[j].iso_id, l->ents[i].iso_id) == 0;
            if (!taken)
                break;
        }
    }
    qv_qsort(l->ents, n, sizeof *l->ents, cmp_iso);
    for (size_t i = 0; i < n; i++)
        l->jol[i] = &l->ents[i];
    qv_qsort(l->jol, n, sizeof *l->jol, cmp_jol);

    l->iso_root = SECT_ISO_ROOT;
    l->iso_root_sects = iso_dir_sectors(l);
    l->jol_root = l->iso_root + l->iso_root_sects;
    l->jol_root_sects = jol_dir_sectors(l);
    l->ce = l->jol_root + l->jol_root_sects;
    l->data = l->ce + 1;

    uint64_t next = l->data;
    for (size_t i = 0; i < n; i++) {
        iso__ent *e = &l->ents[i];
        e->nsect = sectors_for(e->f->size);
        /* Empty files point at where the next data would go (as genisoimage
         * does); they own no sector. */
        e->extent = (uint32_t)next;
        next += e->nsect;
        if (next > UINT32_MAX) {
            layout_free(l);
            return qv_error_set(err, EFBIG, "the image would exceed 2^32 sectors");
        }
    }
    l->total = (uint32_t)next;
    /* An empty file after the last data would point past the end; keep it
     * inside the volume. */
    for (size_t i = 0; i < n; i++)
        if (l->ents[i].extent >= l->total)
            l->ents[i].extent = l->total - 1;
    return 0;
}

/* ---- time ---- */

typedef struct iso__time {
    uint8_t dr[7];  /* directory record form (ECMA-119 9.1.5) */
    uint8_t vd[17]; /* volume descriptor form (8.4.26.1) */
} iso__time;

static int time_make(int64_t ts, iso__time *t, qv_error *err) {
    /* the directory record stores years since 1900 in one byte */
    if (ts < -2208988800LL || ts > 5869583999LL)
        return qv_error_set(err, ERANGE, "timestamp %lld is outside 1900..2155, which ISO9660 can store",
                            (long long)ts);
    time_t tt = (time_t)ts;
    struct tm tm;
    if (!gmtime_r(&tt, &tm))
        return qv_error_set(err, ERANGE, "timestamp %lld cannot be converted", (long long)ts);
    t->dr[0] = (uint8_t)tm.tm_year;
    t->dr[1] = (uint8_t)(tm.tm_mon + 1);
    t->dr[2] = (uint8_t)tm.tm_mday;
    t->dr[3] = (uint8_t)tm.tm_hour;
    t->dr[4] = (uint8_t)tm.tm_min;
    t->dr[5] = (uint8_t)tm.tm_sec;
    t->dr[6] = 0; /* UTC */
    char buf[64];
    snprintf(buf, sizeof buf, "%04d%02d%02d%02d%02d%02d00", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(t->vd, buf, 16);
    t->vd[16] = 0;
    return 0;
}

int ci_iso_timestamp(int64_t *ret, qv_error *err) {
    const char *s = getenv("SOURCE_DATE_EPOCH");
    if (!s) {
        *ret = (int64_t)time(NULL);
        return 0;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || *s == '+' || *s == ' ')
        return qv_error_set(err, EINVAL, "SOURCE_DATE_EPOCH='%.64s' is not a number of seconds since 1970", s);
    *ret = v;
    return 0;
}

/* ---- metadata ---- */

/* Writes one directory record; returns its length. */
static size_t put_dr(uint8_t *p, uint32_t extent, uint32_t size, uint8_t flags, const uint8_t *id, size_t id_len,
                     const uint8_t *su, size_t su_len, const iso__time *t) {
    size_t len = dr_len(id_len, su_len);
    memset(p, 0, len);
    p[0] = (uint8_t)len;
    p[1] = 0; /* extended attribute record length */
    put32both(p + 2, extent);
    put32both(p + 10, size);
    memcpy(p + 18, t->dr, 7);
    p[25] = flags;
    put16both(p + 28, 1); /* volume sequence number */
    p[32] = (uint8_t)id_len;
    memcpy(p + 33, id, id_len);
    size_t su_at = 33 + id_len + !(id_len & 1);
    if (su_len)
        memcpy(p + su_at, su, su_len);
    return len;
}

static size_t su_px(uint8_t *p, uint32_t mode, uint32_t nlink) {
    p[0] = 'P';
    p[1] = 'X';
    p[2] = PX_LEN;
    p[3] = 1;
    put32both(p + 4, mode);
    put32both(p + 12, nlink);
    put32both(p + 20, 0); /* uid */
    put32both(p + 28, 0); /* gid */
    return PX_LEN;
}
static size_t su_tf(uint8_t *p, const iso__time *t) {
    p[0] = 'T';
    p[1] = 'F';
    p[2] = TF_LEN;
    p[3] = 1;
    p[4] = 0x02 | 0x04 | 0x08; /* modify, access, attributes */
    for (int i = 0; i < 3; i++)
        memcpy(p + 5 + 7 * i, t->dr, 7);
    return TF_LEN;
}

static void put_vd(uint8_t *p, bool joliet, const char *label, const iso__layout *l, const iso__time *t) {
    void (*str)(uint8_t *, size_t, const char *) = joliet ? put_ucs2 : put_str;
    p[0] = joliet ? 2 : 1;
    memcpy(p + 1, "CD001", 5);
    p[6] = 1;
    str(p + 8, 32, "LINUX");
    str(p + 40, 32, label);
    put32both(p + 80, l->total);
    if (joliet)
        memcpy(p + 88, "%/E", 3); /* UCS-2 level 3 */
    put16both(p + 120, 1);        /* volume set size */
    put16both(p + 124, 1);        /* volume sequence number */
    put16both(p + 128, SECTOR);
    put32both(p + 132, 10); /* path table: the root's 10-byte record */
    uint32_t lpath = joliet ? SECT_JOL_LPATH : SECT_ISO_LPATH;
    put32le(p + 140, lpath);
    put32be(p + 148, lpath + 1);
    uint32_t root = joliet ? l->jol_root : l->iso_root;
    uint32_t root_sects = joliet ? l->jol_root_sects : l->iso_root_sects;
    static const uint8_t root_id = 0;
    put_dr(p + 156, root, root_sects * SECTOR, 2, &root_id, 1, NULL, 0, t);
    str(p + 190, 128, "");
    str(p + 318, 128, "");
    str(p + 446, 128, "");
    str(p + 574, 128, "QVISOR");
    str(p + 702, 37, "");
    str(p + 739, 37, "");
    str(p + 776, 37, "");
    memcpy(p + 813, t->vd, 17); /* creation */
    memcpy(p + 830, t->vd, 17); /* modification */
    memcpy(p + 847, "0000000000000000", 16); /* expiration: none */
    memcpy(p + 864, t->vd, 17);              /* effective */
    p[881] = 1;                              /* file structure version */
}

static void put_path_tables(uint8_t *meta, uint32_t lsect, uint32_t root) {
    uint8_t *lp = meta + (size_t)lsect * SECTOR, *mp = lp + SECTOR;
    lp[0] = mp[0] = 1; /* identifier length: the root's 0x00 */
    put32le(lp + 2, root);
    put32be(mp + 2, root);
    put16le(lp + 6, 1);
    put16be(mp + 6, 1);
}

static void build_meta(uint8_t *meta, const char *label, const iso__layout *l, const iso__time *t) {
    put_vd(meta + SECT_PVD * SECTOR, false, label, l, t);
    put_vd(meta + SECT_SVD * SECTOR, true, label, l, t);
    uint8_t *term = meta + SECT_TERM * SECTOR;
    term[0] = 255;
    memcpy(term + 1, "CD001", 5);
    term[6] = 1;
    put_path_tables(meta, SECT_ISO_LPATH, l->iso_root);
    put_path_tables(meta, SECT_JOL_LPATH, l->jol_root);

    static const uint8_t dot = 0, dotdot = 1;
    uint8_t su[256];
    size_t pos = 0, at, k;

    /* ISO root: "." carries SP, PX, TF and CE -> ER */
    uint8_t *dir = meta + (size_t)l->iso_root * SECTOR;
    uint32_t dsize = l->iso_root_sects * SECTOR;
    k = 0;
    memcpy(su, (const uint8_t[]){'S', 'P', SP_LEN, 1, 0xBE, 0xEF, 0}, SP_LEN);
    k += SP_LEN;
    k += su_px(su + k, 040555, 2);
    k += su_tf(su + k, t);
    su[k] = 'C';
    su[k + 1] = 'E';
    su[k + 2] = CE_LEN;
    su[k + 3] = 1;
    put32both(su + k + 4, l->ce);
    put32both(su + k + 12, 0);
    put32both(su + k + 20, (uint32_t)ER_LEN);
    k += CE_LEN;
    at = dir_place(&pos, dr_len(1, k));
    put_dr(dir + at, l->iso_root, dsize, 2, &dot, 1, su, k, t);
    k = su_px(su, 040555, 2);
    k += su_tf(su + k, t);
    at = dir_place(&pos, dr_len(1, k));
    put_dr(dir + at, l->iso_root, dsize, 2, &dotdot, 1, su, k, t);
    for (size_t i = 0; i < l->n; i++) {
        const iso__ent *e = &l->ents[i];
        size_t nl = strlen(e->f->name);
        k = su_px(su, 0100000 | (e->f->mode ? e->f->mode : 0644), 1);
        k += su_tf(su + k, t);
        su[k] = 'N';
        su[k + 1] = 'M';
        su[k + 2] = (uint8_t)(NM_HDR + nl);
        su[k + 3] = 1;
        su[k + 4] = 0;
        memcpy(su + k + 5, e->f->name, nl);
        k += NM_HDR + nl;
        at = dir_place(&pos, dr_len(e->iso_len, k));
        put_dr(dir + at, e->extent, (uint32_t)e->f->size, 0, (const uint8_t *)e->iso_id, e->iso_len, su, k, t);
    }

    /* Joliet root: no Rock Ridge */
    dir = meta + (size_t)l->jol_root * SECTOR;
    dsize = l->jol_root_sects * SECTOR;
    pos = 0;
    at = dir_place(&pos, dr_len(1, 0));
    put_dr(dir + at, l->jol_root, dsize, 2, &dot, 1, NULL, 0, t);
    at = dir_place(&pos, dr_len(1, 0));
    put_dr(dir + at, l->jol_root, dsize, 2, &dotdot, 1, NULL, 0, t);
    for (size_t i = 0; i < l->n; i++) {
        const iso__ent *e = l->jol[i];
        size_t nl = strlen(e->f->name);
        uint8_t id[2 * CI_ISO_NAME_MAX];
        for (size_t j = 0; j < nl; j++) {
            id[2 * j] = 0;
            id[2 * j + 1] = (uint8_t)e->f->name[j];
        }
        at = dir_place(&pos, dr_len(2 * nl, 0));
        put_dr(dir + at, e->extent, (uint32_t)e->f->size, 0, id, 2 * nl, NULL, 0, t);
    }

    /* continuation area: ER RRIP_1991A */
    uint8_t *er = meta + (size_t)l->ce * SECTOR;
    er[0] = 'E';
    er[1] = 'R';
    er[2] = (uint8_t)ER_LEN;
    er[3] = 1;
    er[4] = sizeof er_id - 1;
    er[5] = sizeof er_des - 1;
    er[6] = sizeof er_src - 1;
    er[7] = 1; /* extension version */
    memcpy(er + 8, er_id, sizeof er_id - 1);
    memcpy(er + 8 + sizeof er_id - 1, er_des, sizeof er_des - 1);
    memcpy(er + 8 + sizeof er_id - 1 + sizeof er_des - 1, er_src, sizeof er_src - 1);
}

/* ---- output ---- */

static const uint8_t zeros[SECTOR];

typedef int (*iso__sink)(void *ctx, const struct iovec *iov, int n);

/* Hands the metadata and then each file's data and padding to sink, in
 * batches of at most IOV_BATCH vectors. */
#define IOV_BATCH 64
static int emit_data(const iso__layout *l, iso__sink sink, void *ctx, const uint8_t *meta, size_t meta_len) {
    struct iovec iov[IOV_BATCH];
    int k = 0, r;
    if (meta_len)
        iov[k++] = (struct iovec){(void *)meta, meta_len};
    for (size_t i = 0; i < l->n; i++) {
        const ci_iso_file *f = l->ents[i].f;
        if (f->size == 0)
            continue;
        if (k + 2 > IOV_BATCH) {
            if ((r = sink(ctx, iov, k)) < 0)
                return r;
            k = 0;
        }
        iov[k++] = (struct iovec){(void *)f->data, (size_t)f->size};
        size_t pad = (size_t)l->ents[i].nsect * SECTOR - (size_t)f->size;
        if (pad)
            iov[k++] = (struct iovec){(void *)zeros, pad};
    }
    return k ? sink(ctx, iov, k) : 0;
}

static int emit(const iso__layout *l, const uint8_t *meta, iso__sink sink, void *ctx) {
    return emit_data(l, sink, ctx, meta, (size_t)l->data * SECTOR);
}

static int sink_fd(void *ctx, const struct iovec *iov_in, int n) {
    int fd = *(int *)ctx;
    struct iovec iov[IOV_BATCH];
    memcpy(iov, iov_in, (size_t)n * sizeof *iov);
    struct iovec *v = iov;
    while (n > 0) {
        ssize_t w = writev(fd, v, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= v->iov_len) {
            done -= v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (uint8_t *)v->iov_base + done;
            v->iov_len -= done;
        }
    }
    return 0;
}

typedef struct iso__bufctx {
    uint8_t *p;
} iso__bufctx;

static int sink_buf(void *ctx, const struct iovec *iov, int n) {
    iso__bufctx *b = ctx;
    for (int i = 0; i < n; i++) {
        memcpy(b->p, iov[i].iov_base, iov[i].iov_len);
        b->p += iov[i].iov_len;
    }
    return 0;
}

/* Lays out, validates and builds the metadata; *ret_meta is owned by the caller. */
static int prepare(const char *label, const ci_iso_file *files, size_t n, int64_t ts, iso__layout *l,
                   uint8_t **ret_meta, qv_error *err) {
    iso__time t;
    int r = time_make(ts, &t, err);
    if (r < 0)
        return r;
    r = layout_make(l, label, files, n, err);
    if (r < 0)
        return r;
    uint8_t *meta = calloc(l->data, SECTOR);
    if (!meta) {
        layout_free(l);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    build_meta(meta, label, l, &t);
    *ret_meta = meta;
    return 0;
}

int ci_iso_image_size(const char *label, const ci_iso_file *files, size_t n, uint64_t *ret, qv_error *err) {
    iso__layout l;
    int r = layout_make(&l, label, files, n, err);
    if (r < 0)
        return r;
    *ret = (uint64_t)l.total * SECTOR;
    layout_free(&l);
    return 0;
}

int ci_iso_write_fd(int fd, const char *label, const ci_iso_file *files, size_t n, int64_t timestamp,
                    qv_error *err) {
    iso__layout l;
    _cleanup_free_ uint8_t *meta = NULL;
    int r = prepare(label, files, n, timestamp, &l, &meta, err);
    if (r < 0)
        return r;
    r = emit(&l, meta, sink_fd, &fd);
    layout_free(&l);
    if (r < 0)
        return qv_error_set(err, r, "writing the image: %s", strerror(-r));
    return 0;
}

int ci_iso_write_buf(const char *label, const ci_iso_file *files, size_t n, int64_t timestamp, uint8_t **ret,
                     size_t *ret_len, qv_error *err) {
    iso__time t;
    int r = time_make(timestamp, &t, err);
    if (r < 0)
        return r;
    iso__layout l;
    r = layout_make(&l, label, files, n, err);
    if (r < 0)
        return r;
    /* the metadata is built in place: no second buffer, no copy */
    size_t len = (size_t)l.total * SECTOR, meta_len = (size_t)l.data * SECTOR;
    if ((uint64_t)l.total * SECTOR > SIZE_MAX / 2) {
        layout_free(&l);
        return qv_error_set(err, EFBIG, "the image is too large for memory");
    }
    uint8_t *buf = malloc(len);
    if (!buf) {
        layout_free(&l);
        return qv_error_set(err, ENOMEM, "out of memory for a %zu-byte image", len);
    }
    memset(buf, 0, meta_len);
    build_meta(buf, label, &l, &t);
    iso__bufctx ctx = {buf + meta_len};
    emit_data(&l, sink_buf, &ctx, NULL, 0);
    layout_free(&l);
    *ret = buf;
    *ret_len = len;
    return 0;
}

int ci_iso_write_file_atomic(const char *path, mode_t mode, unsigned flags, const char *label,
                             const ci_iso_file *files, size_t n, int64_t timestamp, qv_error *err) {
    if (!path || !*path)
        return qv_error_set(err, EINVAL, "no output path");
    if (flags & ~(unsigned)(CI_ISO_DURABLE | CI_ISO_REGULAR))
        return qv_error_set(err, EINVAL, "unknown flags 0x%x", flags);

    /* Validate before creating anything. */
    iso__layout l;
    _cleanup_free_ uint8_t *meta = NULL;
    int r = prepare(label, files, n, timestamp, &l, &meta, err);
    if (r < 0)
        return r;

    qv_atomic a;
    r = qv_atomic_begin(path, mode, &a);
    if (r < 0) {
        layout_free(&l);
        return qv_error_set(err, r, "creating a temporary file next to '%s': %s", path, strerror(-r));
    }
    r = emit(&l, meta, sink_fd, &a.fd);
    layout_free(&l);
    if (r < 0) {
        qv_atomic_abort(&a);
        return qv_error_set(err, r, "writing '%s': %s", path, strerror(-r));
    }
    r = qv_atomic_commit(&a, ((flags & CI_ISO_DURABLE) ? QV_ATOMIC_DURABLE : 0) |
                                 ((flags & CI_ISO_REGULAR) ? QV_ATOMIC_REGULAR : 0));
    if (r == -EEXIST && (flags & CI_ISO_REGULAR))
        return qv_error_set(err, EEXIST, "'%s' exists and is not a regular file: not replaced", path);
    if (r < 0)
        return qv_error_set(err, r, "replacing '%s': %s", path, strerror(-r));
    return 0;
}
