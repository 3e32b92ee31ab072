/* An ISO9660 reader for the tests, written from ECMA-119, SUSP 1.10,
 * RRIP 1.10 (RRIP_1991A) and the Joliet specification, sharing no code with
 * cloudinit/iso9660.c.  It fails the current cmocka test on any deviation:
 * both-endian pairs that disagree, records crossing sectors, odd lengths,
 * wrong order, path tables that do not match the directories, a broken SUSP
 * chain, padding that is not zero. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define RD_MAX_FILES 4096

typedef struct rd_file {
    char name[256];      /* Rock Ridge NM (ISO tree) or decoded Joliet name */
    char iso_id[64];     /* ISO tree only: the raw identifier */
    uint32_t extent;
    uint32_t size;
    uint32_t mode;       /* ISO tree only: PX mode */
    const uint8_t *data; /* points into the image */
} rd_file;

typedef struct rd_image {
    char label[33];        /* PVD volume id, trailing spaces removed */
    char joliet_label[17]; /* SVD volume id decoded from UCS-2 */
    uint32_t volume_sectors;
    uint32_t iso_root, iso_root_size, joliet_root, joliet_root_size;
    uint32_t root_mode;
    char creation[18]; /* PVD creation date, 16 digits + NUL */
    size_t n;          /* files in each tree (checked equal) */
    rd_file iso[RD_MAX_FILES];
    rd_file joliet[RD_MAX_FILES];
} rd_image;

/* Parses and checks img; fills *out (large: allocate it). */
void rd_parse(const uint8_t *img, size_t len, rd_image *out);

/* Like rd_parse but returns -1 on the first failed check instead of failing
 * the test (no message), 0 when the image passes. */
int rd_try_parse(const uint8_t *img, size_t len, rd_image *out);

/* The file with this Rock Ridge / Joliet name, or NULL. */
const rd_file *rd_find(const rd_file *files, size_t n, const char *name);
