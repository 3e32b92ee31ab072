/* The QEMU capability probe as the engine keeps it: once per binary and
 * accelerator mode, repeated when the binary changes, waiters queued while
 * it runs. */
#include "supervisor/vm/engine.h"

static void caps_work(uv_work_t *w) {
    sv_vmctl *c = w->data;
    memset(&c->caps, 0, sizeof c->caps);
    c->caps_err = (qv_error){0};
    c->caps_status = sv_qemu_caps_probe(c->caps_binary, c->caps_want_kvm, &c->caps, &c->caps_err);
}

/* The probe's answer to one sv_vmctl_with_caps() caller, with the
 * accelerator resolved the way vm__launch() will. */
void vm__caps_deliver(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata) {
    qv_error err = {0};
    if (c->shutting_down) {
        qv_error_set(&err, ECANCELED, "the daemon is stopping");
        done(-ECANCELED, NULL, false, &err, userdata);
        return;
    }
    if (c->caps_state != CAPS_DONE || c->caps_status < 0) {
        if (c->caps_state == CAPS_DONE)
            err = c->caps_err;
        else
            qv_error_set(&err, ENOMEM, "cannot probe QEMU");
        done(-err.code, NULL, false, &err, userdata);
        return;
    }
    bool kvm = false;
    if (sv_qemu_accel_resolve(sv_accel_to_string(cfg(c)->accelerator), &c->caps, &kvm, NULL, 0, &err) < 0) {
        done(-err.code, NULL, false, &err, userdata);
        return;
    }
    done(0, &c->caps, kvm, NULL, userdata);
}


void sv_vmctl_with_caps(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata) {
    if (c->shutting_down || vm__caps_current(c) || c->caps_state != CAPS_PROBING) {
        vm__caps_deliver(c, done, userdata);
        return;
    }
    caps_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        qv_error err;
        qv_error_set(&err, ENOMEM, "out of memory");
        done(-ENOMEM, NULL, false, &err, userdata);
        return;
    }
    w->done = done;
    w->userdata = userdata;
    caps_waiter **p = &c->caps_waiters;
    while (*p)
        p = &(*p)->next;
    *p = w;
}

static void caps_after(uv_work_t *w, int status) {
    sv_vmctl *c = w->data;
    free(w);
    if (status < 0 && c->caps_status == 0)
        c->caps_status = qv_error_set(&c->caps_err, ECANCELED, "probe cancelled");
    c->caps_state = CAPS_DONE;
    uv_update_time(c->loop);
    c->caps_done_ms = uv_now(c->loop);
    if (c->caps_status < 0)
        log_error("cannot use %s: %s", c->caps_binary, c->caps_err.msg);
    else
        log_info("QEMU %s (%s); KVM: %s; seccomp sandbox %s", c->caps.version, c->caps_binary, c->caps.kvm_detail,
                 c->caps.sandbox ? "supported" : "not supported");
    if (!c->shutting_down)
        for (vmrt *rt = c->rts; rt; rt = rt->next)
            if (rt->waiting_caps) {
                rt->waiting_caps = false;
                vm__maybe_launch(rt);
            }
    caps_waiter *w8 = c->caps_waiters;
    c->caps_waiters = NULL;
    while (w8) {
        caps_waiter *next = w8->next;
        vm__caps_deliver(c, w8->done, w8->userdata);
        free(w8);
        w8 = next;
    }
    vm__ctl_unref(c);
}

/* Probes the configured QEMU unless the cached answer is for it.  A
 * successful probe stands until the binary or the accelerator mode changes
 * in the config.  A failed one stands too, for CAPS_RETRY_MS or until the
 * binary itself changes (size, mtime, inode: reinstalled or fixed): every
 * start and create in between gets its error at once, and a broken binary
 * is not run again for each of them. */
bool vm__caps_current(sv_vmctl *c) {
    const sv_config *conf = cfg(c);
    bool want_kvm = conf->accelerator != SV_ACCEL_TCG;
    if (c->caps_state == CAPS_PROBING)
        return false;
    bool same = c->caps_state == CAPS_DONE && c->caps_binary && strcmp(c->caps_binary, conf->qemu_binary) == 0 &&
                c->caps_want_kvm == want_kvm;
    if (same && c->caps_status == 0)
        return true;
    sv_qemu_binary_stamp now;
    sv_qemu_binary_stamp_get(conf->qemu_binary, &now);
    if (same && uv_now(c->loop) - c->caps_done_ms < CAPS_RETRY_MS && sv_qemu_binary_stamp_equal(&now, &c->caps_stamp))
        return true;
    uv_work_t *w = calloc(1, sizeof *w);
    char *bin = strdup(conf->qemu_binary);
    if (!w || !bin) {
        free(w);
        free(bin);
        return false;
    }
    free(c->caps_binary);
    c->caps_binary = bin;
    c->caps_want_kvm = want_kvm;
    c->caps_stamp = now; /* before the probe: a change while it runs probes again */
    c->caps_state = CAPS_PROBING;
    c->accel_warned = false;
    w->data = c;
    if (uv_queue_work(c->loop, w, caps_work, caps_after) < 0) {
        free(w);
        c->caps_state = CAPS_NONE;
        return false;
    }
    c->refs++;
    return false;
}
