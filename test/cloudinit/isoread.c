/* See isoread.h.  Field offsets are written out from the specifications on
 * purpose (no shared constants with the writer). */
#include "isoread.h"

#include "testlib.h"

#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLK 2048u

/* rd_try_parse() turns a failed check into a return instead of a test
 * failure, so that tests can show the reader does catch defects. */
static jmp_buf *soft_fail;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            if (soft_fail)                                 \
                longjmp(*soft_fail, 1);                    \
            print_error("isoread: " __VA_ARGS__);          \
            print_error("\n  (failed: %s)\n", #cond);      \
            fail();                                        \
        }                                                  \
    } while (0)

static uint16_t le16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint16_t be16(const uint8_t *p) {
    return (uint16_t)(p[0] << 8 | p[1]);
}
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[3] | (uint32_t)p[2] << 8 | (uint32_t)p[1] << 16 | (uint32_t)p[0] << 24;
}
/* ECMA-119 7.2.3: both-byte orders, halves must agree */
static uint16_t both16(const uint8_t *p, const char *what) {
    CHECK(le16(p) == be16(p + 2), "%s: both-endian 16-bit halves differ (%u vs %u)\n", what, le16(p), be16(p + 2));
    return le16(p);
}
/* ECMA-119 7.3.3 */
static uint32_t both32(const uint8_t *p, const char *what) {
    CHECK(le32(p) == be32(p + 4), "%s: both-endian 32-bit halves differ (%u vs %u)\n", what, le32(p), be32(p + 4));
    return le32(p);
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == ' ')
        s[--n] = '\0';
}

/* ECMA-119 9.3 ordering of identifiers "NAME.EXT;VER" (Joliet names are
 * compared the same way on their decoded characters). */
static void id_parts(const char *s, char *name, char *ext, int *ver) {
    const char *semi = strchr(s, ';');
    size_t len = semi ? (size_t)(semi - s) : strlen(s);
    *ver = semi ? atoi(semi + 1) : 0;
    const char *dot = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '.')
            dot = s + i;
    size_t nl = dot ? (size_t)(dot - s) : len;
    memcpy(name, s, nl);
    name[nl] = '\0';
    size_t el = dot ? len - nl - 1 : 0;
    if (dot)
        memcpy(ext, dot + 1, el);
    ext[el] = '\0';
}
static int padded_cmp(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), n = la > lb ? la : lb;
    for (size_t i = 0; i < n; i++) {
        int ca = i < la ? (unsigned char)a[i] : ' ', cb = i < lb ? (unsigned char)b[i] : ' ';
        if (ca != cb)
            return ca - cb;
    }
    return 0;
}
static int ecma_order(const char *a, const char *b) {
    char an[256], ae[256], bn[256], be[256];
    int av, bv;
    id_parts(a, an, ae, &av);
    id_parts(b, bn, be, &bv);
    int r = padded_cmp(an, bn);
    if (!r)
        r = padded_cmp(ae, be);
    if (!r)
        r = bv - av; /* higher versions first */
    return r;
}

typedef struct susp_walk {
    char sigs[32][3];
    int n;
    bool has_px, has_nm, has_tf, has_ce, has_sp;
    uint32_t mode;
    char nm[256];
    uint32_t ce_block, ce_off, ce_len;
} susp_walk;

/* SUSP 1.10 section 4/5 + RRIP 1.10 section 4.1 */
static void susp_entries(const uint8_t *su, size_t len, susp_walk *w, const char *where) {
    size_t off = 0;
    while (off + 4 <= len) {
        const uint8_t *e = su + off;
        uint8_t elen = e[2];
        if (e[0] == 0 && e[1] == 0 && elen == 0) {
            CHECK(all_zero(e, len - off), "%s: non-zero bytes after SUSP padding\n", where);
            break;
        }
        CHECK(elen >= 4 && off + elen <= len, "%s: SUSP entry %c%c length %u overruns the area (%zu of %zu)\n",
              where, e[0], e[1], elen, off, len);
        CHECK(e[3] == 1, "%s: SUSP entry %c%c version %u\n", where, e[0], e[1], e[3]);
        if (w->n < 32) {
            w->sigs[w->n][0] = (char)e[0];
            w->sigs[w->n][1] = (char)e[1];
            w->sigs[w->n][2] = 0;
            w->n++;
        }
        if (e[0] == 'S' && e[1] == 'P') {
            CHECK(elen == 7 && e[4] == 0xBE && e[5] == 0xEF && e[6] == 0, "%s: malformed SP\n", where);
            w->has_sp = true;
        } else if (e[0] == 'P' && e[1] == 'X') {
            CHECK(elen == 36, "%s: PX is %u bytes; RRIP_1991A wants 36\n", where, elen);
            w->mode = both32(e + 4, "PX mode");
            both32(e + 12, "PX links");
            both32(e + 20, "PX uid");
            both32(e + 28, "PX gid");
            w->has_px = true;
        } else if (e[0] == 'N' && e[1] == 'M') {
            CHECK(e[4] == 0, "%s: NM flags %u (expected 0)\n", where, e[4]);
            size_t nl = (size_t)elen - 5;
            memcpy(w->nm + strlen(w->nm), e + 5, nl);
            w->has_nm = true;
        } else if (e[0] == 'T' && e[1] == 'F') {
            uint8_t fl = e[4];
            int count = 0;
            for (int b = 0; b < 7; b++)
                count += (fl >> b) & 1;
            size_t each = (fl & 0x80) ? 17 : 7;
            CHECK(elen == 5 + count * each, "%s: TF length %u for flags 0x%02x\n", where, elen, fl);
            w->has_tf = true;
        } else if (e[0] == 'C' && e[1] == 'E') {
            CHECK(elen == 28, "%s: CE length %u\n", where, elen);
            w->ce_block = both32(e + 4, "CE block");
            w->ce_off = both32(e + 12, "CE offset");
            w->ce_len = both32(e + 20, "CE length");
            w->has_ce = true;
        } else if (e[0] == 'R' && e[1] == 'R') {
            /* the old RR entry: Linux ignores NM unless its NM bit is set */
            CHECK(elen == 5 && (e[4] & 0x08), "%s: RR entry without its NM bit\n", where);
        }
        off += elen;
    }
}

typedef struct dir_rec {
    uint32_t extent, size;
    uint8_t flags;
    const uint8_t *id;
    uint8_t id_len;
    const uint8_t *su;
    size_t su_len;
} dir_rec;

/* Walks a directory extent; calls back for every record, checking the
 * record framing of ECMA-119 9.1 and 6.8.1.1 (no record across a sector). */
static size_t read_dir(const uint8_t *img, size_t len, uint32_t extent, uint32_t size, dir_rec *recs, size_t max,
                       const char *tree) {
    CHECK(size % BLK == 0 && size > 0, "%s: directory size %u is not a positive multiple of 2048\n", tree, size);
    CHECK((uint64_t)extent * BLK + size <= len, "%s: directory beyond the image\n", tree);
    size_t n = 0;
    for (uint32_t s = 0; s < size / BLK; s++) {
        const uint8_t *sec = img + ((size_t)extent + s) * BLK;
        size_t off = 0;
        while (off < BLK) {
            uint8_t rl = sec[off];
            if (rl == 0) {
                CHECK(all_zero(sec + off, BLK - off), "%s: junk after the last record of sector %u\n", tree,
                      extent + s);
                break;
            }
            const uint8_t *r = sec + off;
            CHECK(rl >= 34, "%s: record length %u < 34\n", tree, rl);
            CHECK(rl % 2 == 0, "%s: record length %u is odd\n", tree, rl);
            CHECK(off + rl <= BLK, "%s: record at %zu (length %u) crosses a sector boundary\n", tree, off, rl);
            CHECK(r[1] == 0, "%s: extended attribute record length %u\n", tree, r[1]);
            CHECK(n < max, "%s: too many records\n", tree);
            dir_rec *d = &recs[n++];
            d->extent = both32(r + 2, "record extent");
            d->size = both32(r + 10, "record data length");
            d->flags = r[25];
            CHECK(r[26] == 0 && r[27] == 0, "%s: interleaving set\n", tree);
            CHECK(both16(r + 28, "record volume sequence") == 1, "%s: volume sequence number\n", tree);
            d->id_len = r[32];
            CHECK(d->id_len >= 1 && 33u + d->id_len <= rl, "%s: identifier length %u\n", tree, d->id_len);
            d->id = r + 33;
            size_t su_at = 33 + d->id_len;
            if (d->id_len % 2 == 0) {
                CHECK(r[su_at] == 0, "%s: padding byte after identifier not zero\n", tree);
                su_at++;
            }
            d->su = r + su_at;
            d->su_len = rl - su_at;
            CHECK(r[18] >= 70 && r[19] >= 1 && r[19] <= 12 && r[20] >= 1 && r[20] <= 31 && r[21] < 24 &&
                      r[22] < 60 && r[23] < 60,
                  "%s: bad recording date\n", tree);
            off += rl;
        }
    }
    CHECK(n >= 2, "%s: directory without . and ..\n", tree);
    CHECK(recs[0].id_len == 1 && recs[0].id[0] == 0, "%s: first record is not '.'\n", tree);
    CHECK(recs[1].id_len == 1 && recs[1].id[0] == 1, "%s: second record is not '..'\n", tree);
    CHECK(recs[0].extent == extent && recs[0].size == size && (recs[0].flags & 2), "%s: '.' is not the directory\n",
          tree);
    /* flat image: the root's parent is itself */
    CHECK(recs[1].extent == extent && recs[1].size == size && (recs[1].flags & 2), "%s: '..' of the root\n", tree);
    return n;
}

/* ECMA-119 9.4: one path table; returns the root's extent */
static void check_path_tables(const uint8_t *img, size_t len, const uint8_t *vd, uint32_t root, const char *tree) {
    uint32_t size = both32(vd + 132, "path table size");
    uint32_t lloc = le32(vd + 140), mloc = be32(vd + 148);
    CHECK(le32(vd + 144) == 0 && be32(vd + 152) == 0, "%s: optional path tables set\n", tree);
    CHECK((uint64_t)lloc * BLK + size <= len && (uint64_t)mloc * BLK + size <= len, "%s: path table outside\n",
          tree);
    CHECK(lloc != mloc, "%s: L and M path tables at the same sector\n", tree);
    const uint8_t *L = img + (size_t)lloc * BLK, *M = img + (size_t)mloc * BLK;
    size_t off = 0;
    int count = 0;
    while (off < size) {
        uint8_t dl = L[off];
        CHECK(dl >= 1 && M[off] == dl, "%s: path table record %d lengths differ\n", tree, count);
        CHECK(L[off + 1] == 0 && M[off + 1] == 0, "%s: path table extended attribute length\n", tree);
        uint32_t le = le32(L + off + 2), be = be32(M + off + 2);
        uint16_t pl = le16(L + off + 6), pm = be16(M + off + 6);
        CHECK(le == be && pl == pm, "%s: L and M path tables disagree at record %d\n", tree, count);
        CHECK(memcmp(L + off + 8, M + off + 8, dl) == 0, "%s: path table names differ\n", tree);
        if (count == 0) {
            CHECK(dl == 1 && L[off + 8] == 0, "%s: first path table record is not the root\n", tree);
            CHECK(le == root, "%s: path table root at %u, directory at %u\n", tree, le, root);
            CHECK(pl == 1, "%s: root's parent %u\n", tree, pl);
        }
        size_t rl = 8 + dl + (dl & 1);
        if (dl & 1)
            CHECK(L[off + 8 + dl] == 0 && M[off + 8 + dl] == 0, "%s: path table padding\n", tree);
        off += rl;
        count++;
    }
    CHECK(off == size, "%s: path table size %u does not end on a record (%zu)\n", tree, size, off);
    /* flat image: the root is the only directory */
    CHECK(count == 1, "%s: %d path table records for a flat image\n", tree, count);
    /* the rest of the path table's sector is zero */
    size_t tail = BLK - size % BLK;
    if (tail != BLK) {
        CHECK(all_zero(L + size, tail) && all_zero(M + size, tail), "%s: path table sector padding\n", tree);
    }
}

static void check_vd_common(const uint8_t *vd, size_t len, const char *what) {
    CHECK(memcmp(vd + 1, "CD001", 5) == 0 && vd[6] == 1, "%s: bad standard identifier\n", what);
    uint32_t vss = both32(vd + 80, "volume space size");
    CHECK((uint64_t)vss * BLK == len, "%s: volume space size %u sectors, image %zu bytes\n", what, vss, len);
    CHECK(both16(vd + 120, "volume set size") == 1, "%s: volume set size\n", what);
    CHECK(both16(vd + 124, "volume sequence number") == 1, "%s: volume sequence number\n", what);
    CHECK(both16(vd + 128, "logical block size") == BLK, "%s: block size\n", what);
    CHECK(vd[881] == 1, "%s: file structure version %u\n", what, vd[881]);
    CHECK(all_zero(vd + 72, 8), "%s: unused field 72-79\n", what);
    CHECK(vd[882] == 0 && all_zero(vd + 1395, BLK - 1395), "%s: reserved bytes not zero\n", what);
    for (int d = 0; d < 4; d++) {
        const uint8_t *t = vd + 813 + 17 * d;
        for (int i = 0; i < 16; i++)
            CHECK(t[i] >= '0' && t[i] <= '9', "%s: date %d is not 16 digits\n", what, d);
    }
    /* the root directory record embedded at 156-189 (ECMA-119 8.4.18) */
    const uint8_t *root = vd + 156;
    CHECK(root[0] == 34 && root[32] == 1 && root[33] == 0 && (root[25] & 2), "%s: root directory record\n", what);
    CHECK(both16(root + 28, "root record volume sequence number") == 1, "%s: root record volume sequence number\n",
          what);
}

static int cmp_rd_name(const void *a, const void *b) {
    return strcmp(((const rd_file *)a)->name, ((const rd_file *)b)->name);
}

void rd_parse(const uint8_t *img, size_t len, rd_image *out) {
    memset(out, 0, sizeof *out);
    CHECK(len % BLK == 0 && len >= 19 * BLK, "image length %zu\n", len);
    CHECK(all_zero(img, 16 * BLK), "system area (sectors 0-15) not zero\n");

    const uint8_t *pvd = NULL, *svd = NULL;
    size_t s = 16;
    for (;; s++) {
        CHECK((s + 1) * BLK <= len, "no volume descriptor set terminator\n");
        const uint8_t *vd = img + s * BLK;
        CHECK(memcmp(vd + 1, "CD001", 5) == 0, "sector %zu is not a volume descriptor\n", s);
        if (vd[0] == 255) {
            CHECK(vd[6] == 1 && all_zero(vd + 7, BLK - 7), "terminator\n");
            break;
        }
        if (vd[0] == 1) {
            CHECK(!pvd, "two primary volume descriptors\n");
            pvd = vd;
        } else if (vd[0] == 2 && vd[88] == '%' && vd[89] == '/' && (vd[90] == '@' || vd[90] == 'C' || vd[90] == 'E')) {
            CHECK(!svd, "two Joliet descriptors\n");
            svd = vd;
        }
    }
    CHECK(pvd && pvd == img + 16 * BLK, "the primary volume descriptor is not at sector 16\n");
    CHECK(svd, "no Joliet supplementary volume descriptor\n");
    check_vd_common(pvd, len, "PVD");
    check_vd_common(svd, len, "Joliet SVD");
    CHECK(pvd[7] == 0 && all_zero(pvd + 88, 32), "PVD unused fields\n");
    CHECK(svd[90] == 'E', "Joliet escape is not UCS level 3\n");
    CHECK(all_zero(svd + 91, 29), "SVD escape sequence padding\n");
    out->volume_sectors = le32(pvd + 80);
    CHECK(le32(svd + 80) == out->volume_sectors, "PVD and SVD volume sizes differ\n");

    memcpy(out->label, pvd + 40, 32);
    trim(out->label);
    char jl[17] = {0};
    for (int i = 0; i < 16; i++) {
        CHECK(svd[40 + 2 * i] == 0, "Joliet label is not ASCII UCS-2\n");
        jl[i] = (char)svd[41 + 2 * i];
    }
    trim(jl);
    memcpy(out->joliet_label, jl, sizeof jl);
    memcpy(out->creation, pvd + 813, 16);

    out->iso_root = both32(pvd + 156 + 2, "PVD root extent");
    out->iso_root_size = both32(pvd + 156 + 10, "PVD root size");
    out->joliet_root = both32(svd + 156 + 2, "SVD root extent");
    out->joliet_root_size = both32(svd + 156 + 10, "SVD root size");
    CHECK(out->iso_root != out->joliet_root, "both trees share a root\n");
    check_path_tables(img, len, pvd, out->iso_root, "ISO");
    check_path_tables(img, len, svd, out->joliet_root, "Joliet");

    static dir_rec recs[RD_MAX_FILES + 2];
    /* ---- ISO tree with Rock Ridge ---- */
    size_t n = read_dir(img, len, out->iso_root, out->iso_root_size, recs, RD_MAX_FILES + 2, "ISO");
    susp_walk w = {0};
    susp_entries(recs[0].su, recs[0].su_len, &w, "root '.'");
    CHECK(w.n >= 4 && strcmp(w.sigs[0], "SP") == 0, "root '.' System Use does not start with SP\n");
    CHECK(memcmp(recs[0].su, "SP\x07\x01\xbe\xef\x00", 7) == 0, "SP bytes\n");
    CHECK(strcmp(w.sigs[1], "PX") == 0, "root: PX does not follow SP\n");
    int ti = -1, ci = -1;
    for (int i = 0; i < w.n; i++) {
        if (strcmp(w.sigs[i], "TF") == 0)
            ti = i;
        if (strcmp(w.sigs[i], "CE") == 0)
            ci = i;
    }
    CHECK(ci > 1 && (ti < 0 || ti < ci), "root: chain is not SP -> PX -> (TF) -> CE\n");
    out->root_mode = w.mode;
    CHECK((w.mode & 0170000) == 0040000, "root PX mode %o is not a directory\n", w.mode);
    CHECK(w.ce_off + w.ce_len <= BLK && w.ce_len >= 8, "CE area %u+%u leaves its block\n", w.ce_off, w.ce_len);
    CHECK(((size_t)w.ce_block + 1) * BLK <= len, "CE block outside the image\n");
    const uint8_t *ce = img + (size_t)w.ce_block * BLK + w.ce_off;
    susp_walk cw = {0};
    susp_entries(ce, w.ce_len, &cw, "continuation area");
    CHECK(cw.n >= 1 && strcmp(cw.sigs[0], "ER") == 0, "continuation area does not hold ER\n");
    CHECK(ce[4] == 10 && memcmp(ce + 8, "RRIP_1991A", 10) == 0, "ER identifier is not RRIP_1991A\n");
    CHECK(ce[2] == 8 + ce[4] + ce[5] + ce[6], "ER length %u != 8 + %u + %u + %u\n", ce[2], ce[4], ce[5], ce[6]);
    CHECK(ce[7] == 1, "ER extension version\n");

    for (size_t i = 2; i < n; i++) {
        const dir_rec *d = &recs[i];
        rd_file *f = &out->iso[i - 2];
        CHECK(d->flags == 0, "ISO: entry %zu is not a plain file\n", i);
        CHECK(d->id_len < sizeof f->iso_id, "ISO: identifier too long\n");
        memcpy(f->iso_id, d->id, d->id_len);
        for (size_t k = 0; k < d->id_len; k++) {
            char c = f->iso_id[k];
            CHECK((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ';',
                  "ISO: identifier '%s' has a non d-character\n", f->iso_id);
        }
        CHECK(strchr(f->iso_id, '.') && strstr(f->iso_id, ";1"), "ISO: identifier '%s' lacks '.' or ';1'\n",
              f->iso_id);
        susp_walk fw = {0};
        susp_entries(d->su, d->su_len, &fw, f->iso_id);
        /* TF too: the writer puts one on every file (docs/cloudinit.md);
         * without it Linux shows the record's date instead */
        CHECK(fw.has_px && fw.has_nm && fw.has_tf, "ISO: '%s' lacks PX, TF or NM\n", f->iso_id);
        CHECK((fw.mode & 0170000) == 0100000, "'%s': PX mode %o is not a regular file\n", f->iso_id, fw.mode);
        snprintf(f->name, sizeof f->name, "%s", fw.nm);
        f->mode = fw.mode;
        f->extent = d->extent;
        f->size = d->size;
        if (i > 2)
            CHECK(ecma_order(out->iso[i - 3].iso_id, f->iso_id) < 0, "ISO: '%s' sorted after '%s'\n",
                  out->iso[i - 3].iso_id, f->iso_id);
    }
    out->n = n - 2;

    /* ---- Joliet tree ---- */
    size_t jn = read_dir(img, len, out->joliet_root, out->joliet_root_size, recs, RD_MAX_FILES + 2, "Joliet");
    CHECK(jn == n, "Joliet has %zu files, ISO %zu\n", jn - 2, n - 2);
    CHECK(recs[0].su_len < 2 && recs[1].su_len < 2, "Joliet '.' or '..' carries System Use\n");
    for (size_t i = 2; i < jn; i++) {
        const dir_rec *d = &recs[i];
        rd_file *f = &out->joliet[i - 2];
        CHECK(d->flags == 0, "Joliet: entry %zu is not a plain file\n", i);
        CHECK(d->id_len % 2 == 0 && d->id_len <= 128, "Joliet: identifier length %u\n", d->id_len);
        for (size_t k = 0; k < d->id_len / 2u; k++) {
            CHECK(d->id[2 * k] == 0, "Joliet: non-ASCII character (tests use ASCII)\n");
            char c = (char)d->id[2 * k + 1];
            CHECK(c >= 0x20 && !strchr("*/:;?\\", c), "Joliet: forbidden character '%c'\n", c);
            f->name[k] = c;
        }
        CHECK(d->su_len < 2, "Joliet: '%s' carries System Use\n", f->name);
        f->extent = d->extent;
        f->size = d->size;
        if (i > 2)
            CHECK(ecma_order(out->joliet[i - 3].name, f->name) < 0, "Joliet: '%s' sorted after '%s'\n",
                  out->joliet[i - 3].name, f->name);
    }

    /* ---- data: inside the image, after the metadata, no overlap ---- */
    uint32_t meta_end = w.ce_block + 1;
    if (out->iso_root + out->iso_root_size / BLK > meta_end)
        meta_end = out->iso_root + out->iso_root_size / BLK;
    if (out->joliet_root + out->joliet_root_size / BLK > meta_end)
        meta_end = out->joliet_root + out->joliet_root_size / BLK;
    static uint8_t used[1u << 16];
    memset(used, 0, sizeof used);
    for (size_t i = 0; i < out->n; i++) {
        rd_file *f = &out->iso[i];
        const rd_file *j = rd_find(out->joliet, out->n, f->name);
        CHECK(j, "'%s' is in the Rock Ridge tree but not in Joliet\n", f->name);
        CHECK(j->extent == f->extent && j->size == f->size, "'%s': trees disagree on extent/size\n", f->name);
        CHECK(f->extent < out->volume_sectors, "'%s': extent %u outside the volume\n", f->name, f->extent);
        CHECK((uint64_t)f->extent * BLK + f->size <= len, "'%s' runs past the end\n", f->name);
        f->data = img + (size_t)f->extent * BLK;
        out->joliet[j - out->joliet].data = f->data;
        if (f->size == 0)
            continue;
        CHECK(f->extent >= meta_end, "'%s' data at %u overlaps metadata (ends %u)\n", f->name, f->extent, meta_end);
        uint64_t secs = ((uint64_t)f->size + BLK - 1) / BLK;
        for (uint64_t k = 0; k < secs; k++) {
            uint64_t sec = f->extent + k;
            if (sec < (1u << 19)) {
                CHECK(!(used[sec / 8] & (1u << (sec % 8))), "'%s' overlaps another file at sector %llu\n", f->name,
                      (unsigned long long)sec);
                used[sec / 8] |= (uint8_t)(1u << (sec % 8));
            }
        }
        size_t pad = (size_t)(secs * BLK - f->size);
        CHECK(all_zero(f->data + f->size, pad), "'%s': padding after the data is not zero\n", f->name);
    }
    /* names: unique in both trees */
    static rd_file sorted[RD_MAX_FILES];
    memcpy(sorted, out->iso, out->n * sizeof *sorted);
    qsort(sorted, out->n, sizeof *sorted, cmp_rd_name);
    for (size_t i = 1; i < out->n; i++)
        CHECK(strcmp(sorted[i - 1].name, sorted[i].name) != 0, "Rock Ridge name '%s' twice\n", sorted[i].name);
}

int rd_try_parse(const uint8_t *img, size_t len, rd_image *out) {
    jmp_buf jb;
    if (setjmp(jb)) {
        soft_fail = NULL;
        return -1;
    }
    soft_fail = &jb;
    rd_parse(img, len, out);
    soft_fail = NULL;
    return 0;
}

const rd_file *rd_find(const rd_file *files, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(files[i].name, name) == 0)
            return &files[i];
    return NULL;
}
