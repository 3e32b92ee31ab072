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

/* ---- Hooks for the fuzzer and white-box tests ---- */

/* Processes bytes as if read from the stream. */
void qmp__feed(qmp_conn *conn, const char *buf, size_t len);
void qga__feed(qga_conn *conn, const char *buf, size_t len);
/* Makes the guest agent client use a fixed sync id (0: random again). */
void qga__set_sync_id(qga_conn *conn, uint64_t id);
