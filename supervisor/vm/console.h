/* The serial-console relay: bytes between a client's stream (a framed sink,
 * common/frame.h) and a connection to QEMU's console socket, with
 * bounded buffers both ways (docs/console.md):
 *
 *   guest -> client  QEMU is read all the time, whatever the client does (a
 *                    guest writing to a serial line nobody drains waits for
 *                    it); past out_max queued for the client, output is
 *                    dropped and counted, and a notice {"dropped": N} goes out
 *                    once the queue is below out_resume again.
 *   client -> guest  past in_max queued for QEMU (a guest that does not read
 *                    its console), the client is not read until the queue is
 *                    below in_resume: keystrokes are held back, never lost. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sv_relay sv_relay;

typedef struct sv_relay_limits {
    size_t out_max, out_resume; /* bytes queued for the client */
    size_t in_max, in_resume;   /* bytes queued for QEMU */
    uint64_t eof_grace_ms;      /* QEMU closed the console: wait this long for
                                 * sv_relay_end() (the VM's end) before ending
                                 * with {"reason": "closed"} */
} sv_relay_limits;

#define SV_RELAY_LIMITS_DEFAULT                                                                                 \
    (sv_relay_limits) {                                                                                         \
        .out_max = 1u << 20, .out_resume = 256u << 10, .in_max = 64u << 10, .in_resume = 16u << 10,             \
        .eof_grace_ms = 3000                                                                                    \
    }

/* Called once the relay is over and both connections are closed; the relay
 * is freed right after. */
typedef void (*sv_relay_end_fn)(void *userdata);

/* Takes client_fd and qemu_fd (connected stream sockets) in every case.
 * On failure on_end is not called. */
int sv_relay_new(uv_loop_t *loop, int client_fd, int qemu_fd, const sv_relay_limits *lim, sv_relay_end_fn on_end,
                 void *userdata, sv_relay **ret);
/* Ends the relay: `end` (stolen, {"reason": …}) goes to the client as the
 * last frame; input already queued for QEMU is still written (at most
 * SV_FSINK_LINGER_MS).  Idempotent. */
void sv_relay_end(sv_relay *r, json_t *end);
/* Guest output dropped so far because the client fell behind. */
uint64_t sv_relay_dropped(const sv_relay *r);
