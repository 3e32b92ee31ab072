/* vm exec and vm cp in the engine: one command for the guest agent at a
 * time, relayed on the VM's own agent connection (monitor.c attaches it)
 * after the state table said yes (event `guest`, action `agent`).  The
 * reply is the guest's, hence hostile: checked by qmp/qga.h's parsers and
 * handed on in the protocol's shape (vm.h), never as the agent wrote it.
 * docs/guest.md tells the whole story. */
#include "supervisor/vm/engine.h"

typedef struct guest_call {
    sv_guest_cmd cmd;
    json_t *args;
    size_t limit;
} guest_call;

typedef struct guest_op {
    vmrt *rt;
    sv_guest_cmd cmd;
    size_t limit;
    uint64_t timeout_ms;
    sv_vm_done_fn done;
    void *userdata;
} guest_op;

static const char *const agent_commands[] = {
    [SV_GUEST_EXEC] = "guest-exec",           [SV_GUEST_EXEC_STATUS] = "guest-exec-status",
    [SV_GUEST_FILE_OPEN] = "guest-file-open", [SV_GUEST_FILE_READ] = "guest-file-read",
    [SV_GUEST_FILE_WRITE] = "guest-file-write", [SV_GUEST_FILE_CLOSE] = "guest-file-close",
};

static bool agent_up(const vmrt *rt) {
    return rt->vm->agent && strcmp(rt->vm->agent, "ok") == 0;
}

int vm__check_agent(vmrt *rt, const vm_event_arg *a) {
    const sv_vm *vm = rt->vm;
    if (!vm->spec->agent)
        return qv_error_set(a->err, EHOSTDOWN, "VM '%s' has no guest agent (it was created with --no-agent)",
                            vm->name);
    if (!rt->qga)
        return qv_error_set(a->err, EHOSTDOWN, "VM '%s': the guest agent's channel is not connected", vm->name);
    if (rt->agent_port == 0)
        return qv_error_set(a->err, EHOSTDOWN,
                            "VM '%s': no guest agent answers (the guest has not opened the agent's port: is "
                            "qemu-guest-agent running in it?)",
                            vm->name);
    return 0;
}

static json_t *exec_output(const qga_exec_output *o) {
    return o->b64 ? json_stringn(o->b64, o->b64_len) : json_string("");
}

/* The checked reply in the protocol's shape (new reference), or NULL with
 * *status set. */
static json_t *shape(const guest_op *op, json_t *result, int *status) {
    int r = 0;
    json_t *out = NULL;
    switch (op->cmd) {
    case SV_GUEST_EXEC: {
        int64_t pid;
        if ((r = qga_parse_exec(result, &pid)) == 0)
            out = json_pack("{s:I}", "pid", (json_int_t)pid);
        break;
    }
    case SV_GUEST_EXEC_STATUS: {
        qga_exec_status s;
        if ((r = qga_parse_exec_status(result, &s)) == 0)
            out = json_pack("{s:b, s:o, s:o, s:o, s:o, s:b, s:b}", "exited", s.exited, "exitcode",
                            s.exitcode >= 0 ? json_integer(s.exitcode) : json_null(), "signal",
                            s.signal >= 0 ? json_integer(s.signal) : json_null(), "stdout", exec_output(&s.out),
                            "stderr", exec_output(&s.err), "stdout_truncated", s.out.truncated, "stderr_truncated",
                            s.err.truncated);
        break;
    }
    case SV_GUEST_FILE_OPEN: {
        int64_t h;
        if ((r = qga_parse_file_open(result, &h)) == 0)
            out = json_pack("{s:I}", "handle", (json_int_t)h);
        break;
    }
    case SV_GUEST_FILE_READ: {
        qga_file_chunk ch;
        if ((r = qga_parse_file_read(result, op->limit, &ch)) == 0)
            out = json_pack("{s:s%, s:I, s:b}", "data", ch.b64, ch.b64_len, "count", (json_int_t)ch.count, "eof",
                            ch.eof);
        break;
    }
    case SV_GUEST_FILE_WRITE: {
        size_t n;
        if ((r = qga_parse_file_write(result, op->limit, &n)) == 0)
            out = json_pack("{s:I}", "count", (json_int_t)n);
        break;
    }
    case SV_GUEST_FILE_CLOSE:
        out = json_object();
        break;
    }
    if (r == 0 && !out)
        r = -ENOMEM;
    *status = r;
    return out;
}

int vm__agent_outcome(vmrt *rt, int status, const char *command, const qmp_error *e, uint64_t timeout_ms,
                      qv_error *err) {
    const char *name = rt->vm ? rt->vm->name : "?";
    if (status == QMP_ECOMMAND) {
        qv_error_set(err, EIO, "VM '%s': the guest agent refused %s: %s", name, command,
                     e && e->desc ? e->desc : "(no reason given)");
    } else if (status == QMP_ETIMEDOUT) {
        qv_error_set(err, EHOSTDOWN, "VM '%s': the guest agent did not answer %s within %.1f s", name, command,
                     (double)timeout_ms / 1000.0);
    } else if (status == QMP_ECANCELED || status == QMP_EDISCONNECTED) {
        qv_error_set(err, EHOSTDOWN, "VM '%s': the guest agent's channel closed during %s (the VM stopped?)", name,
                     command);
    } else if (status == QMP_EPROTO) {
        qv_error_set(err, EPROTO, "VM '%s': the guest agent's answer to %s was not valid JSON or over %u bytes",
                     name, command, QGA_MAX_MESSAGE);
    } else if (status < 0) {
        qv_error_set(err, EHOSTDOWN, "VM '%s': the guest agent's channel failed during %s: %s", name, command,
                     strerror(-status));
    }
    /* what the agent did tells whether it is up; a daemon stopping says nothing */
    if (rt->vm && status != QMP_ECANCELED && rt->vm->state == SV_VM_RUNNING)
        vm__set_agent(rt, err->code == EHOSTDOWN ? "no answer" : "ok");
    return -err->code;
}

uint64_t vm__agent_timeout(const vmrt *rt, uint64_t timeout_ms) {
    /* An agent not known to answer gets a ping's time: a guest without one
     * is told in seconds, not after a long command's deadline. */
    return !agent_up(rt) && timeout_ms > AGENT_PING_MS ? AGENT_PING_MS : timeout_ms;
}

static void on_reply(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    guest_op *op = userdata;
    vmrt *rt = op->rt;
    const char *command = agent_commands[op->cmd];
    qv_error err = {0};
    json_t *out = NULL;
    if (status == 0) {
        int r;
        out = shape(op, result, &r);
        if (r == QMP_EBADREPLY)
            qv_error_set(&err, EPROTO, "VM '%s': the guest agent's answer to %s is not one (refused)",
                         rt->vm ? rt->vm->name : "?", command);
        else if (r < 0)
            qv_error_set(&err, -r, "VM '%s': %s", rt->vm ? rt->vm->name : "?", strerror(-r));
    }
    vm__agent_outcome(rt, status, command, e, op->timeout_ms, &err);
    if (err.code)
        op->done(-err.code, NULL, &err, op->userdata);
    else
        op->done(0, out, NULL, op->userdata);
    json_decref(out);
    vm__rt_unref(rt);
    free(op);
}

void vm__act_agent(vmrt *rt, sv_vm_state from, const vm_event_arg *a) {
    (void)from;
    if (a->copy) {
        vm__guest_copy_run(rt, a->copy);
        return;
    }
    const guest_call *call = a->call;
    qv_error err = {0};
    guest_op *op = calloc(1, sizeof *op);
    if (!op) {
        qv_error_set(&err, ENOMEM, "out of memory");
        a->done(-err.code, NULL, &err, a->userdata);
        return;
    }
    uint64_t timeout = vm__agent_timeout(rt, a->timeout_ms);
    *op = (guest_op){.rt = rt, .cmd = call->cmd, .limit = call->limit, .timeout_ms = timeout, .done = a->done,
                     .userdata = a->userdata};
    rt->refs++; /* the reply may come after the VM is forgotten */
    int r = qga_send(rt->qga, agent_commands[call->cmd], call->args, timeout, on_reply, op);
    if (r < 0) {
        rt->refs--;
        free(op);
        qv_error_set(&err, EHOSTDOWN, "VM '%s': cannot send %s to the guest agent: %s", rt->vm->name,
                     agent_commands[call->cmd], strerror(-r));
        a->done(-err.code, NULL, &err, a->userdata);
    }
}

int sv_vm_guest(sv_vmctl *c, sv_vm *vm, sv_guest_cmd cmd, json_t *args, size_t limit, uint64_t timeout_ms,
                sv_vm_done_fn done, void *userdata, qv_error *err) {
    if ((unsigned)cmd >= QV_ARRAY_SIZE(agent_commands))
        return qv_error_set(err, EINVAL, "no such guest command");
    guest_call call = {.cmd = cmd, .args = args, .limit = limit};
    return vm__request(c, vm, SV_EV_GUEST,
                       &(vm_event_arg){.call = &call, .timeout_ms = timeout_ms, .done = done, .userdata = userdata,
                                       .err = err});
}
