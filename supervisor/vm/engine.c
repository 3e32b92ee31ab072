/* The engine's core: per-VM runtimes (vmrt) and their references, the
 * state changes through the table, state.json writes (now, coalesced,
 * retried), waiters, run-directory files; sv_vmctl itself (new, forget,
 * shutdown). */
#include "supervisor/vm/engine.h"


/* ---- small helpers ------------------------------------------------------ */

/* Paused, or will be once QEMU has run the stop/cont commands already sent
 * (it runs them in order, so an ACPI request sent now lands after them). */
bool vm__guest_paused(const vmrt *rt) {
    return rt->pause_ops ? rt->pause_target : rt->paused;
}

void vm__ctl_unref(sv_vmctl *c) {
    if (--c->refs == 0 && c->shutting_down) {
        for (size_t i = 0; i < c->n_after_writes; i++) {
            if (c->after_writes[i].old_fd >= 0)
                close(c->after_writes[i].old_fd);
            free(c->after_writes[i].dir);
        }
        free(c->after_writes);
        free(c->caps_binary);
        free(c);
    }
}

/* ---- events ------------------------------------------------------------ */

void sv_vmctl_set_emit(sv_vmctl *c, sv_vm_emit_fn fn, void *userdata) {
    c->emit = fn;
    c->emit_userdata = userdata;
}

void vm__emit(vmrt *rt, const char *type, json_t *fields) {
    sv_vmctl *c = rt->c;
    if (c->emit && rt->vm && fields)
        c->emit(type, rt->vm->name, fields, c->emit_userdata);
    else
        json_decref(fields);
}

/* The "state" event of a change (from -> to): the table's event, and why
 * when the event brought a reason. */
static void emit_state(vmrt *rt, sv_vm_state from, sv_vm_state to, const char *event, const char *action,
                       const char *why) {
    json_t *f = json_pack("{s:s, s:s, s:s}", "from", sv_vm_state_name(from), "to", sv_vm_state_name(to), "event",
                          event);
    if (f && action)
        json_object_set_new(f, "action", json_string(action));
    if (f && why)
        json_object_set_new(f, "reason", json_string(why));
    vm__emit(rt, "state", f);
}

/* ---- state.json ------------------------------------------------------------
 * Written off the loop (docs/lifecycle.md, "State on disk"): the state is
 * serialised on the loop (a snapshot: the text), the atomic replacement
 * (temp file, write, rename) runs on a worker of the libuv pool.  Two
 * strengths: visible (vm__save: renamed into place, no fsync; what a
 * restarted daemon reads, so it is all a daemon crash needs) and durable
 * (vm__save_durable: fsyncs of the file and the directory too, for what must
 * survive a power loss: the end of a stop, which the restart policy must
 * not undo at the next boot).  Per VM at most one write is in flight; a
 * newer snapshot taken meanwhile waits behind it and replaces an older one
 * that waits (only the latest state matters), taking over its waiters and
 * its strength: a waiter learns that its state *or a newer one* is written
 * at least as strongly as it asked.  Writes of different VMs run side by
 * side. */

struct save_job {
    uv_work_t work;
    vmrt *rt;
    char *dir;
    char *text;
    size_t len;
    const char *state;     /* for the crash point */
    bool durable;          /* fsynced (vm__save_durable), else only visible */
    save_waiter *waiters;
    int status;
    qv_error err;
    int old_fd;            /* the state.json it replaced, held until the waiters have their answer; -1: none */
    save_job *next;        /* in a group of durable writes */
};

/* Durable writes go to a worker as a group (sv_vm_state_write_group): a
 * journaling file system commits a group in about two transactions, where
 * each write alone would take two.  Up to SAVE_GROUPS_MAX groups are on
 * workers at a time; the durable writes asked for meanwhile form the next
 * one (the end of twenty stops at once costs a few commits, not forty).
 * Groups side by side let their fsyncs meet in one cache flush: without a
 * journal (ext4 without one, as on many VM disks) every fsync is a flush
 * of its own, and twenty in a row on one worker took 6-8 ms here where
 * four workers took 3.5.  One pool thread stays free for other work.  Each
 * VM still has at most one write in flight, so its writes stay in order. */
#define SAVE_GROUPS_MAX 3u
struct save_group {
    uv_work_t work;
    sv_vmctl *c;
    save_job *jobs;
};

static void on_persist_timer(uv_timer_t *t);
static void save_dispatch(vmrt *rt);

static void crash_queued(const save_job *job) {
#if QV_TEST_HOOKS
    /* queued, nothing of it on disk yet (test builds only) */
    char point[48];
    snprintf(point, sizeof point, "save-queued-%s", job->state);
    sv_crash_point(point);
#else
    (void)job;
#endif
}

static void save_work(uv_work_t *w) {
    save_job *job = w->data;
    crash_queued(job);
    job->status = sv_vm_state_write_keep_old(job->dir, job->text, job->len, job->durable, &job->old_fd, &job->err);
}

static void group_work(uv_work_t *w) {
    save_group *g = w->data;
    size_t n = 0;
    for (save_job *j = g->jobs; j; j = j->next) {
        crash_queued(j);
        n++;
    }
    sv_vm_state_file *f = calloc(n, sizeof *f);
    if (!f) {
        for (save_job *j = g->jobs; j; j = j->next)
            save_work(&j->work);
        return;
    }
    size_t i = 0;
    for (save_job *j = g->jobs; j; j = j->next, i++)
        f[i] = (sv_vm_state_file){.dir = j->dir, .text = j->text, .len = j->len};
    sv_vm_state_write_group(f, n);
    i = 0;
    for (save_job *j = g->jobs; j; j = j->next, i++) {
        j->status = f[i].status;
        j->err = f[i].err;
    }
    free(f);
}

/* What a visible write leaves for after its answer, on a worker: the
 * file it replaced is freed (closing what holds it: on ext4 without a
 * journal and with discard, freeing it was most of what a write cost,
 * qv_atomic_commit_keep_old), and the file the VM's next visible write
 * goes into is made (creating it was most of the rest,
 * sv_vm_state_prepare).  A start's answer waits for two visible writes.
 * One worker at a time does whatever has gathered meanwhile, so that the
 * work of twenty stops at once does not stand in the pool's queue before
 * the writes that answer them. */
typedef struct after_batch {
    uv_work_t work;
    sv_vmctl *c;
    state_after_write *v;
    size_t n;
} after_batch;

static void call_waiters(save_waiter *w, vmrt *rt, int status, const qv_error *err);

static void after_work(uv_work_t *w) {
    after_batch *b = w->data;
    for (size_t i = 0; i < b->n; i++) {
        if (b->v[i].old_fd >= 0)
            close(b->v[i].old_fd);
        if (b->v[i].dir)
            (void)sv_vm_state_prepare(b->v[i].dir); /* else the next write makes a temp file as ever */
    }
}

static void after_kick(sv_vmctl *c);

static void after_done(uv_work_t *w, int status) {
    (void)status;
    after_batch *b = w->data;
    sv_vmctl *c = b->c;
    for (size_t i = 0; i < b->n; i++) {
        free(b->v[i].dir);
        vmrt *rt = b->v[i].rt;
        if (!rt)
            continue;
        if (--rt->after_pending == 0)
            call_waiters(TAKE_PTR(rt->after_waiters), rt, 0, NULL);
        vm__rt_unref(rt);
    }
    free(b->v);
    free(b);
    c->after_writing = false;
    if (c->n_after_writes)
        after_kick(c);
    vm__ctl_unref(c);
}

static void after_kick(sv_vmctl *c) {
    after_batch *b = malloc(sizeof *b);
    if (!b)
        return; /* the next one takes them */
    *b = (after_batch){.work.data = b, .c = c, .v = TAKE_PTR(c->after_writes), .n = c->n_after_writes};
    c->n_after_writes = c->cap_after_writes = 0;
    c->after_writing = true;
    c->refs++;
    if (uv_queue_work(c->loop, &b->work, after_work, after_done) < 0) {
        after_work(&b->work); /* cannot happen with a work callback */
        after_done(&b->work, 0);
    }
}

/* Takes old_fd and dir (either may be -1 / NULL); dir is rt's. */
static void after_write_later(sv_vmctl *c, vmrt *rt, int old_fd, char *dir) {
    if (c->n_after_writes == c->cap_after_writes) {
        size_t cap = c->cap_after_writes ? 2 * c->cap_after_writes : 16;
        state_after_write *v = realloc(c->after_writes, cap * sizeof *v);
        if (!v) {
            if (old_fd >= 0)
                close(old_fd); /* here, then; and no file made ahead */
            free(dir);
            return;
        }
        c->after_writes = v;
        c->cap_after_writes = cap;
    }
    if (dir) {
        rt->refs++;
        rt->after_pending++;
    }
    c->after_writes[c->n_after_writes++] = (state_after_write){old_fd, dir, dir ? rt : NULL};
    if (!c->after_writing)
        after_kick(c);
}

/* The files the writes of a start replace are freed once the start is
 * over (answered or failed), not during it: freeing one (ext4 without a
 * journal, with discard) while QEMU was being spawned made the spawn take
 * 2-5 ms where it takes 0.25, in most starts measured here.  Takes
 * old_fd; false when it is not kept (not starting, or no room). */
static bool keep_for_start(vmrt *rt, int old_fd) {
    if (old_fd < 0 || !rt->vm || rt->vm->state != SV_VM_STARTING || rt->n_start_old == QV_ARRAY_SIZE(rt->start_old_fds))
        return false;
    rt->start_old_fds[rt->n_start_old++] = old_fd;
    return true;
}

/* A VM that was starting (from) and is not any more: the start is over,
 * and what it kept goes to the after-write work.  Judged on the state it
 * is in now, whichever way it got there (the table, an action, an undo). */
static void start_over_release(vmrt *rt, sv_vm_state from) {
    if (from != SV_VM_STARTING || (rt->vm && rt->vm->state == SV_VM_STARTING))
        return;
    while (rt->n_start_old)
        after_write_later(rt->c, rt, rt->start_old_fds[--rt->n_start_old], NULL);
}

static void call_waiters(save_waiter *w, vmrt *rt, int status, const qv_error *err) {
    while (w) {
        save_waiter *next = w->next;
        w->fn(rt, status, err, w->userdata);
        free(w);
        w = next;
    }
}

static void save_after(uv_work_t *w, int status) {
    save_job *job = w->data;
    vmrt *rt = job->rt;
    rt->save_inflight = NULL;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, ECANCELED, "the write was cancelled");
    if (job->status < 0) {
        if (!rt->persist_failing)
            log_error("VM %s: cannot save its state: %s; trying again every %u s", rt->vm ? rt->vm->name : "?",
                      job->err.msg, PERSIST_RETRY_MS / 1000u);
        rt->persist_failing = true;
        /* a newer snapshot waiting goes now; else the state in memory is
         * tried again later */
        if (rt->vm && !rt->save_text) {
            rt->persist_due = true;
            uv_timer_start(&rt->persist_timer, on_persist_timer, PERSIST_RETRY_MS, 0);
        }
    } else if (rt->persist_failing) {
        if (rt->vm)
            log_info("VM %s: its state is saved again", rt->vm->name);
        rt->persist_failing = false;
    }
    call_waiters(job->waiters, rt, job->status, &job->err);
    /* the next visible write's file is made ahead while the VM is there
     * (a removed VM's directory is renamed away: nothing goes into it) */
    bool prepare = !job->durable && job->status == 0 && rt->vm && rt->vm->state != SV_VM_REMOVING;
    if (keep_for_start(rt, job->old_fd))
        job->old_fd = -1;
    if (job->old_fd >= 0 || prepare)
        after_write_later(rt->c, rt, job->old_fd, prepare ? TAKE_PTR(job->dir) : NULL);
    if (!rt->save_inflight && rt->save_text)
        save_dispatch(rt);
    free(job->dir);
    free(job->text);
    free(job);
    vm__rt_unref(rt);
}

static void group_after(uv_work_t *w, int status);

/* The durable writes asked for since the last group go to a worker. */
static void group_kick(sv_vmctl *c) {
    save_group *g = calloc(1, sizeof *g);
    if (!g) {
        /* one by one, then: each as its own work */
        for (save_job *j = TAKE_PTR(c->save_next), *next; j; j = next) {
            next = j->next;
            j->next = NULL;
            if (uv_queue_work(c->loop, &j->work, save_work, save_after) < 0) {
                save_work(&j->work);
                save_after(&j->work, 0);
            }
        }
        return;
    }
    g->work.data = g;
    g->c = c;
    g->jobs = TAKE_PTR(c->save_next);
    c->save_groups++;
    c->refs++;
    if (uv_queue_work(c->loop, &g->work, group_work, group_after) < 0) {
        group_work(&g->work); /* cannot happen with a work callback */
        group_after(&g->work, 0);
    }
}

static void group_after(uv_work_t *w, int status) {
    save_group *g = w->data;
    sv_vmctl *c = g->c;
    /* the waiters called here may ask for durable writes: they wait for
     * the next group, sent once this one is done */
    for (save_job *j = g->jobs, *next; j; j = next) {
        next = j->next;
        save_after(&j->work, status);
    }
    c->save_groups--;
    free(g);
    if (c->save_next)
        group_kick(c);
    vm__ctl_unref(c);
}

static void group_add(sv_vmctl *c, save_job *job) {
    save_job **tail = &c->save_next;
    while (*tail)
        tail = &(*tail)->next;
    *tail = job;
    if (c->save_groups < SAVE_GROUPS_MAX)
        group_kick(c);
}

/* The waiting snapshot goes to a worker (none is in flight). */
static void save_dispatch(vmrt *rt) {
    save_job *job = calloc(1, sizeof *job);
    char *dir = job ? strdup(rt->state_dir) : NULL;
    if (!dir) {
        free(dir);
        free(job);
        log_error("VM %s: out of memory: its state is saved later", rt->vm ? rt->vm->name : "?");
        if (rt->vm) {
            rt->persist_due = true;
            uv_timer_start(&rt->persist_timer, on_persist_timer, PERSIST_RETRY_MS, 0);
        }
        return;
    }
    job->work.data = job;
    job->rt = rt;
    job->old_fd = -1;
    job->dir = dir;
    job->text = TAKE_PTR(rt->save_text);
    job->len = rt->save_len;
    job->state = rt->save_state;
    job->durable = rt->save_durable;
    rt->save_durable = false;
    job->waiters = TAKE_PTR(rt->save_waiters);
    rt->refs++; /* and rt holds the vmctl */
    rt->save_inflight = job;
    if (job->durable) {
        group_add(rt->c, job);
        return;
    }
    int r = uv_queue_work(rt->c->loop, &job->work, save_work, save_after);
    if (r < 0) {
        /* cannot happen with a work callback; write here rather than lose it */
        save_work(&job->work);
        save_after(&job->work, 0);
    }
}

static void add_save_waiter(save_waiter **list, vm_saved_fn fn, void *userdata) {
    save_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        log_error("out of memory: a request will get no answer");
        return;
    }
    w->fn = fn;
    w->userdata = userdata;
    while (*list)
        list = &(*list)->next;
    *list = w;
}

static void save_snapshot(vmrt *rt, sv_vm_state state, bool durable, vm_saved_fn fn, void *userdata) {
    sv_vm *vm = rt->vm;
    if (vm->state == SV_VM_REMOVING) {
        /* its directory is renamed away: nothing more is written, and
         * vm__forget cancels the waiter */
        if (fn)
            add_save_waiter(&rt->save_waiters, fn, userdata);
        return;
    }
    uv_timer_stop(&rt->persist_timer);
    rt->persist_due = false;
    rt->persist_last_ms = uv_now(rt->c->loop);
    size_t len = 0;
    char *text = sv_vm_state_text(vm, state, &len);
    if (fn)
        add_save_waiter(&rt->save_waiters, fn, userdata);
    if (!text) {
        /* tried again from memory: the waiters wait for that */
        log_error("VM %s: out of memory: its state is saved later", vm->name);
        rt->persist_due = true;
        uv_timer_start(&rt->persist_timer, on_persist_timer, PERSIST_RETRY_MS, 0);
        return;
    }
    free(rt->save_text); /* an older snapshot not written yet: this one replaces it */
    rt->save_text = text;
    rt->save_len = len;
    rt->save_state = sv_vm_state_name(state);
    rt->save_durable |= durable; /* a replaced snapshot's waiters keep what they were promised */
    if (!rt->save_inflight)
        save_dispatch(rt);
}

/* Takes a snapshot of the state in memory (everything: a pending coalesced
 * write is done with it) and has it written; fn (may be NULL) is called on
 * the loop once it or a newer snapshot is durable, or the write failed.  A
 * write that fails is logged once and tried again every PERSIST_RETRY_MS
 * until it succeeds; the caller decides whether what it did must be undone
 * (docs/lifecycle.md, "State on disk").  fn is never called from here. */
void vm__save(vmrt *rt, vm_saved_fn fn, void *userdata) {
    save_snapshot(rt, rt->vm->state, false, fn, userdata);
}

void vm__save_as(vmrt *rt, sv_vm_state state, vm_saved_fn fn, void *userdata) {
    save_snapshot(rt, state, false, fn, userdata);
}

void vm__save_durable(vmrt *rt, vm_saved_fn fn, void *userdata) {
    save_snapshot(rt, rt->vm->state, true, fn, userdata);
}

void vm__persist(vmrt *rt) {
    vm__save(rt, NULL, NULL);
}

/* fn once what is in memory now is durable: at once (from here) when it
 * is, else with the write that carries it. */
void vm__saved_then(vmrt *rt, vm_saved_fn fn, void *userdata) {
    if (rt->persist_due || rt->save_text || (!rt->save_inflight && rt->persist_failing))
        vm__save(rt, fn, userdata);
    else if (rt->save_inflight)
        add_save_waiter(&rt->save_inflight->waiters, fn, userdata);
    else
        fn(rt, 0, NULL, userdata);
}

static void writes_done_step(vmrt *rt, int status, const qv_error *err, void *userdata) {
    save_waiter *w = userdata;
    (void)status;
    (void)err;
    if (rt->after_pending)
        add_save_waiter(&rt->after_waiters, w->fn, w->userdata);
    else
        w->fn(rt, 0, NULL, w->userdata);
    free(w);
}

void vm__writes_done_then(vmrt *rt, vm_saved_fn fn, void *userdata) {
    save_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        vm__saved_then(rt, fn, userdata); /* the write, at least */
        return;
    }
    w->fn = fn;
    w->userdata = userdata;
    vm__saved_then(rt, writes_done_step, w);
}

/* The VM is being removed: nothing more of it is written.  Snapshots not
 * begun are dropped (their waiters get ECANCELED); one the worker has is
 * left to finish, and vm__saved_then() calls back after it. */
void vm__save_drop(vmrt *rt) {
    uv_timer_stop(&rt->persist_timer);
    rt->persist_due = false;
    rt->persist_failing = false;
    free(TAKE_PTR(rt->save_text));
    rt->save_durable = false;
    qv_error err = {.code = ECANCELED};
    snprintf(err.msg, sizeof err.msg, "the VM was removed");
    call_waiters(TAKE_PTR(rt->save_waiters), rt, -ECANCELED, &err);
}

/* For changes a re-adopting daemon learns from QEMU anyway (paused or
 * running: query-status): written at most once per PERSIST_COALESCE_MS, so
 * a guest that makes its QEMU send STOP/RESUME in a loop costs one small
 * write a second, not one fsync per event. */
void vm__persist_soon(vmrt *rt) {
    if (rt->persist_due)
        return; /* a write is pending already, and will carry this change */
    rt->persist_due = true;
    uint64_t now = uv_now(rt->c->loop), at = rt->persist_last_ms + PERSIST_COALESCE_MS;
    uv_timer_start(&rt->persist_timer, on_persist_timer, at > now ? at - now : 0, 0);
}

static void on_persist_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->persist_due)
        vm__persist(rt);
}

typedef void (*vm_action_fn)(vmrt *rt, sv_vm_state from, const vm_event_arg *a);
typedef int (*vm_check_fn)(vmrt *rt, const vm_event_arg *a);

/* What the engine runs for a cell (lifecycle.h): a request's check, with
 * the VM where it is, then its action once it moved. */
static const vm_check_fn vm__checks[SV_ACT__COUNT] = {
    [SV_ACT_PREPARE] = vm__check_prepare, [SV_ACT_SHUTDOWN] = vm__check_stop, [SV_ACT_ABORT] = vm__check_stop,
    [SV_ACT_JOIN] = vm__check_stop,       [SV_ACT_SEND] = vm__check_send,     [SV_ACT_AGENT] = vm__check_agent,
    [SV_ACT_REMOVE] = vm__check_snapshot, [SV_ACT_SNAPSHOT] = vm__check_snapshot,
    [SV_ACT_REVERT] = vm__check_snapshot, [SV_ACT_LIVE_SNAPSHOT] = vm__check_live_snapshot,
    [SV_ACT_EDIT] = vm__check_edit,       [SV_ACT_GROW] = vm__check_grow,
    [SV_ACT_HOLD] = vm__check_snapshot,   /* no copy of a disk whose snapshot table changes */
};
static const vm_action_fn vm__actions[SV_ACT__COUNT] = {
    [SV_ACT_PREPARE] = vm__act_prepare, [SV_ACT_RUN] = vm__act_run,           [SV_ACT_ABANDON] = vm__act_abandon,
    [SV_ACT_NOTE] = vm__act_note,       [SV_ACT_FINISH] = vm__act_finish,     [SV_ACT_EXIT] = vm__act_exit,
    [SV_ACT_SHUTDOWN] = vm__act_shutdown, [SV_ACT_ABORT] = vm__act_abort,     [SV_ACT_JOIN] = vm__act_join,
    [SV_ACT_SEND] = vm__act_send,       [SV_ACT_REMOVE] = vm__act_remove,     [SV_ACT_AGENT] = vm__act_agent,
    [SV_ACT_SNAPSHOT] = vm__act_snapshot, [SV_ACT_REVERT] = vm__act_snapshot,
    [SV_ACT_LIVE_SNAPSHOT] = vm__act_live_snapshot,
    [SV_ACT_EDIT] = vm__act_edit,       [SV_ACT_GROW] = vm__act_grow,
    [SV_ACT_HOLD] = vm__act_hold,
};

/* Actions that use or change the VM's spec or disk: refused while an edit
 * or a resize holds them (rt->held, edit.c).  Snapshots too: a snapshot
 * taken or reverted while the disk grows would record (or bring back) a
 * size its spec does not say. */
static bool needs_spec_and_disk(sv_vm_action act) {
    return act == SV_ACT_PREPARE || act == SV_ACT_REMOVE || act == SV_ACT_EDIT || act == SV_ACT_GROW ||
           act == SV_ACT_SNAPSHOT || act == SV_ACT_LIVE_SNAPSHOT || act == SV_ACT_REVERT || act == SV_ACT_HOLD;
}

/* The state a request is judged in.  Pause and resume look past the
 * `stop`/`cont` commands QEMU has not answered yet: `pause` followed at
 * once by `resume` resumes (QEMU runs them in order) instead of finding
 * the VM still running and doing nothing. */
static sv_vm_state judged_state(const vmrt *rt, sv_vm_event ev) {
    sv_vm_state s = rt->vm->state;
    if ((ev == SV_EV_PAUSE || ev == SV_EV_RESUME) && rt->pause_ops && (s == SV_VM_RUNNING || s == SV_VM_PAUSED))
        return rt->pause_target ? SV_VM_PAUSED : SV_VM_RUNNING;
    return s;
}

/* The table's refusal of a request, in words (exit codes: lifecycle.h). */
static int refusal(const sv_vm *vm, sv_vm_event ev, int r, qv_error *err) {
    const char *st = sv_vm_state_name(vm->state);
    if (r == -EALREADY && ev == SV_EV_REVERT)
        return qv_error_set(err, EALREADY,
                            "VM '%s' is %s: a snapshot is reverted only while the VM is stopped (qvisor vm stop %s)",
                            vm->name, st, vm->name);
    if (r == -EALREADY)
        return qv_error_set(err, EALREADY, "VM '%s' is already %s", vm->name, st);
    if (r == -EBUSY && ev == SV_EV_REMOVE && sv_vm_state_has_qemu(vm->state))
        return qv_error_set(err, EBUSY, "VM '%s' is %s; stop it first (or use --force)", vm->name, st);
    if (ev == SV_EV_GUEST && vm->state == SV_VM_PAUSED)
        return qv_error_set(err, EBUSY, "VM '%s' is paused: its guest agent cannot answer (qvisor vm resume %s)",
                            vm->name, vm->name);
    if (r == -EHOSTDOWN && ev == SV_EV_GUEST)
        return qv_error_set(err, EHOSTDOWN, "VM '%s' is %s: no guest runs there (qvisor vm start %s)", vm->name, st,
                            vm->name);
    if (r == -EBUSY && ev == SV_EV_COPY && sv_vm_state_has_qemu(vm->state))
        return qv_error_set(err, EBUSY, "VM '%s' is %s; its disk is copied only while it is stopped: stop it first",
                            vm->name, st);
    if (r == -EHOSTDOWN)
        return qv_error_set(err, EHOSTDOWN, "VM '%s' is %s: there is no QEMU to %s (qvisor vm start %s)", vm->name,
                            st, sv_vm_event_name(ev), vm->name);
    return qv_error_set(err, EBUSY, "VM '%s' is %s; try again when that is done", vm->name, st);
}

int vm__event(vmrt *rt, sv_vm_event ev, const vm_event_arg *arg) {
    static const vm_event_arg none = {0};
    if (!arg)
        arg = &none;
    sv_vm *vm = rt->vm;
    sv_vm_state from = vm->state, to;
    sv_vm_action act;
    int r = sv_vm_transition(judged_state(rt, ev), ev, &to, &act);
    if (r == -EINVAL)
        log_warning("VM %s: event %s in state %s ignored", vm->name, sv_vm_event_name(ev), sv_vm_state_name(from));
    if (r < 0 && arg->err)
        return refusal(vm, ev, r, arg->err);
    if (r != 0)
        return r;
    if (rt->held && needs_spec_and_disk(act))
        return qv_error_set(arg->err, EBUSY, "VM '%s' is busy: %s; try again when that is done", vm->name, rt->held);
    if (vm__held_refuses(rt, act))
        return qv_error_set(arg->err, EBUSY, "VM '%s' is busy: its disk is being copied (vm clone, image create); "
                            "try again when that is done", vm->name);
    if (vm__checks[act] && (r = vm__checks[act](rt, arg)) < 0)
        return r;
    if (act != SV_ACT_SEND) {
        vm->state = to;
        if (to != from) {
            log_debug("VM %s: %s -> %s (%s: %s)", vm->name, sv_vm_state_name(from), sv_vm_state_name(to),
                      sv_vm_event_name(ev), sv_vm_action_name(act));
            emit_state(rt, from, to, sv_vm_event_name(ev), sv_vm_action_name(act),
                       arg->why ? arg->why : arg->policy ? "restart policy" : NULL);
        }
    }
    if (vm__actions[act])
        vm__actions[act](rt, from, arg);
    start_over_release(rt, from); /* after the action: a start's answer goes first */
    return 0;
}

/* The one change of vm->state outside the table: a transition whose new
 * state could not be saved is taken back, so memory says what the disk
 * says (docs/lifecycle.md, "State on disk"). */
void vm__undo_state(vmrt *rt, sv_vm_state back, const char *why) {
    sv_vm *vm = rt->vm;
    log_debug("VM %s: %s -> %s (undone)", vm->name, sv_vm_state_name(vm->state), sv_vm_state_name(back));
    sv_vm_state from = vm->state;
    vm->state = back;
    if (from != back)
        emit_state(rt, from, back, "undone", NULL, why);
    start_over_release(rt, from);
}

void vm__add_waiter(waiter **list, sv_vm_done_fn done, void *userdata) {
    if (!done)
        return;
    waiter *w = calloc(1, sizeof *w);
    if (!w) {
        log_error("out of memory: a request will get no answer");
        return;
    }
    w->done = done;
    w->userdata = userdata;
    waiter **p = list;
    while (*p)
        p = &(*p)->next;
    *p = w;
}

/* Completes and frees every waiter of a list (the list is detached first:
 * a callback may add new waiters). */
void vm__complete(waiter **list, int status, json_t *result, const qv_error *err) {
    waiter *w = *list;
    *list = NULL;
    while (w) {
        waiter *next = w->next;
        w->done(status, result, err, w->userdata);
        free(w);
        w = next;
    }
}

void vm__fail_waiters(waiter **list, int code, const char *fmt, ...) {
    qv_error err = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof err.msg, fmt, ap);
    va_end(ap);
    vm__complete(list, -code, NULL, &err);
}

/* rt->refs: its three timers, the pidfd watch and queued start work. */
void vm__rt_unref(vmrt *rt) {
    sv_vmctl *c = rt->c;
    if (--rt->refs == 0) {
        qv_error err = {.code = ECANCELED};
        snprintf(err.msg, sizeof err.msg, "the daemon is stopping");
        call_waiters(TAKE_PTR(rt->save_waiters), rt, -ECANCELED, &err); /* a snapshot never taken (out of memory) */
        while (rt->n_start_old)
            close(rt->start_old_fds[--rt->n_start_old]);
        free(rt->state_dir);
        free(rt->save_text);
        free(rt->stop_reason);
        free(rt->gone_how);
        free(rt->abandon_why);
        vfio_plan_clear(&rt->pt_plan);
        sv_start_placement_clear(&rt->place);
        free(rt);
        vm__ctl_unref(c);
    }
}

static void rt_close_cb(uv_handle_t *h) {
    vm__rt_unref(h->data);
}

vmrt *vm__get_rt(sv_vmctl *c, sv_vm *vm) {
    if (vm->rt)
        return vm->rt;
    vmrt *rt = calloc(1, sizeof *rt);
    char *dir = rt ? strdup(vm->dir) : NULL;
    if (!dir) {
        free(rt);
        return NULL;
    }
    rt->state_dir = dir;
    rt->c = c;
    rt->vm = vm;
    uv_timer_init(c->loop, &rt->timer);
    uv_timer_init(c->loop, &rt->acpi_timer);
    uv_timer_init(c->loop, &rt->persist_timer);
    rt->timer.data = rt->acpi_timer.data = rt->persist_timer.data = rt;
    sv_net_fds_init(&rt->net);
    rt->place.numa_node = -1;
    rt->refs = 3;
    c->refs++;
    rt->next = c->rts;
    c->rts = rt;
    vm->rt = rt;
    return rt;
}

static void unlink_rt(vmrt *rt) {
    for (vmrt **p = &rt->c->rts; *p; p = &(*p)->next)
        if (*p == rt) {
            *p = rt->next;
            return;
        }
}

static void release_rt(vmrt *rt) {
    vm__snapshot_release(rt);
    vm__guest_copy_release(rt);
    unlink_rt(rt);
    sv_serial_cap_stop(rt->serial_cap);
    rt->serial_cap = NULL;
    sv_net_fds_close(&rt->net);
    if (rt->vm)
        rt->vm->rt = NULL;
    rt->vm = NULL;
    uv_close((uv_handle_t *)&rt->timer, rt_close_cb);
    uv_close((uv_handle_t *)&rt->acpi_timer, rt_close_cb);
    uv_close((uv_handle_t *)&rt->persist_timer, rt_close_cb);
}

void vm__serial_cap_start(vmrt *rt) {
    qv_error err = {0};
    if (!rt->serial_cap &&
        sv_serial_cap_start(rt->c->loop, rt->vm->dir, rt->vm->name, SV_SERIAL_LOG_MAX, &rt->serial_cap, &err) < 0)
        log_warning("VM %s: serial.log is not kept bounded: %s", rt->vm->name, err.msg);
}

void vm__run_path(const vmrt *rt, const char *file, char *buf, size_t len) {
    if (sv_layout_run_path(cfg(rt->c), rt->vm->name, file, buf, len) < 0)
        buf[0] = '\0';
}

void vm__remove_run_files(const vmrt *rt) {
    static const char *const files[] = {SV_VM_QMP_SOCK, SV_VM_QGA_SOCK, SV_VM_CONSOLE_SOCK, SV_VM_PIDFILE,
                                        SV_VM_STOP_MARK, SV_VM_FSFREEZE_MARK};
    char p[PATH_MAX];
    for (size_t i = 0; i < QV_ARRAY_SIZE(files); i++) {
        vm__run_path(rt, files[i], p, sizeof p);
        if (p[0] && unlink(p) < 0 && errno != ENOENT)
            log_warning("VM %s: cannot remove %s: %s", rt->vm->name, p, strerror(errno));
    }
    vm__run_path(rt, NULL, p, sizeof p);
    if (p[0])
        rmdir(p); /* only when empty */
}

/* Whether a VM with a QEMU (or one being spawned) has `port` forwarded. */
static bool port_taken(sv_vmctl *c, int port) {
    for (sv_vm *vm = sv_registry_first(c->registry); vm; vm = vm->next)
        if (vm->run.ssh_port == port && sv_vm_state_has_qemu(vm->state))
            return true;
    return false;
}

/* A free TCP port on 127.0.0.1 for the SSH forward (the kernel picks it).
 * QEMU binds it only later, so the kernel may hand the same port to the
 * next start (concurrent starts did get the same one): a port another VM
 * was given is refused, and held meanwhile so that the next pick differs. */
int vm__pick_port(sv_vmctl *c) {
    int held[8], n_held = 0, r = -EADDRINUSE;
    while (n_held < (int)QV_ARRAY_SIZE(held)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            r = -errno;
            break;
        }
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
            r = -errno;
            close(fd);
            break;
        }
        if (!port_taken(c, ntohs(a.sin_port))) {
            r = ntohs(a.sin_port);
            close(fd);
            break;
        }
        held[n_held++] = fd;
    }
    while (n_held > 0)
        close(held[--n_held]);
    return r;
}

/* The tail of what QEMU wrote to qemu.log since `offset`: its error
 * message when it dies at start.  Lines are joined with "; ". */
void vm__log_tail(const vmrt *rt, off_t offset, char *buf, size_t len) {
    buf[0] = '\0';
    char path[PATH_MAX];
    sv_layout_instance_file(rt->vm->dir, SV_VM_QEMU_LOG, path, sizeof path);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= offset)
        return;
    off_t from = st.st_size - offset > 2048 ? st.st_size - 2048 : offset;
    char raw[2049];
    ssize_t n = pread(fd, raw, sizeof raw - 1, from);
    if (n <= 0)
        return;
    raw[n] = '\0';
    size_t out = 0;
    for (char *save = NULL, *line = strtok_r(raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        /* drop QEMU's "-msg timestamp=on" prefix: "2026-11-21T10:00:00.000000Z " */
        if (strlen(line) > 28 && line[4] == '-' && line[10] == 'T' && line[27] == ' ')
            line += 28;
        if (!*line)
            continue;
        int w = snprintf(buf + out, len - out, "%s%s", out ? "; " : "", line);
        if (w < 0 || (size_t)w >= len - out)
            break;
        out += (size_t)w;
    }
}

const char *vm__signal_name(int sig) {
    switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGSYS: return "SIGSYS";
    default: return "a signal";
    }
}

/* ---- create, forget, shutdown ------------------------------------------ */

int sv_vmctl_new(uv_loop_t *loop, sv_registry *registry, sv_config *const *config, sv_vmctl **ret, qv_error *err) {
    sv_vmctl *c = calloc(1, sizeof *c);
    if (!c)
        return qv_error_set(err, ENOMEM, "out of memory");
    c->loop = loop;
    c->registry = registry;
    c->config = config;
    c->refs = 1; /* dropped by sv_vmctl_shutdown */
    /* The QEMU probe runs at the first start, not here: a daemon that never
     * starts a VM never runs QEMU, and a stop right after start is not held
     * up by a probe in flight (work on a worker thread cannot be cancelled). */
    *ret = c;
    return 0;
}

/* The VM is leaving the registry: its runtime is let go. */
void vm__forget(vmrt *rt) {
    vm__console_end(rt, json_pack("{s:s}", "reason", "removed"));
    vm__detach_channels(rt);
    vm__watch_close(rt);
    vm__save_drop(rt);
    release_rt(rt);
}

void sv_vmctl_shutdown(sv_vmctl *c) {
    if (!c)
        return;
    c->shutting_down = true;
    while (c->caps_waiters) {
        caps_waiter *w = c->caps_waiters;
        c->caps_waiters = w->next;
        vm__caps_deliver(c, w->done, w->userdata);
        free(w);
    }
    while (c->rts) {
        vmrt *rt = c->rts;
        vm__fail_waiters(&rt->start_waiters, ECANCELED,
                     "the daemon is stopping; the start is finished or rolled back when it runs again");
        vm__fail_waiters(&rt->stop_waiters, ECANCELED,
                     "the daemon is stopping; the stop is finished when it runs again");
        vm__console_end(rt, json_pack("{s:s, s:s}", "reason", "daemon", "message",
                                  "the qvisor daemon is stopping; the VM keeps running"));
        vm__detach_channels(rt);
        vm__watch_close(rt);
        if (rt->vm && rt->persist_due)
            vm__persist(rt); /* a coalesced write still pending: the loop runs until it is done */
        release_rt(rt);
    }
    vm__ctl_unref(c);
}
