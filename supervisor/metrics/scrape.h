/* One scrape: the engine's sample of every VM (supervisor/vm/stats.h, with
 * its deadline on QEMU and the agents), then the node as `node status`
 * sees it (capacity, allocation, GPUs, pools, storage pools), rendered as
 * the exposition text (render.h).  The HTTP server and the node.metrics
 * method both start one per request; nothing is cached between scrapes
 * and nothing runs between them. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "spec/config.h"
#include "supervisor/vm/registry.h"
#include "supervisor/vm/vm.h"

/* How long a scrape waits for each QEMU (query-blockstats) and guest agent:
 * one that answers later is left out of that scrape. */
#define SV_SCRAPE_DEADLINE_MS 1000u

/* The daemon's state a scrape reads, borrowed for the scrape's life (the
 * daemon stops scrapes before it frees any of it). */
typedef struct sv_scrape_ctx {
    sv_registry *registry;
    sv_vmctl *vmctl;
    const sv_config *config; /* a reference is taken */
    time_t started_wall;     /* the daemon's start */
} sv_scrape_ctx;

/* The text (taken by the callee, NUL-terminated) and its length, or a
 * negative errno and NULL. */
typedef void (*sv_scrape_done_fn)(int status, char *text, size_t len, void *userdata);

typedef struct sv_scrape sv_scrape;

/* Starts a scrape.  done runs exactly once unless cancelled, possibly
 * before this returns (no VM to ask).  Returns the scrape while it waits,
 * NULL once done has run. */
sv_scrape *sv_scrape_start(const sv_scrape_ctx *ctx, sv_scrape_done_fn done, void *userdata);
/* done will not be called; the scrape frees itself when its queries end. */
void sv_scrape_cancel(sv_scrape *s);
