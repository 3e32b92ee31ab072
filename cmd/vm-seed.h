/* `qvisor vm create` options for the cloud-init seed that name files: the
 * CLI reads them (the daemon may run elsewhere and as another user), checks
 * them as the daemon will, and sends their content. */
#pragma once

#include <jansson.h>

#include "error.h"

/* Appends the public keys of path to keys (a JSON array): an id_*.pub or
 * an authorized_keys-style file, one key per line, blank lines and '#'
 * comments skipped.  Errors name the file (and line): -EINVAL bad content
 * (exit 65), -ENOENT/-EACCES unreadable (66/77). */
int qv_cli_read_ssh_keys(const char *path, json_t *keys, qv_error *err);

/* Reads a user-data (what = "user-data") or network-config file (at most
 * CI_INPUT_MAX bytes, UTF-8 text) and checks it like the daemon will
 * (ci_user_data_check / ci_yaml_mapping_check).  *ret is a new JSON
 * string.  Errors as above. */
int qv_cli_read_seed_file(const char *what, const char *path, json_t **ret, qv_error *err);
