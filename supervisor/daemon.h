/* The qvisor daemon: one libuv loop that owns the control socket and, in
 * later parts, every VM.  Runs in the foreground (systemd Type=notify). */
#pragma once

#include <stdbool.h>

#include "error.h"
#include "log.h"

typedef struct sv_daemon_options {
    const char *config_path;
    bool config_explicit;  /* a missing file is an error only when asked for by name */
    int log_level_override; /* -1: take log_level from the config */
} sv_daemon_options;

/* Runs until SIGTERM or SIGINT; VMs are left running.  Returns 0 after a
 * clean stop, or a negative errno with err set when the daemon could not
 * start: -QV_ECONFIG (bad config), -EEXIST (another daemon holds the run
 * directory), -EADDRINUSE, -EACCES, … */
int sv_daemon_run(const sv_daemon_options *opts, qv_error *err);
