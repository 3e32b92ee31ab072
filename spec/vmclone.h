/* `vm clone`: the spec of a new VM made from a defined one.  Pure (JSON in,
 * JSON out): the daemon parses the result like any spec and checks it
 * against the node as at create. */
#pragma once

#include <jansson.h>

#include "error.h"

/* The keys of `vm.clone`'s "options": create's, for what may differ from
 * the source (NULL-terminated). */
extern const char *const sv_vmclone_keys[];

/* The spec of a clone named `name` of the VM whose spec is `src` (the form
 * sv_vmspec_to_json() gives; borrowed), with `options` (an object of
 * sv_vmclone_keys, borrowed; NULL for none) applied.  What differs from a
 * copy of src (docs/lifecycle.md, "Clone"):
 *   - name; hostname dropped (the new name's, as at create) unless given;
 *   - owner and slurm_job dropped unless given (the source's are not the
 *     clone's: a job's epilog removes the job's VM, not its copies);
 *   - gpus dropped unless given (the source keeps its own);
 *   - nets: each NIC's mac= dropped (a new one is derived from the new name
 *     at create) and a nat NIC's ip= dropped (a new address is allocated);
 *     a bridge NIC with a static ip= is refused (-EINVAL: two guests with
 *     one address) unless nets is given;
 *   - ssh_keys in options add to the source's; every other option replaces.
 * *ret: a new reference.  -EINVAL (err) for an option that is not a clone's
 * or a bad NIC, -ENOMEM. */
int sv_vmclone_spec(json_t *src, const char *name, json_t *options, json_t **ret, qv_error *err);
