/* The node's event stream (docs/events.md): every event the daemon emits
 * gets the next sequence number and a timestamp and is kept in a bounded
 * ring (the last SV_EVENTS_RING); subscribers follow it on control
 * connections handed over as streams (frames of common/frame.h: one 'D'
 * frame per event, its JSON text), and in-process listeners (`vm wait`) are
 * called with each event.
 *
 * A subscriber is a cursor into the ring, never a queue of its own: it is
 * sent what it has not seen while its connection takes it (at most
 * SV_EVENTS_QUEUED bytes queued at once), and one that falls further behind
 * than the ring reaches is told how many it lost (an 'N' frame
 * {"lost": N, "next": SEQ}) and goes on from the oldest kept.  So a slow or
 * stuck subscriber costs the daemon nothing but its cursor, and a
 * subscriber that reconnects with the last sequence number it saw gets
 * exactly the events after it that are still kept.  All on the loop. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"

#define SV_EVENTS_RING 1024u          /* events kept for subscribers that resume */
#define SV_EVENTS_QUEUED (64u << 10)  /* bytes queued per subscriber before it waits */
#define SV_EVENTS_MAX_SUBSCRIBERS 1024u

typedef struct sv_events sv_events;

int sv_events_new(uv_loop_t *loop, sv_events **ret);
/* Ends every subscription ({"reason": "daemon"}) and frees; NULL is fine. */
void sv_events_free(sv_events *e);

/* Emits an event: `fields` (an object, reference stolen; NULL: none) gets
 * "seq", "time" (UTC, ms), "type" and, when vm is not NULL, "vm".  Returns
 * the event's sequence number (0 when out of memory: the event is lost,
 * and so logged). */
uint64_t sv_events_emit(sv_events *e, const char *type, const char *vm, json_t *fields);

/* The sequence number the next event will get. */
uint64_t sv_events_next_seq(const sv_events *e);

/* Follows the stream on fd (taken in every case): with `resume`, first the
 * events after sequence number `after` that are still kept (0: all that
 * are kept; one beyond the newest: none), else only those from now on;
 * then each new one.  Only the events of the VMs named in vms (n_vms 0:
 * all events, also those of no VM).  -EBUSY (err set) with
 * SV_EVENTS_MAX_SUBSCRIBERS subscribers already. */
int sv_events_subscribe(sv_events *e, int fd, bool resume, uint64_t after, const char *const *vms, size_t n_vms,
                        qv_error *err);
size_t sv_events_subscribers(const sv_events *e);

/* In-process listeners: fn is called with every event emitted from now on
 * (the object is borrowed for the call; fn may remove any listener, itself
 * included, and emit nothing).  Returns a handle for sv_events_unlisten, or
 * NULL when out of memory. */
typedef void (*sv_events_fn)(const json_t *event, void *userdata);
typedef struct sv_events_listener sv_events_listener;
sv_events_listener *sv_events_listen(sv_events *e, sv_events_fn fn, void *userdata);
void sv_events_unlisten(sv_events *e, sv_events_listener *l);
