/* The daemon's state, shared by daemon.c and the files that implement its
 * control methods (the files of supervisor/api/).  Not for other modules. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "spec/config.h"
#include "spec/vmspec.h"
#include "ctl/events.h"
#include "ctl/server.h"
#include "supervisor/daemon.h"
#include "supervisor/metrics/http.h"
#include "supervisor/metrics/scrape.h"
#include "supervisor/vm/registry.h"
#include "supervisor/vm/serlog.h"
#include "supervisor/vm/vm.h"

typedef struct sv_daemon {
    uv_loop_t loop;
    const sv_daemon_options *opts;
    sv_config *config;
    sv_registry *registry;
    sv_vmctl *vmctl;
    sv_ctl_server *ctl;
    sv_metrics_server *metrics; /* NULL unless metrics.listen */
    sv_logstream *logstreams; /* vm.log streams still open */
    sv_events *events;        /* the event stream (docs/events.md) */
    struct sv_api_wait *waits; /* vm.wait requests waiting (api/events.c) */
    uv_signal_t signals[3];
    size_t n_signals;
    int lock_fd;
    uint64_t started_ms;
    time_t started_wall;
    bool stopping;
} sv_daemon;

typedef void (*method_fn)(sv_daemon *d, sv_ctl_req *req, json_t *params);
/* A method on one VM, the one params.name names: the dispatch looked it up
 * once, authorised the peer for it, and hands the handler that very VM
 * (borrowed; valid for the call, the loop being single-threaded). */
typedef void (*vm_method_fn)(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);

/* May peer call method (on vm, the VM it names; NULL for a method on no
 * VM, or a name that is no VM)?  The one place that says so
 * (docs/protocol.md, "Who may do what"): reads are anyone's; root, the
 * daemon's own uid and the socket group (peer->may_write) may call
 * everything; the VM's owner (its spec's owner, a uid) may call the methods
 * on that VM that act on it but neither create nor remove it.  peer->uid is
 * the kernel's (SO_PEERCRED), never anything the client said.  0, or -EPERM
 * with err saying why (socket_group names the group in it), -ENOSYS for an
 * unknown method.  supervisor/daemon.c */
int sv_authorize(const sv_ctl_peer *peer, const char *method, const sv_vm *vm, const char *socket_group,
                 qv_error *err);

/* The "name" param, validated (what names it in the message); replies and
 * returns NULL when bad.  supervisor/api/params.c */
const char *sv_api_name_param(sv_ctl_req *req, json_t *params, const char *what);
/* The file params[key] names among the request's descriptors (see
 * sv_ctl_req_take_fd), checked to be a regular file (what and label name it
 * in the error, -EINVAL: exit 65).  1 with *ret_fd, 0 when absent.
 * supervisor/api/params.c */
int sv_api_take_file(sv_ctl_req *req, json_t *params, const char *key, const char *what, const char *label,
                     int *ret_fd, qv_error *err);

/* supervisor/api/image.c */
void sv_api_image_list(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_image_import(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_image_remove(sv_daemon *d, sv_ctl_req *req, json_t *params);
/* supervisor/api/vm.c */
void sv_api_vm_create(sv_daemon *d, sv_ctl_req *req, json_t *params);
/* What vm.create checks of a complete spec against the node (GPUs, NICs:
 * MACs and nat addresses filled in, admission with every defined VM, the
 * storage pool's room; an "admission" event of `op` on a refusal): 0, or
 * a negative errno with err. */
int sv_api_vm_admit(sv_daemon *d, sv_vmspec *spec, const char *op, qv_error *err);
/* api/clone.c: vm clone, image create --from-vm */
void sv_api_vm_clone(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_image_create(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_vm_list(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_vm_show(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_remove(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_start(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_stop(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_restart(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_pause(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_resume(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
/* supervisor/api/snapshot.c */
void sv_api_vm_snapshot_create(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_snapshot_list(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_snapshot_revert(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_snapshot_remove(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_console(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_log(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_ssh_key(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
/* supervisor/api/guest.c */
void sv_api_vm_exec(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_exec_status(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_file_open(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_file_read(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_file_write(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_copy_in(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_copy_out(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_file_close(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
/* supervisor/api/vm-edit.c */
void sv_api_vm_edit(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
void sv_api_vm_resize(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
/* What a scrape reads of the daemon, as of now.  supervisor/daemon.c */
sv_scrape_ctx sv_daemon_scrape_ctx(const sv_daemon *d);

/* supervisor/api/node.c */
void sv_api_node_status(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_node_metrics(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_gpu_list(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_cleanup(sv_daemon *d, sv_ctl_req *req, json_t *params);
/* supervisor/api/events.c */
void sv_api_events_subscribe(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_vm_wait(sv_daemon *d, sv_ctl_req *req, sv_vm *vm, json_t *params);
/* Answers every vm.wait still waiting (ECANCELED): the daemon is stopping. */
void sv_api_waits_cancel(sv_daemon *d);
/* An event of the daemon's own (fields: reference stolen); a no-op before
 * the hub exists or once the daemon stops. */
void sv_daemon_emit(sv_daemon *d, const char *type, const char *vm, json_t *fields);

/* supervisor/api/net.c */
void sv_api_net_list(sv_daemon *d, sv_ctl_req *req, json_t *params);
void sv_api_net_teardown(sv_daemon *d, sv_ctl_req *req, json_t *params);
