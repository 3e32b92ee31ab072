/* One VM's files (see registry.h): state.json and spec.json written and
 * read through the instance directory's fd. */
#include "supervisor/vm/registry-internal.h"
#include "supervisor/vm/lifecycle.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "qv-build.h"
#include "util.h"
#include "host/firmware.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/seed.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- persistence ----------------------------------------------------------- */


/* state.json of vm, as if it were in `state`. */
json_t *reg__state_json_as(const sv_vm *vm, sv_vm_state state) {
    const sv_vm_run *run = &vm->run;
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:s?, s:{s:i, s:I, s:I, s:i, s:b, s:I, s:I, s:i}}", "state",
                     sv_vm_state_name(state), "created_at", (json_int_t)vm->created_at, "disk_size",
                     (json_int_t)vm->disk_size, "base_size", (json_int_t)vm->base_size, "base_mtime_ns",
                     (json_int_t)vm->base_mtime_ns, "last_exit", vm->last_exit, "run", "pid", run->pid,
                     "start_ticks", (json_int_t)run->start_ticks, "started_at", (json_int_t)run->started_at,
                     "ssh_port", run->ssh_port, "stop_force", run->stop_force, "stop_timeout_ms",
                     (json_int_t)run->stop_timeout_ms, "restarts", (json_int_t)run->restarts, "numa_node",
                     run->numa_node);
    if (j && vm->disk_ino) {
        json_object_set_new(j, "disk_dev", json_integer((json_int_t)vm->disk_dev));
        json_object_set_new(j, "disk_ino", json_integer((json_int_t)vm->disk_ino));
    }
    if (j && vm->kernel_source)
        json_object_set_new(j, "kernel_source", json_string(vm->kernel_source));
    if (j && vm->initrd_source)
        json_object_set_new(j, "initrd_source", json_string(vm->initrd_source));
    return j;
}

/* The JSON text of j, with a final newline (in the room of the NUL). */
static char *json_text(json_t *j, size_t *ret_len) {
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (!text)
        return NULL;
    size_t len = strlen(text);
    text[len] = '\n'; /* room of the NUL; written length includes it */
    *ret_len = len + 1;
    return text;
}

char *sv_vm_state_text(const sv_vm *vm, sv_vm_state state, size_t *ret_len) {
    json_t *st = reg__state_json_as(vm, state);
    char *text = json_text(st, ret_len);
    json_decref(st);
    return text;
}

/* Files of an instance directory are reached through the directory's fd,
 * opened without following a symlink in its place (issue 15: someone who
 * can write the instances directory must not redirect qvisor's writes). */
static int write_text(const char *dir, const char *file, const char *text, size_t len, unsigned flags,
                      const char *prepared, int *ret_old, qv_error *err) {
    if (ret_old)
        *ret_old = -1;
    _cleanup_close_ int dfd = qv_open_dir_nofollow(dir);
    int r = dfd < 0 ? dfd : qv_write_file_atomic_keep_old_at(dfd, file, text, len, 0640, flags, prepared, ret_old);
    if (r < 0)
        return qv_error_set(err, -r, "cannot write %s/%s: %s", dir, file, strerror(-r));
    return 0;
}

char *sv_vm_spec_text(const sv_vmspec *spec, size_t *ret_len) {
    json_t *j = sv_vmspec_to_json(spec);
    char *text = json_text(j, ret_len);
    json_decref(j);
    return text;
}

int sv_vm_spec_write(const char *dir, const char *text, size_t len, qv_error *err) {
    return write_text(dir, SV_VM_SPEC_FILE, text, len, QV_ATOMIC_DURABLE, NULL, NULL, err);
}

int sv_vm_state_write(const char *dir, const char *text, size_t len, bool durable, qv_error *err) {
    return sv_vm_state_write_keep_old(dir, text, len, durable, NULL, err);
}

int sv_vm_state_write_keep_old(const char *dir, const char *text, size_t len, bool durable, int *ret_old,
                               qv_error *err) {
    return write_text(dir, SV_VM_STATE_FILE, text, len, durable ? QV_ATOMIC_DURABLE : QV_ATOMIC_ORDERED,
                      durable ? NULL : SV_VM_STATE_NEXT, ret_old, err);
}

int sv_vm_state_prepare(const char *dir) {
    _cleanup_close_ int dfd = qv_open_dir_nofollow(dir);
    return dfd < 0 ? dfd : qv_atomic_prepare_at(dfd, SV_VM_STATE_NEXT, 0640);
}

void sv_vm_state_write_group(sv_vm_state_file *f, size_t n) {
    qv_atomic *a = calloc(n, sizeof *a);
    int *ret = calloc(n, sizeof *ret);
    size_t *which = calloc(n, sizeof *which);
    if (!a || !ret || !which) {
        for (size_t i = 0; i < n; i++) /* one by one, then */
            f[i].status = sv_vm_state_write(f[i].dir, f[i].text, f[i].len, true, &f[i].err);
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        _cleanup_close_ int dfd = qv_open_dir_nofollow(f[i].dir);
        int r = dfd < 0 ? dfd : qv_atomic_begin_spare_at(dfd, SV_VM_STATE_FILE, SV_VM_STATE_SPARE, 0640, &a[k]);
        if (r == 0 && (r = qv_write_all(a[k].fd, f[i].text, f[i].len)) < 0)
            qv_atomic_abort(&a[k]);
        f[i].status = r < 0 ? qv_error_set(&f[i].err, -r, "cannot write %s/%s: %s", f[i].dir, SV_VM_STATE_FILE,
                                           strerror(-r))
                            : 0;
        if (r == 0)
            which[k++] = i;
    }
    qv_atomic_commit_group(a, k, ret);
    for (size_t j = 0; j < k; j++) {
        sv_vm_state_file *fi = &f[which[j]];
        if (ret[j] < 0)
            fi->status = qv_error_set(&fi->err, -ret[j], "cannot write %s/%s: %s", fi->dir, SV_VM_STATE_FILE,
                                      strerror(-ret[j]));
    }
out:
    free(a);
    free(ret);
    free(which);
}

int sv_vm_stop_mark_write(const char *run_dir, const sv_vm *vm) {
    json_t *j = json_pack("{s:i, s:I, s:b, s:I}", "pid", vm->run.pid, "start_ticks",
                          (json_int_t)vm->run.start_ticks, "force", vm->run.stop_force, "timeout_ms",
                          (json_int_t)vm->run.stop_timeout_ms);
    size_t len;
    _cleanup_free_ char *text = json_text(j, &len);
    json_decref(j);
    if (!text)
        return -ENOMEM;
    qv_error err = {0};
    return write_text(run_dir, SV_VM_STOP_MARK, text, len, QV_ATOMIC_ORDERED, NULL, NULL, &err);
}

bool sv_vm_stop_mark_apply(const char *run_dir, sv_vm *vm) {
    if (vm->state != SV_VM_RUNNING && vm->state != SV_VM_PAUSED)
        return false;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", run_dir, SV_VM_STOP_MARK) >= (int)sizeof path ||
        access(path, F_OK) < 0)
        return false;
    qv_error err = {0};
    json_t *j = reg__read_json(run_dir, SV_VM_STOP_MARK, &err);
    json_t *pid = json_object_get(j, "pid"), *ticks = json_object_get(j, "start_ticks");
    bool ours = json_is_integer(pid) && json_is_integer(ticks) && vm->run.pid > 0 &&
                json_integer_value(pid) == vm->run.pid &&
                (uint64_t)json_integer_value(ticks) == vm->run.start_ticks;
    if (ours) {
        vm->state = SV_VM_STOPPING; /* what state.json says once the write of the stop is done */
        vm->run.stop_force = json_is_true(json_object_get(j, "force"));
        json_int_t t = json_integer_value(json_object_get(j, "timeout_ms"));
        vm->run.stop_timeout_ms = t > 0 ? (uint64_t)t : 0;
    }
    json_decref(j);
    return ours;
}

int reg__write_json(const char *dir, const char *file, json_t *j, qv_error *err) {
    size_t len;
    _cleanup_free_ char *text = json_text(j, &len);
    if (!text)
        return qv_error_set(err, ENOMEM, "out of memory");
    return write_text(dir, file, text, len, QV_ATOMIC_DURABLE, NULL, NULL, err);
}

/* spec.json holds user-data and network-config (each bounded by the request
 * size); anything bigger was not written by qvisor */
#define INSTANCE_JSON_MAX (128u << 20)

json_t *reg__read_json(const char *dir, const char *file, qv_error *err) {
    _cleanup_close_ int dfd = qv_open_dir_nofollow(dir);
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = dfd < 0 ? dfd : qv_read_regular_file_at(dfd, file, INSTANCE_JSON_MAX, &text, &len);
    if (r < 0) {
        qv_error_set(err, EBADMSG, "%s/%s: %s", dir, file,
                     r == -EINVAL ? "not a regular file" : r == -EFBIG ? "too large" : strerror(-r));
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        qv_error_set(err, EBADMSG, "%s/%s: %s", dir, file, je.text);
    return j;
}


/* An OpenSSH ed25519 private key is some 400 bytes. */
#define SSH_KEY_MAX (16u << 10)

int sv_vm_ssh_key_read(const sv_vm *vm, char **ret, qv_error *err) {
    if (!vm->spec->seed || !vm->spec->ssh_generate)
        return qv_error_set(err, ENOENT, "VM '%s' has no SSH key pair of qvisor's (vm create --ssh makes one)",
                            vm->name);
    /* neither the instance directory, its ssh/ nor the key may be a link:
     * what a user is given is the file create made, nothing a link names */
    _cleanup_close_ int dfd = qv_open_dir_nofollow(vm->dir);
    _cleanup_close_ int sfd = dfd < 0 ? dfd : qv_open_dir_at(dfd, SV_VM_SSH_DIR);
    const char *file = strrchr(SV_VM_SSH_KEY, '/') + 1;
    int r = sfd < 0 ? sfd : qv_read_regular_file_at(sfd, file, SSH_KEY_MAX, ret, NULL);
    if (r < 0)
        return qv_error_set(err, r == -ENOENT ? ENOENT : EIO, "cannot read the SSH key of VM '%s' (%s/%s): %s",
                            vm->name, vm->dir, SV_VM_SSH_KEY,
                            r == -EINVAL ? "not a regular file" : r == -EFBIG ? "too large" : strerror(-r));
    return 0;
}
