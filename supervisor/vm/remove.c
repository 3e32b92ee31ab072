/* vm rm: the table's `remove` (docs/lifecycle.md).  The VM is `removing`
 * from the table's move; once a state write in flight is done, its
 * directory is renamed to .NAME.removing (the point of no return: a rename
 * that fails puts the VM back), then deleted with its pool disk on a
 * worker, and the VM leaves the registry. */
#include "supervisor/vm/engine.h"
#include "supervisor/vm/registry-internal.h"

typedef struct remove_job {
    uv_work_t work;
    vmrt *rt;
    sv_vm_state from;
    reg_removal rm;
    sv_vm_done_fn done;
    void *userdata;
} remove_job;

static void remove_answer(remove_job *job, const qv_error *err) {
    if (job->done)
        job->done(err ? -err->code : 0, NULL, err, job->userdata);
    reg__remove_clear(&job->rm);
    free(job);
}

static void remove_work(uv_work_t *w) {
    remove_job *job = w->data;
    reg__remove_files(&job->rm);
}

static void remove_after(uv_work_t *w, int status) {
    (void)status;
    remove_job *job = w->data;
    vmrt *rt = job->rt;
    sv_vm *vm = rt->vm; /* NULL: the daemon stopped meanwhile (the rest at its next start) */
    if (vm) {
        log_info("removed VM %s and its disk", vm->name);
        vm__forget(rt);
        reg__remove_end(rt->c->registry, vm);
    }
    remove_answer(job, NULL);
    vm__rt_unref(rt);
}

/* No state write is in flight any more: the directory goes. */
static void remove_go(vmrt *rt, int status, const qv_error *err, void *userdata) {
    (void)status;
    (void)err;
    remove_job *job = userdata;
    sv_vm *vm = rt->vm;
    qv_error e = {0};
    if (!vm) {
        qv_error_set(&e, ECANCELED, "the daemon is stopping");
        remove_answer(job, &e);
        return;
    }
    if (reg__remove_begin(rt->c->registry, vm, &job->rm, &e) < 0) {
        vm__undo_state(rt, job->from, e.msg);
        log_warning("VM %s: not removed: %s", vm->name, e.msg);
        remove_answer(job, &e);
        return;
    }
    job->work.data = job;
    rt->refs++;
    if (uv_queue_work(rt->c->loop, &job->work, remove_work, remove_after) < 0) {
        remove_work(&job->work); /* cannot happen with a work callback */
        remove_after(&job->work, 0);
    }
}

void vm__act_remove(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    remove_job *job = calloc(1, sizeof *job);
    if (!job) {
        vm__undo_state(rt, from, "out of memory");
        qv_error e = {0};
        qv_error_set(&e, ENOMEM, "out of memory");
        if (a->done)
            a->done(-e.code, NULL, &e, a->userdata);
        return;
    }
    *job = (remove_job){.rt = rt, .from = from, .done = a->done, .userdata = a->userdata, .rm = {.instfd = -1}};
    uv_timer_stop(&rt->timer); /* a restart the policy scheduled */
    vm__save_drop(rt);
    /* now, or once the write in flight is done and no worker makes a file
     * in the directory any more (the file its next write goes into) */
    vm__writes_done_then(rt, remove_go, job);
}
