/* Disk snapshots (snapshot.h, docs/snapshots.md): the engine's side.  The
 * table's actions `snapshot` and `revert` (a VM without QEMU: qemu-img on a
 * worker, the VM busy meanwhile) and `live-snapshot` (QEMU runs: QMP, the
 * guest's filesystems frozen through its agent and always thawed), the
 * thaw a re-adopting daemon owes a guest a dead daemon left frozen, and the
 * list. */
#include "supervisor/vm/engine.h"
#include "supervisor/vm/snapshot.h"

#define DISK_NODE "disk0"                /* qemuargv.c: the system disk's qcow2 node */
#define FREEZE_TIMEOUT_MS 30000u         /* guest-fsfreeze-freeze: syncs every filesystem first */
#define THAW_TIMEOUT_MS 10000u
#define THAW_ATTEMPTS 5u                 /* thaw + status, this many times in a row… */
#define THAW_RETRY_MS 2000u              /* …this far apart */
#define ADOPT_THAW_RETRY_MS 5000u        /* after a re-adoption: until it works or QEMU ends */
#define SNAPSHOT_QMP_TIMEOUT_MS 120000u  /* an internal snapshot updates every cluster's refcount */
#define SNAPMETA_MAX (1u << 20)

typedef enum snap_kind {
    KIND_OFFLINE, /* qemu-img on a worker */
    KIND_LIVE,    /* QMP, maybe frozen */
    KIND_THAW,    /* re-adopted: a guest left frozen */
} snap_kind;

struct snap_op {
    vmrt *rt;
    snap_kind kind;
    sv_snapshot_op op;
    char snap[SV_SNAPSHOT_NAME_MAX + 1];
    sv_vm_state state;     /* the VM's when it began (recorded) */
    sv_vm_done_fn done;
    void *userdata;
    uv_timer_t timer;      /* thaw retries */
    uv_work_t work;
    /* the worker's copies */
    char *dir;
    sv_config *config;
    uint64_t disk_dev, disk_ino;
    int64_t started;
    uint64_t disk_size;
    int status;            /* the worker's, or the QMP snapshot's */
    qv_error err;
    /* live */
    bool freeze_sent;      /* guest-fsfreeze-freeze went out: thawed whatever came back */
    bool frozen;           /* the agent said it froze at least one filesystem */
    bool thawed;
    bool thaw_failed;      /* gave up: the freeze mark stays for the next daemon */
    unsigned thaw_tries;
    char agent[160];       /* what the agent did, in words */
    json_t *snaps;         /* live: the image's snapshots before the change (query-block) */
    bool working;          /* op->work is on a worker: its after-callback ends the operation */
    bool finished;
};

static const char *op_name(sv_snapshot_op op) {
    return op == SV_SNAPSHOT_CREATE ? "create" : op == SV_SNAPSHOT_REMOVE ? "remove" : "revert";
}

/* ---- the busy rule --------------------------------------------------------- */

int vm__snapshot_idle(vmrt *rt, bool stop, bool force, qv_error *err) {
    snap_op *op = rt->snap;
    if (!op)
        return 0;
    /* a forced stop quits QEMU whatever the guest's filesystems are doing;
     * a thaw after re-adoption goes first on the agent's channel, before
     * anything a stop sends there */
    if (stop && (force || op->kind != KIND_LIVE || rt->vm->state == SV_VM_STOPPING))
        return 0;
    if (op->kind == KIND_THAW)
        return qv_error_set(err, EBUSY,
                            "VM '%s': its guest's filesystems are being thawed (a daemon stopped during a snapshot "
                            "left them frozen); try again in a moment",
                            rt->vm->name);
    return qv_error_set(err, EBUSY, "VM '%s': snapshot '%s' is being %s; try again when that is done%s",
                        rt->vm->name, op->snap,
                        op->op == SV_SNAPSHOT_CREATE ? "taken" : op->op == SV_SNAPSHOT_REMOVE ? "removed" : "reverted to",
                        stop ? " (or stop it with --force)" : "");
}

int vm__check_snapshot(vmrt *rt, const vm_event_arg *a) {
    return vm__snapshot_idle(rt, false, false, a->err);
}

int vm__check_live_snapshot(vmrt *rt, const vm_event_arg *a) {
    int r = vm__snapshot_idle(rt, false, false, a->err);
    if (r < 0)
        return r;
    if (rt->qmp && !qmp_is_ready(rt->qmp)) /* connecting (a daemon that just started) */
        return qv_error_set(a->err, EBUSY, "VM '%s': its monitor is not connected yet; try again in a moment",
                            rt->vm->name);
    if (!rt->qmp)
        return qv_error_set(a->err, EIO, "VM '%s': its monitor is not connected; no snapshot through QEMU",
                            rt->vm->name);
    return 0;
}

/* ---- the end of an operation ---------------------------------------------- */

static void op_closed(uv_handle_t *h) {
    snap_op *op = h->data;
    vmrt *rt = op->rt;
    free(op->dir);
    sv_config_free(op->config);
    json_decref(op->snaps);
    free(op);
    vm__rt_unref(rt);
}

static void fsfreeze_mark_path(const vmrt *rt, char *buf, size_t len) {
    vm__run_path(rt, SV_VM_FSFREEZE_MARK, buf, len);
}

static void fsfreeze_mark_remove(const vmrt *rt) {
    char p[PATH_MAX];
    fsfreeze_mark_path(rt, p, sizeof p);
    if (p[0] && unlink(p) < 0 && errno != ENOENT)
        log_warning("VM %s: cannot remove %s: %s", rt->vm ? rt->vm->name : "?", p, strerror(errno));
}

/* Answers (result: stolen; NULL on failure) and lets the operation go. */
static void op_finish(snap_op *op, int status, const qv_error *err, json_t *result) {
    vmrt *rt = op->rt;
    if (op->finished) {
        json_decref(result);
        return;
    }
    op->finished = true;
    if (rt->snap == op)
        rt->snap = NULL;
    uv_timer_stop(&op->timer);
    if (rt->vm) {
        json_t *f = json_pack("{s:s, s:s, s:s}", "op", op->kind == KIND_THAW ? "thaw" : op_name(op->op), "snapshot",
                              op->snap, "result", status < 0 ? "failed" : "ok");
        if (f && op->kind != KIND_OFFLINE)
            json_object_set_new(f, "frozen", json_boolean(op->frozen));
        if (f && op->freeze_sent)
            json_object_set_new(f, "thawed", json_boolean(op->thawed));
        if (f && status < 0 && err)
            json_object_set_new(f, "error", json_string(err->msg));
        vm__emit(rt, "snapshot", f);
        if (status < 0)
            log_warning("VM %s: snapshot %s %s failed: %s", rt->vm->name, op->snap, op_name(op->op),
                        err ? err->msg : "?");
        else if (op->kind != KIND_THAW)
            log_info("VM %s: snapshot %s: %s done%s%s%s", rt->vm->name, op->snap, op_name(op->op),
                     op->agent[0] ? " (agent: " : "", op->agent, op->agent[0] ? ")" : "");
    }
    if (op->done) {
        if (status < 0)
            op->done(status, NULL, err, op->userdata);
        else
            op->done(0, result, NULL, op->userdata);
    }
    json_decref(result);
    uv_close((uv_handle_t *)&op->timer, op_closed);
}

static void op_fail(snap_op *op, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void op_fail(snap_op *op, int code, const char *fmt, ...) {
    qv_error err = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof err.msg, fmt, ap);
    va_end(ap);
    op_finish(op, -code, &err, NULL);
}

static json_t *op_result(snap_op *op) {
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "name", op->rt->vm ? op->rt->vm->name : "", "snapshot", op->snap,
                          "op", op_name(op->op), "how", op->kind == KIND_LIVE ? "qmp" : "qemu-img");
    if (j && op->op == SV_SNAPSHOT_CREATE) {
        json_object_set_new(j, "frozen", json_boolean(op->frozen));
        json_object_set_new(j, "agent", json_string(op->agent));
        json_object_set_new(j, "state", json_string(sv_vm_state_name(op->state)));
        if (op->freeze_sent)
            json_object_set_new(j, "thawed", json_boolean(op->thawed));
    }
    return j;
}

/* ---- records (snapshots.json): on a worker -------------------------------- */

/* Rewrites the records after a change: those whose snapshot is in
 * image_after, plus `add` (stolen; may be NULL). */
static int records_update(int dirfd, json_t *image_after, json_t *add, qv_error *err) {
    _cleanup_free_ char *text = NULL;
    int r = qv_read_file_at(dirfd, SV_VM_SNAPSHOTS_FILE, SNAPMETA_MAX, &text, NULL);
    if (r < 0 && r != -ENOENT) {
        json_decref(add);
        return qv_error_set(err, -r, "cannot read " SV_VM_SNAPSHOTS_FILE ": %s", strerror(-r));
    }
    json_t *records = sv_snapmeta_parse(text);
    if (add)
        json_array_append_new(records, add);
    json_t *pruned = NULL;
    json_decref(sv_snapshot_reconcile(image_after, records, &pruned));
    _cleanup_free_ char *out = sv_snapmeta_dump(pruned);
    json_decref(pruned);
    json_decref(records);
    if (!out)
        return qv_error_set(err, ENOMEM, "out of memory");
    r = qv_write_file_atomic_at(dirfd, SV_VM_SNAPSHOTS_FILE, out, strlen(out), 0640);
    if (r < 0)
        return qv_error_set(err, -r, "cannot write " SV_VM_SNAPSHOTS_FILE ": %s", strerror(-r));
    return 0;
}

static json_t *new_record(const snap_op *op, bool frozen) {
    return json_pack("{s:s, s:I, s:I, s:b, s:s, s:I}", "name", op->snap, "started", (json_int_t)op->started,
                     "finished", (json_int_t)time(NULL), "frozen", frozen, "state", sv_vm_state_name(op->state),
                     "disk_size", (json_int_t)op->disk_size);
}

/* image_snaps with the change applied: the new snapshot (at op->started)
 * added, or the removed one left out. */
static json_t *image_after(const snap_op *op, json_t *image_snaps) {
    json_t *after = json_array();
    size_t i;
    json_t *s;
    json_array_foreach(image_snaps, i, s)
        if (op->op != SV_SNAPSHOT_REMOVE || strcmp(json_string_value(json_object_get(s, "name")), op->snap) != 0)
            json_array_append(after, s);
    if (op->op == SV_SNAPSHOT_CREATE)
        json_array_append_new(after, json_pack("{s:s, s:I}", "name", op->snap, "time", (json_int_t)op->started));
    return after;
}

/* The instance directory and the disk in it, which must be the file create
 * made (a link into a storage pool is followed to that file only). */
static int open_disk(const char *dir, uint64_t dev, uint64_t ino, int flags, int *ret_dirfd, int *ret_fd,
                     qv_error *err) {
    _cleanup_close_ int dirfd = qv_open_dir_nofollow(dir);
    if (dirfd < 0)
        return qv_error_set(err, -dirfd, "cannot open %s: %s", dir, strerror(-dirfd));
    _cleanup_close_ int fd = qv_open_existing_at(dirfd, SV_VM_DISK_FILE, flags);
    if (fd < 0)
        return qv_error_set(err, -fd, "cannot open %s/" SV_VM_DISK_FILE ": %s", dir, strerror(-fd));
    struct stat st;
    if (ino && (fstat(fd, &st) < 0 || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino))
        return qv_error_set(err, EPERM, "%s/" SV_VM_DISK_FILE " is not the disk qvisor made for this VM", dir);
    *ret_dirfd = TAKE_FD(dirfd);
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* qemu-img info of the disk: its snapshots (new array) and virtual size. */
static int image_snapshots(const sv_config *c, const char *disk, json_t **ret, uint64_t *ret_size, qv_error *err) {
    json_t *info = NULL;
    int r = sv_qemu_img_info(c, disk, "qcow2", &info, err);
    if (r < 0)
        return r;
    r = sv_snapshot_parse_image(info, ret, err);
    if (r == 0 && ret_size)
        *ret_size = (uint64_t)json_integer_value(json_object_get(info, "virtual-size"));
    json_decref(info);
    return r;
}

/* ---- offline: qemu-img on a worker ---------------------------------------- */

/* qemu-img snapshot -a gives the disk the size it had when the snapshot
 * was taken.  One taken before a `vm resize` would leave a disk smaller
 * than the VM's spec says (and a later resize judged against the wrong
 * size), so the disk is grown back to its size before the revert: the
 * snapshot's data, and zeros past its end, as a grown disk has. */
static int regrow(snap_op *op, const char *disk, const char *opts, qv_error *err) {
    json_t *snaps = NULL;
    uint64_t now = 0;
    int r = image_snapshots(op->config, disk, &snaps, &now, err);
    json_decref(snaps);
    if (r < 0 || now >= op->disk_size)
        return r;
    char size[32];
    snprintf(size, sizeof size, "%llu", (unsigned long long)op->disk_size);
    const char *args[] = {"resize", "--image-opts", "-q", opts, size, NULL};
    qv_run_result res;
    if ((r = sv_qemu_img(op->config, args, NULL, NULL, &res, err)) < 0) {
        qv_error_prefix(err, "the disk was reverted to snapshot '%s', which is %llu bytes, but could not be "
                        "grown back to %llu bytes: ", op->snap, (unsigned long long)now,
                        (unsigned long long)op->disk_size);
        return r;
    }
    qv_run_result_free(&res);
    log_info("snapshot %s: the disk was %llu bytes at the snapshot, grown back to %llu", op->snap,
             (unsigned long long)now, (unsigned long long)op->disk_size);
    return 0;
}

static void offline_work(uv_work_t *w) {
    snap_op *op = w->data;
    qv_error *err = &op->err;
    int dirfd = -1, fd = -1;
    json_t *snaps = NULL;
    int r = open_disk(op->dir, op->disk_dev, op->disk_ino, O_RDWR, &dirfd, &fd, err);
    char disk[64], opts[128];
    if (r == 0 && (r = qv_fd_path(fd, disk, sizeof disk)) < 0)
        qv_error_set(err, -r, "cannot name the disk's fd");
    if (r == 0)
        r = image_snapshots(op->config, disk, &snaps, &op->disk_size, err);
    if (r < 0)
        goto out;
    bool listed = sv_snapshot_listed(snaps, op->snap);
    if (op->op == SV_SNAPSHOT_CREATE && listed) {
        r = qv_error_set(err, EEXIST, "the disk has a snapshot named '%s' already", op->snap);
        goto out;
    }
    if (op->op != SV_SNAPSHOT_CREATE && !listed) {
        r = qv_error_set(err, ENOENT, "the disk has no snapshot named '%s' (qvisor vm snapshot NAME list)", op->snap);
        goto out;
    }
    /* the format named, never probed */
    snprintf(opts, sizeof opts, "driver=qcow2,file.driver=file,file.filename=%s", disk);
    const char *flag = op->op == SV_SNAPSHOT_CREATE ? "-c" : op->op == SV_SNAPSHOT_REMOVE ? "-d" : "-a";
    const char *args[] = {"snapshot", "--image-opts", "-q", flag, op->snap, opts, NULL};
    qv_run_result res;
    if ((r = sv_qemu_img(op->config, args, NULL, NULL, &res, err)) < 0)
        goto out;
    qv_run_result_free(&res);
    sv_crash_point("snapshot-after-qemu-img");
    if (op->op == SV_SNAPSHOT_REVERT && (r = regrow(op, disk, opts, err)) < 0)
        goto out;
    if (op->op != SV_SNAPSHOT_REVERT) {
        json_t *after = image_after(op, snaps);
        int m = records_update(dirfd, after, op->op == SV_SNAPSHOT_CREATE ? new_record(op, false) : NULL, err);
        json_decref(after);
        if (m < 0) /* the snapshot is made: its record is what is missing (frozen: unknown) */
            log_warning("snapshot %s: %s", op->snap, err->msg);
        *err = (qv_error){0};
    }
out:
    json_decref(snaps);
    qv_closep(&fd);
    qv_closep(&dirfd);
    op->status = r < 0 ? r : 0;
}

static void offline_after(uv_work_t *w, int status) {
    snap_op *op = w->data;
    op->working = false;
    if (status < 0 && op->status == 0)
        op->status = qv_error_set(&op->err, ECANCELED, "the operation was cancelled");
    if (op->status < 0) {
        op_finish(op, op->status, &op->err, NULL);
        return;
    }
    snprintf(op->agent, sizeof op->agent, "the VM was %s: its disk was at rest", sv_vm_state_name(op->state));
    op_finish(op, 0, NULL, op_result(op));
}

/* snapshot, revert: the VM has no QEMU; qemu-img works on its disk on a
 * worker, and the VM is busy until it is done. */
void vm__act_snapshot(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    snap_op *op = a->snap;
    sv_vm *vm = rt->vm;
    op->kind = KIND_OFFLINE;
    op->state = from;
    op->dir = strdup(vm->dir);
    op->config = sv_config_ref(cfg(rt->c));
    op->disk_dev = vm->disk_dev;
    op->disk_ino = vm->disk_ino;
    rt->snap = op;
    log_info("VM %s: snapshot %s: %s (qemu-img)", vm->name, op->snap, op_name(op->op));
    if (!op->dir || uv_queue_work(rt->c->loop, &op->work, offline_work, offline_after) < 0)
        op_fail(op, ENOMEM, "cannot queue the snapshot");
    else
        op->working = true;
}

/* ---- live: QMP, the guest frozen through its agent -------------------------- */

static bool op_gone(const snap_op *op) {
    return !op->rt->vm || op->rt->c->shutting_down;
}

static void live_records_after(uv_work_t *w, int status) {
    snap_op *op = w->data;
    (void)status;
    op->working = false;
    if (op->err.code)
        log_warning("VM %s: snapshot %s: %s", op->rt->vm ? op->rt->vm->name : "?", op->snap, op->err.msg);
    op_finish(op, 0, NULL, op_result(op));
}

static void live_records_work(uv_work_t *w) {
    snap_op *op = w->data;
    _cleanup_close_ int dirfd = qv_open_dir_nofollow(op->dir);
    if (dirfd < 0) {
        qv_error_set(&op->err, -dirfd, "cannot open %s: %s", op->dir, strerror(-dirfd));
        return;
    }
    /* the image's list after the change: what query-block said, changed */
    json_t *after = image_after(op, op->snaps);
    records_update(dirfd, after, op->op == SV_SNAPSHOT_CREATE ? new_record(op, op->frozen) : NULL, &op->err);
    json_decref(after);
}

static void live_done(snap_op *op);

static void thaw_step(snap_op *op);

static void on_thaw_retry(uv_timer_t *t) {
    snap_op *op = t->data;
    thaw_step(op);
}

/* Thaw attempt over: thawed, or another try later, or given up. */
static void thaw_next(snap_op *op) {
    vmrt *rt = op->rt;
    if (op->thawed) {
        fsfreeze_mark_remove(rt);
        if (op->kind == KIND_THAW) {
            log_info("VM %s: its guest's filesystems are thawed (left frozen by a daemon that stopped during a "
                     "snapshot)", rt->vm->name);
            op_finish(op, 0, NULL, NULL);
        } else {
            live_done(op);
        }
        return;
    }
    if (op_gone(op) || !rt->watch || !rt->qga) {
        /* QEMU is gone (its run files with it), or the daemon stops: the
         * mark stays for the next one */
        if (op->kind == KIND_THAW)
            op_fail(op, ECANCELED, "the VM's QEMU or the daemon stopped before its guest was thawed");
        else
            live_done(op);
        return;
    }
    op->thaw_tries++;
    if (op->kind == KIND_LIVE && op->thaw_tries >= THAW_ATTEMPTS) {
        op->thaw_failed = true;
        log_error("VM %s: its guest's filesystems may still be frozen: the agent did not confirm a thaw after %u "
                  "tries; the next daemon tries again (or: qvisor vm stop --force)",
                  rt->vm->name, op->thaw_tries);
        live_done(op);
        return;
    }
    if (op->kind == KIND_THAW && op->thaw_tries == 1)
        log_warning("VM %s: its agent did not confirm the thaw yet; trying every %u s", rt->vm->name,
                    ADOPT_THAW_RETRY_MS / 1000u);
    uv_timer_start(&op->timer, on_thaw_retry, op->kind == KIND_THAW ? ADOPT_THAW_RETRY_MS : THAW_RETRY_MS, 0);
}

static void on_fsfreeze_status(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    (void)e;
    snap_op *op = userdata;
    /* the agent is the guest's: only the exact word counts */
    if (status == 0 && json_is_string(result) && strcmp(json_string_value(result), "thawed") == 0)
        op->thawed = true;
    thaw_next(op);
}

static void on_thaw(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)result;
    (void)e;
    snap_op *op = userdata;
    if (status == QMP_ECANCELED || op_gone(op) || !op->rt->qga || g != op->rt->qga) {
        thaw_next(op);
        return;
    }
    /* whatever it answered (a count, an error, nothing in time): ask */
    if (qga_send(op->rt->qga, "guest-fsfreeze-status", NULL, THAW_TIMEOUT_MS, on_fsfreeze_status, op) < 0)
        thaw_next(op);
}

static void thaw_step(snap_op *op) {
    vmrt *rt = op->rt;
    if (op_gone(op) || !rt->qga || qga_send(rt->qga, "guest-fsfreeze-thaw", NULL, THAW_TIMEOUT_MS, on_thaw, op) < 0)
        thaw_next(op);
}

/* The end of a live operation: the records written on a worker, then the
 * answer. */
static void live_done(snap_op *op) {
    vmrt *rt = op->rt;
    if (op->status < 0) {
        op_finish(op, op->status, &op->err, NULL);
        return;
    }
    if (op->thaw_failed || (op->freeze_sent && !op->thawed))
        snprintf(op->agent + strlen(op->agent), sizeof op->agent - strlen(op->agent),
                 "; NOT confirmed thawed");
    if (op->op == SV_SNAPSHOT_REVERT || op_gone(op)) {
        op_finish(op, 0, NULL, op_result(op));
        return;
    }
    if (uv_queue_work(rt->c->loop, &op->work, live_records_work, live_records_after) < 0)
        op_finish(op, 0, NULL, op_result(op));
    else
        op->working = true;
}

static void on_taken(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    snap_op *op = userdata;
    if (status < 0) {
        const char *what = op->op == SV_SNAPSHOT_CREATE ? "blockdev-snapshot-internal-sync"
                                                          : "blockdev-snapshot-delete-internal-sync";
        op->status = qv_error_set(&op->err, status == QMP_ETIMEDOUT ? ETIMEDOUT : EIO, "%s failed: %s", what,
                                  e && e->desc ? e->desc : status == QMP_ECANCELED ? "QEMU ended" : strerror(-status));
    }
    sv_crash_point("snapshot-before-thaw");
    if (op->freeze_sent)
        thaw_step(op);
    else
        live_done(op);
}

static void take(snap_op *op) {
    vmrt *rt = op->rt;
    json_t *args = json_pack("{s:s, s:s}", "device", DISK_NODE, "name", op->snap);
    const char *cmd = op->op == SV_SNAPSHOT_CREATE ? "blockdev-snapshot-internal-sync"
                                                    : "blockdev-snapshot-delete-internal-sync";
    int r = !op_gone(op) && rt->qmp && args ? qmp_send(rt->qmp, cmd, args, SNAPSHOT_QMP_TIMEOUT_MS, on_taken, op)
                                            : -ENOTCONN;
    json_decref(args);
    if (r < 0) {
        op->status = qv_error_set(&op->err, EIO, "cannot send %s: %s", cmd, strerror(-r));
        if (op->freeze_sent)
            thaw_step(op);
        else
            live_done(op);
    }
}

static void on_freeze(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    snap_op *op = userdata;
    if (status == 0 && json_is_integer(result) && json_integer_value(result) > 0) {
        op->frozen = true;
        snprintf(op->agent, sizeof op->agent, "froze %lld filesystem%s", (long long)json_integer_value(result),
                 json_integer_value(result) == 1 ? "" : "s");
    } else if (status == 0 && json_is_integer(result) && json_integer_value(result) == 0) {
        snprintf(op->agent, sizeof op->agent, "no filesystem to freeze: crash-consistent");
    } else if (status == QMP_ECOMMAND) {
        /* the guest's words: kept short, printed escaped by the CLI */
        snprintf(op->agent, sizeof op->agent, "freeze refused (%.80s): crash-consistent",
                 e && e->desc ? e->desc : "?");
    } else if (status == QMP_ETIMEDOUT) {
        snprintf(op->agent, sizeof op->agent, "freeze not answered in %u s: crash-consistent",
                 FREEZE_TIMEOUT_MS / 1000u);
    } else {
        snprintf(op->agent, sizeof op->agent, "freeze failed (%s): crash-consistent", strerror(-status));
    }
    if (op_gone(op) || status == QMP_ECANCELED) {
        op->status = qv_error_set(&op->err, ECANCELED, "the VM's QEMU or the daemon stopped during the snapshot");
        thaw_step(op); /* cannot reach the agent: the mark stays (unless QEMU is gone) */
        return;
    }
    sv_crash_point("snapshot-after-freeze");
    take(op);
}

static void on_ping(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    (void)result;
    (void)e;
    snap_op *op = userdata;
    vmrt *rt = op->rt;
    if (op_gone(op)) {
        fsfreeze_mark_remove(rt);
        op_fail(op, ECANCELED, "the daemon is stopping");
        return;
    }
    if (status < 0 || !rt->qga) {
        fsfreeze_mark_remove(rt);
        snprintf(op->agent, sizeof op->agent, "the agent did not answer: not frozen, crash-consistent");
        take(op);
        return;
    }
    op->freeze_sent = true; /* from here on it is thawed whatever happens */
    if (qga_send(rt->qga, "guest-fsfreeze-freeze", NULL, FREEZE_TIMEOUT_MS, on_freeze, op) < 0) {
        op->freeze_sent = false;
        fsfreeze_mark_remove(rt);
        snprintf(op->agent, sizeof op->agent, "cannot send the freeze: not frozen, crash-consistent");
        take(op);
    }
}

/* The mark naming this QEMU, before the freeze goes out (tmpfs: at once). */
static int fsfreeze_mark_write(vmrt *rt, const char *snap) {
    char p[PATH_MAX];
    fsfreeze_mark_path(rt, p, sizeof p);
    json_t *j = json_pack("{s:i, s:I, s:s}", "pid", rt->vm->run.pid, "start_ticks",
                          (json_int_t)rt->vm->run.start_ticks, "snapshot", snap);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    int r = !p[0] ? -ENAMETOOLONG : !text ? -ENOMEM : qv_write_file_atomic(p, text, strlen(text), 0600);
    free(text);
    return r;
}

static void freeze_or_take(snap_op *op) {
    vmrt *rt = op->rt;
    sv_vm *vm = rt->vm;
    if (vm__guest_paused(rt)) {
        snprintf(op->agent, sizeof op->agent, "the guest is paused: not frozen (its disk is quiet, its page cache "
                                              "not written)");
    } else if (!vm->spec->agent) {
        snprintf(op->agent, sizeof op->agent, "no agent (--no-agent): not frozen, crash-consistent");
    } else if (!rt->qga || rt->agent_port == 0) {
        snprintf(op->agent, sizeof op->agent, "the agent is not up: not frozen, crash-consistent");
    } else {
        int r = fsfreeze_mark_write(rt, op->snap);
        if (r < 0) {
            snprintf(op->agent, sizeof op->agent, "the freeze mark could not be written (%s): not frozen, "
                                                  "crash-consistent", strerror(-r));
        } else if (qga_ping(rt->qga, AGENT_PING_MS, on_ping, op) == 0) {
            return;
        } else {
            fsfreeze_mark_remove(rt);
            snprintf(op->agent, sizeof op->agent, "the agent is not connected: not frozen, crash-consistent");
        }
    }
    take(op);
}

static void on_query_block(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    snap_op *op = userdata;
    if (op_gone(op) || status == QMP_ECANCELED) {
        op_fail(op, ECANCELED, "the VM's QEMU or the daemon stopped");
        return;
    }
    if (status < 0) {
        op_fail(op, EIO, "query-block failed: %s", e && e->desc ? e->desc : strerror(-status));
        return;
    }
    json_t *image = sv_snapshot_find_node(result, DISK_NODE), *snaps = NULL;
    qv_error err = {0};
    if (!image) {
        op_fail(op, EIO, "QEMU lists no disk node '" DISK_NODE "'");
        return;
    }
    if (sv_snapshot_parse_image(image, &snaps, &err) < 0) {
        op_fail(op, EIO, "QEMU's snapshot list: %s", err.msg);
        return;
    }
    bool listed = sv_snapshot_listed(snaps, op->snap);
    op->disk_size = (uint64_t)json_integer_value(json_object_get(image, "virtual-size"));
    op->snaps = snaps; /* for the records, once changed */
    if (op->op == SV_SNAPSHOT_CREATE && listed) {
        op_fail(op, EEXIST, "the disk has a snapshot named '%s' already", op->snap);
        return;
    }
    if (op->op == SV_SNAPSHOT_REMOVE && !listed) {
        op_fail(op, ENOENT, "the disk has no snapshot named '%s' (qvisor vm snapshot NAME list)", op->snap);
        return;
    }
    if (op->op == SV_SNAPSHOT_CREATE)
        freeze_or_take(op);
    else
        take(op);
}

/* live-snapshot: QEMU runs; create or remove through QMP. */
void vm__act_live_snapshot(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    snap_op *op = a->snap;
    sv_vm *vm = rt->vm;
    op->kind = KIND_LIVE;
    op->state = from;
    op->dir = strdup(vm->dir);
    rt->snap = op;
    log_info("VM %s: snapshot %s: %s (QMP)", vm->name, op->snap, op_name(op->op));
    if (!op->dir || qmp_send(rt->qmp, "query-block", NULL, QMP_CMD_TIMEOUT_MS, on_query_block, op) < 0)
        op_fail(op, EIO, "cannot ask QEMU for its disks");
}

/* ---- requests ---------------------------------------------------------------- */

static snap_op *op_new(vmrt *rt, sv_snapshot_op what, const char *snap, sv_vm_done_fn done, void *userdata) {
    snap_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->rt = rt;
    op->op = what;
    snprintf(op->snap, sizeof op->snap, "%s", snap);
    op->done = done;
    op->userdata = userdata;
    op->started = (int64_t)time(NULL);
    op->work.data = op;
    uv_timer_init(rt->c->loop, &op->timer);
    op->timer.data = op;
    rt->refs++;
    return op;
}

/* A request refused before it began: nobody is answered. */
static void op_drop(snap_op *op) {
    op->finished = true;
    uv_close((uv_handle_t *)&op->timer, op_closed);
}

int sv_vm_snapshot(sv_vmctl *c, sv_vm *vm, sv_snapshot_op what, const char *snap, sv_vm_done_fn done,
                   void *userdata, qv_error *err) {
    if (c->shutting_down)
        return qv_error_set(err, ECANCELED, "the daemon is stopping");
    int r = sv_snapshot_name_check(snap, err);
    if (r < 0)
        return r;
    vmrt *rt = vm__get_rt(c, vm);
    snap_op *op = rt ? op_new(rt, what, snap, done, userdata) : NULL;
    if (!op)
        return qv_error_set(err, ENOMEM, "out of memory");
    r = vm__event(rt, what == SV_SNAPSHOT_REVERT ? SV_EV_REVERT : SV_EV_SNAPSHOT,
                  &(vm_event_arg){.snap = op, .done = done, .userdata = userdata, .err = err});
    if (r != 0) {
        op_drop(op);
        return r < 0 ? r : qv_error_set(err, EINVAL, "nothing to do");
    }
    return 0;
}

/* ---- a guest a dead daemon left frozen -------------------------------------- */

void vm__snapshot_adopted(vmrt *rt) {
    char p[PATH_MAX];
    fsfreeze_mark_path(rt, p, sizeof p);
    if (!p[0] || access(p, F_OK) < 0)
        return;
    _cleanup_free_ char *text = NULL;
    qv_read_file(p, 4096, &text, NULL);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    json_t *pid = json_object_get(j, "pid"), *ticks = json_object_get(j, "start_ticks");
    const char *snap = json_string_value(json_object_get(j, "snapshot"));
    sv_vm *vm = rt->vm;
    bool ours = json_is_integer(pid) && json_is_integer(ticks) && json_integer_value(pid) == vm->run.pid &&
                (uint64_t)json_integer_value(ticks) == vm->run.start_ticks;
    char name[SV_SNAPSHOT_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", snap && sv_snapshot_name_valid(snap) ? snap : "?");
    json_decref(j);
    if (!ours || !vm->spec->agent || rt->snap) {
        /* another QEMU's, or no agent to have frozen anything */
        fsfreeze_mark_remove(rt);
        return;
    }
    snap_op *op = op_new(rt, SV_SNAPSHOT_CREATE, name, NULL, NULL);
    if (!op) {
        log_error("VM %s: out of memory: its guest may stay frozen (qvisor vm stop --force)", vm->name);
        return;
    }
    op->kind = KIND_THAW;
    op->freeze_sent = true;
    op->state = vm->state;
    rt->snap = op;
    log_warning("VM %s: the previous daemon stopped during snapshot %s with the guest's filesystems frozen; "
                "thawing them", vm->name, name);
    thaw_step(op);
}

void vm__snapshot_release(vmrt *rt) {
    snap_op *op = rt->snap;
    if (!op || op->working)
        return; /* on a worker: its end comes after it */
    rt->snap = NULL;
    /* commands were cancelled with the channels; what waits is a timer */
    op_fail(op, ECANCELED, "the daemon is stopping or the VM is gone; %s",
            op->freeze_sent && !op->thawed ? "the guest is thawed by the next daemon" : "nothing was changed");
}

/* ---- list ---------------------------------------------------------------------- */

typedef struct list_job {
    uv_work_t work;
    char *dir;
    char name[64];
    sv_config *config;
    uint64_t disk_dev, disk_ino;
    json_t *image;        /* live: query-block's image of the disk (a copy) */
    json_t *result;
    int status;
    qv_error err;
    sv_vm_done_fn done;
    void *userdata;
} list_job;

static void list_job_free(list_job *job) {
    free(job->dir);
    sv_config_free(job->config);
    json_decref(job->image);
    json_decref(job->result);
    free(job);
}

/* The image's snapshots and qvisor's records, reconciled (on a worker). */
static void list_work(uv_work_t *w) {
    list_job *job = w->data;
    _cleanup_close_ int dirfd = -1, fd = -1;
    json_t *snaps = NULL;
    int r;
    if (job->image) {
        r = sv_snapshot_parse_image(job->image, &snaps, &job->err);
        if ((dirfd = qv_open_dir_nofollow(job->dir)) < 0 && r == 0)
            r = qv_error_set(&job->err, -dirfd, "cannot open %s: %s", job->dir, strerror(-dirfd));
    } else {
        char disk[64];
        r = open_disk(job->dir, job->disk_dev, job->disk_ino, O_RDONLY, &dirfd, &fd, &job->err);
        if (r == 0 && (r = qv_fd_path(fd, disk, sizeof disk)) < 0)
            qv_error_set(&job->err, -r, "cannot name the disk's fd");
        if (r == 0)
            r = image_snapshots(job->config, disk, &snaps, NULL, &job->err);
    }
    if (r < 0) {
        job->status = r;
        return;
    }
    _cleanup_free_ char *text = NULL;
    qv_read_file_at(dirfd, SV_VM_SNAPSHOTS_FILE, SNAPMETA_MAX, &text, NULL);
    json_t *records = sv_snapmeta_parse(text);
    json_t *list = sv_snapshot_reconcile(snaps, records, NULL);
    job->result = json_pack("{s:s, s:o, s:s}", "name", job->name, "snapshots", list, "source",
                            job->image ? "qmp" : "qemu-img");
    json_decref(records);
    json_decref(snaps);
    job->status = job->result ? 0 : qv_error_set(&job->err, ENOMEM, "out of memory");
}

static void list_after(uv_work_t *w, int status) {
    list_job *job = w->data;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, ECANCELED, "the list was cancelled");
    if (job->status < 0)
        job->done(job->status, NULL, &job->err, job->userdata);
    else
        job->done(0, job->result, NULL, job->userdata);
    list_job_free(job);
}

static void list_queue(sv_vmctl *c, list_job *job) {
    if (uv_queue_work(c->loop, &job->work, list_work, list_after) < 0) {
        qv_error err = {.code = ENOMEM};
        snprintf(err.msg, sizeof err.msg, "cannot queue the list");
        job->done(-ENOMEM, NULL, &err, job->userdata);
        list_job_free(job);
    }
}

typedef struct list_wait {
    sv_vmctl *c;
    list_job *job;
} list_wait;

static void on_list_block(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    list_wait *lw = userdata;
    list_job *job = lw->job;
    sv_vmctl *c = lw->c;
    free(lw);
    json_t *image = status == 0 ? sv_snapshot_find_node(result, DISK_NODE) : NULL;
    if (!image || c->shutting_down) {
        qv_error err = {.code = EIO};
        snprintf(err.msg, sizeof err.msg, "query-block: %s",
                 status == 0 ? "no disk node '" DISK_NODE "'" : e && e->desc ? e->desc : strerror(-status));
        job->done(-EIO, NULL, &err, job->userdata);
        list_job_free(job);
        vm__ctl_unref(c);
        return;
    }
    job->image = json_deep_copy(image);
    list_queue(c, job);
    vm__ctl_unref(c);
}

int sv_vm_snapshot_list(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    if (c->shutting_down)
        return qv_error_set(err, ECANCELED, "the daemon is stopping");
    vmrt *rt = vm->rt;
    bool live = sv_vm_state_has_qemu(vm->state) && rt && rt->watch;
    if (vm->state == SV_VM_CREATING || vm->state == SV_VM_REMOVING)
        return qv_error_set(err, EBUSY, "VM '%s' is %s; try again when that is done", vm->name,
                            sv_vm_state_name(vm->state));
    if (!live && rt && rt->snap && rt->snap->kind == KIND_OFFLINE)
        return vm__snapshot_idle(rt, false, false, err);
    if (live && (!rt->qmp || !qmp_is_ready(rt->qmp)))
        return qv_error_set(err, vm->state == SV_VM_RUNNING || vm->state == SV_VM_PAUSED ? EIO : EBUSY,
                            "VM '%s' is %s and its monitor is not connected; try again in a moment", vm->name,
                            sv_vm_state_name(vm->state));
    list_job *job = calloc(1, sizeof *job);
    if (!job || !(job->dir = strdup(vm->dir))) {
        free(job);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    job->work.data = job;
    snprintf(job->name, sizeof job->name, "%s", vm->name);
    job->config = sv_config_ref(cfg(c));
    job->disk_dev = vm->disk_dev;
    job->disk_ino = vm->disk_ino;
    job->done = done;
    job->userdata = userdata;
    if (!live) {
        list_queue(c, job);
        return 0;
    }
    list_wait *lw = calloc(1, sizeof *lw);
    if (!lw) {
        list_job_free(job);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    *lw = (list_wait){c, job};
    c->refs++;
    if (qmp_send(rt->qmp, "query-block", NULL, QMP_CMD_TIMEOUT_MS, on_list_block, lw) < 0) {
        free(lw);
        c->refs--;
        list_job_free(job);
        return qv_error_set(err, EIO, "cannot ask QEMU for its disks");
    }
    return 0;
}
