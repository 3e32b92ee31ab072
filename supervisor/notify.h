/* systemd readiness notification, written by hand (no libsystemd): one
 * datagram to $NOTIFY_SOCKET.  Does nothing when the variable is unset. */
#pragma once

/* state: "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=…" (newline-separated
 * assignments are allowed).  Returns 1 if sent, 0 if not under systemd,
 * negative errno on failure. */
int sv_notify(const char *state);
