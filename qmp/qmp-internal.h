/* Internals shared by the QMP and guest-agent clients: io.h (the stream
 * wrapper, the deadline heap, message helpers), what qga.c takes from qmp.c,
 * and hooks the fuzzer and the tests drive directly.  Not part of the public
 * API. */
#pragma once

#include "io.h"
#include "qga.h"
#include "qmp.h"

_Static_assert(QMP__EDISCONNECTED == QMP_EDISCONNECTED, "io.h and qmp.h agree");
_Static_assert(QMP__ETIMEDOUT == QMP_ETIMEDOUT, "io.h and qmp.h agree");
_Static_assert(QMP__ECANCELED == QMP_ECANCELED, "io.h and qmp.h agree");

/* ---- Shared by both clients, defined in qmp.c ---- */

/* Fills *ret from an "error" member; -EPROTO if it is malformed. */
int qmp__parse_error(json_t *error, qmp_error *ret);

/* ---- The fast path for query-blockstats (scan.c) ----
 * Both return -1 for anything but the plain shape QEMU writes; the line
 * then goes the ordinary way (jansson), which decides what it is. */

/* A line that is exactly {"return": VALUE, "id": N}: VALUE's span and N. */
int qmp__scan_reply(const char *line, size_t len, const char **ret_value, size_t *ret_value_len, uint64_t *ret_id);
/* query-blockstats' VALUE into v[], each device name copied to names[i]:
 * what the ordinary way (qmp__parse_blockstats) gives for it. */
int qmp__scan_blockstats(const char *s, size_t len, qmp_blockstats *v, char (*names)[QMP_BLOCK_NAME_MAX + 1],
                         size_t *ret_n);
/* The ordinary way: a parsed result into v[] (names borrowed from it);
 * QMP_EBADREPLY.  qmp.c */
int qmp__parse_blockstats(json_t *result, qmp_blockstats *v, size_t *ret_n);

/* ---- Hooks for the fuzzer and white-box tests ---- */

/* Processes bytes as if read from the stream. */
void qmp__feed(qmp_conn *conn, const char *buf, size_t len);
void qga__feed(qga_conn *conn, const char *buf, size_t len);
/* Makes the guest agent client use a fixed sync id (0: random again). */
void qga__set_sync_id(qga_conn *conn, uint64_t id);
