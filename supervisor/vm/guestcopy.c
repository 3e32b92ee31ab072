/* vm cp into and out of a guest as one operation of the engine
 * (docs/guest.md, "vm cp").  Out: guest-file-open, guest-file-read of 1 MiB
 * at a time until eof (each reply checked whole, then decoded), each chunk
 * written to the client's file on libuv's workers, guest-file-close; the
 * client makes, syncs and renames its file.  Into the guest: the checks of the target through guest-exec (`test -d`, `test -e`),
 * a temporary file next to it (64 random bits in its name), `chmod` before
 * any data, the client's file read on libuv's workers and written in
 * chunks with guest-file-write (a short write continued), guest-file-close,
 * then `mv -f -- TMP TARGET`.
 *
 * Before the temporary file is created, a mark naming it is written in the
 * instance directory (layout.h, SV_VM_COPY_MARK_PREFIX); it goes once the
 * file was renamed or removed.  A copy that fails, whose client goes away,
 * or whose VM stops removes the file through the agent when the agent still
 * answers; a mark left behind (a killed daemon, an agent gone with its VM)
 * is acted on when the daemon re-adopts the VM and whenever the VM's agent
 * comes up (vm__guest_copy_recover): `rm -f` of the path it names, only
 * when that path is a temporary name of ours (sv_layout_copy_mark_parse). */
#include "supervisor/vm/engine.h"

#include "base64.h"
#include "supervisor/vm/layout.h"

#include <sys/random.h>

#define COPY_CHUNK (1u << 20)        /* the agent parses each message under TCG: larger does not help */
#define COPY_CMD_TIMEOUT_MS 10000u   /* exec, open, close */
#define COPY_IO_TIMEOUT_MS 60000u    /* a chunk, an exec status */
#define POLL_FIRST_MS 20u
#define POLL_MAX_MS 500u
#define MARK_MAX 8192u               /* a mark longer than this is not one of ours */
/* Copies read and write the client's file on libuv's pool, one at a time.
 * The file is the client's choice: a read on a FUSE file system whose
 * daemon never answers (or a dead NFS server) never returns, and holds its
 * pool thread for good.  One lane for all copies means such a file holds
 * one thread, never the ones the engine's durable writes and start
 * preparations need; other copies wait behind it (until it returns, or
 * their VM stops or the daemon does). */
#define COPY_IO_LANES 1u

/* After a guest-exec: the command's exit status (128+N when signal N ended
 * it), or a negative errno with op->xerr saying why it did not run. */
typedef void (*exec_then_fn)(gcopy *op, int code);

struct gcopy {
    vmrt *rt;
    gcopy *next;      /* rt->gcopies */
    bool recover;     /* the cleanup of marks left behind, not a copy */
    bool out;         /* a copy out of the guest into the client's file */
    uv_timer_t timer; /* guest-exec-status polls */
    uv_work_t io;     /* a read or write of the client's file */
    ssize_t io_result; /* its byte count, or a negative errno */
    void (*io_start)(gcopy *op); /* waiting for the lane: what to run then */
    gcopy *io_next;   /* in vmctl's copy_io_queue */
    bool io_queued;
    bool io_waited;   /* it waited once: said in the log */
    uv_work_t work;   /* the mark's durable write */
    bool waiting;     /* the timer runs */
    bool finished;
    /* a copy */
    int fd;
    char *path, *filename;
    bool force;
    unsigned mode;
    uint64_t total, bytes;
    char target[SV_GUEST_PATH_MAX + 1], tmp[SV_GUEST_PATH_MAX + 1];
    char mark[64];      /* the mark's name in the instance directory */
    char *mark_path;    /* and its path, for the worker */
    char *mark_text;
    int mark_status;    /* the worker's result */
    bool marked;        /* the mark is on disk */
    int64_t handle;     /* the guest's open file, 0 when none */
    unsigned char *buf;
    char *b64;
    size_t n, off;      /* the chunk in buf, and how much of it the agent took (out: was written) */
    bool eof;           /* out: the agent said the file ends after this chunk */
    int status;         /* the copy's outcome so far, err saying why */
    qv_error err;
    sv_vm_copy_args a;
    sv_vm_done_fn done;
    void *userdata;
    /* the command in flight */
    const char *command;
    uint64_t cmd_timeout;
    int64_t pid;
    unsigned poll_ms;
    exec_then_fn then;
    qv_error xerr;
    /* recover: the marks found, the one in hand */
    char **marks;
    size_t n_marks, i_mark;
};

static const char *vm_name(const gcopy *op) {
    return op->rt->vm ? op->rt->vm->name : "?";
}

static bool op_gone(const gcopy *op) {
    return !op->rt->vm || op->rt->c->shutting_down;
}

static void on_closed(uv_handle_t *h) {
    gcopy *op = h->data;
    vmrt *rt = op->rt;
    qv_closep(&op->fd);
    free(op->path);
    free(op->filename);
    free(op->mark_path);
    free(op->mark_text);
    free(op->buf);
    free(op->b64);
    for (size_t i = 0; i < op->n_marks; i++)
        free(op->marks[i]);
    free(op->marks);
    free(op);
    vm__rt_unref(rt);
}

static void finish(gcopy *op) {
    vmrt *rt = op->rt;
    op->finished = true;
    for (gcopy **p = &rt->gcopies; *p; p = &(*p)->next)
        if (*p == op) {
            *p = op->next;
            break;
        }
    if (op->recover) {
        rt->copy_recovering = false;
    } else if (op->status < 0) {
        log_warning("VM %s: copy %s %s failed: %s", vm_name(op), op->out ? "out of" : "into",
                    op->target[0] ? op->target : op->path, op->err.msg);
        op->done(op->status, NULL, &op->err, op->userdata);
    } else if (op->out) {
        log_info("VM %s: copied %llu bytes out of %s", vm_name(op), (unsigned long long)op->bytes, op->path);
        json_t *res = json_pack("{s:I}", "bytes", (json_int_t)op->bytes);
        op->done(0, res, NULL, op->userdata);
        json_decref(res);
    } else {
        log_info("VM %s: copied %llu bytes into %s", vm_name(op), (unsigned long long)op->bytes, op->target);
        json_t *res = json_pack("{s:s, s:I}", "target", op->target, "bytes", (json_int_t)op->bytes);
        op->done(0, res, NULL, op->userdata);
        json_decref(res);
    }
    uv_close((uv_handle_t *)&op->timer, on_closed);
}

static void mark_remove(gcopy *op, const char *name) {
    char p[PATH_MAX];
    if (sv_layout_instance_file(op->rt->state_dir, name, p, sizeof p) == 0 && unlink(p) < 0 && errno != ENOENT)
        log_warning("VM %s: cannot remove %s: %s", vm_name(op), p, strerror(errno));
}

/* ---- one agent command, and guest-exec to its end ---------------------------- */

/* Sends command (args borrowed) with cb as its reply; a channel that is not
 * there answers at once, as a closed one would. */
static void send_cmd(gcopy *op, const char *command, json_t *args, uint64_t timeout_ms, qga_reply_cb cb) {
    op->command = command;
    op->cmd_timeout = vm__agent_timeout(op->rt, timeout_ms);
    int r = !args ? -ENOMEM
            : op_gone(op) || !op->rt->qga
                ? -ENOTCONN
                : qga_send(op->rt->qga, command, args, op->cmd_timeout, cb, op);
    json_decref(args);
    if (r < 0)
        cb(NULL, r == -ENOMEM ? -ENOMEM : QMP_EDISCONNECTED, NULL, NULL, op);
}

/* The agent's answer as an outcome: 0, or a negative errno with err. */
static int outcome(gcopy *op, int status, const qmp_error *e, qv_error *err) {
    *err = (qv_error){0};
    if (status == -ENOMEM)
        return qv_error_set(err, ENOMEM, "out of memory");
    return vm__agent_outcome(op->rt, status, op->command, e, op->cmd_timeout, err);
}

static void exec_poll(gcopy *op);
static void on_poll_timer(uv_timer_t *t);

static void on_exec_status(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    gcopy *op = userdata;
    qga_exec_status st;
    int r = outcome(op, status, e, &op->xerr);
    if (r == 0 && qga_parse_exec_status(result, &st) < 0)
        r = qv_error_set(&op->xerr, EPROTO, "VM '%s': the guest agent's answer to guest-exec-status is not one",
                         vm_name(op));
    if (r < 0) {
        op->then(op, r);
        return;
    }
    if (st.exited) {
        op->then(op, st.exitcode >= 0 ? st.exitcode : 128 + st.signal);
        return;
    }
    if (op_gone(op)) {
        op->then(op, qv_error_set(&op->xerr, ECANCELED, "the daemon is stopping"));
        return;
    }
    op->poll_ms = op->poll_ms ? (op->poll_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : op->poll_ms * 2) : POLL_FIRST_MS;
    op->waiting = true;
    uv_timer_start(&op->timer, on_poll_timer, op->poll_ms, 0);
}

static void exec_poll(gcopy *op) {
    send_cmd(op, "guest-exec-status", json_pack("{s:I}", "pid", (json_int_t)op->pid), COPY_IO_TIMEOUT_MS,
             on_exec_status);
}

static void on_poll_timer(uv_timer_t *t) {
    gcopy *op = t->data;
    op->waiting = false;
    exec_poll(op);
}

static void on_exec(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    gcopy *op = userdata;
    int r = outcome(op, status, e, &op->xerr);
    if (r == 0 && qga_parse_exec(result, &op->pid) < 0)
        r = qv_error_set(&op->xerr, EPROTO, "VM '%s': the guest agent's answer to guest-exec is not one",
                         vm_name(op));
    if (r < 0) {
        op->then(op, r);
        return;
    }
    op->poll_ms = 0;
    exec_poll(op);
}

/* Runs argv (an array of strings, reference stolen) in the guest through
 * guest-exec (no shell), polls guest-exec-status until it exited, then
 * calls then. */
static void exec_run(gcopy *op, json_t *argv, exec_then_fn then) {
    op->then = then;
    json_t *args = argv ? json_pack("{s:O, s:o, s:b}", "path", json_array_get(argv, 0), "arg", json_array(),
                                    "capture-output", 1)
                        : NULL;
    for (size_t i = 1; args && i < json_array_size(argv); i++)
        json_array_append(json_object_get(args, "arg"), json_array_get(argv, i));
    send_cmd(op, "guest-exec", args, COPY_CMD_TIMEOUT_MS, on_exec);
    json_decref(argv);
}

/* ---- the end of a copy: the handle closed, the file renamed or removed -------- */

static void cleanup(gcopy *op);

static int fail(gcopy *op, const qv_error *err) {
    if (op->status == 0) {
        op->err = *err;
        op->status = -err->code;
    }
    cleanup(op);
    return op->status;
}

static void after_rm(gcopy *op, int code) {
    if (code == 0) {
        mark_remove(op, op->mark);
        log_info("VM %s: removed the unfinished %s in the guest", vm_name(op), op->tmp);
    } else {
        log_warning("VM %s: could not remove %s in the guest (%s); it is removed when the VM's agent next answers",
                    vm_name(op), op->tmp, code < 0 ? op->xerr.msg : "rm failed");
    }
    finish(op);
}

static void after_close(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata);

/* Undoes what the copy made, step by step: the handle, the file, the mark. */
static void cleanup(gcopy *op) {
    if (op->handle) {
        send_cmd(op, "guest-file-close", json_pack("{s:I}", "handle", (json_int_t)op->handle), COPY_CMD_TIMEOUT_MS,
                 after_close);
        return;
    }
    if (op->marked) {
        exec_run(op, json_pack("[s, s, s, s]", "rm", "-f", "--", op->tmp), after_rm);
        return;
    }
    finish(op);
}

static void after_mv(gcopy *op, int code) {
    if (code != 0) {
        qv_error err = {0};
        if (code > 0)
            qv_error_set(&err, EIO, "VM '%s': mv to %s failed in the guest (exit %d)", vm_name(op), op->target, code);
        fail(op, code > 0 ? &err : &op->xerr);
        return;
    }
    op->marked = false;
    mark_remove(op, op->mark);
    finish(op);
}

static void after_close(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    (void)result;
    gcopy *op = userdata;
    qv_error err;
    int r = outcome(op, status, e, &err);
    op->handle = 0; /* closed, or the agent forgets it when it restarts */
    if (op->status < 0) {
        cleanup(op);
        return;
    }
    if (r < 0) {
        fail(op, &err);
        return;
    }
    if (op->out) {
        finish(op);
        return;
    }
    exec_run(op, json_pack("[s, s, s, s, s]", "mv", "-f", "--", op->tmp, op->target), after_mv);
}

/* ---- the lane to the client's file ------------------------------------------------- */

/* start runs now when the lane is free, else once it is. */
static void io_submit(gcopy *op, void (*start)(gcopy *op)) {
    sv_vmctl *c = op->rt->c;
    if (c->copy_io >= COPY_IO_LANES) {
        op->io_start = start;
        op->io_next = NULL;
        gcopy **t = &c->copy_io_queue;
        while (*t)
            t = &(*t)->io_next;
        *t = op;
        op->io_queued = true;
        if (!op->io_waited)
            log_info("VM %s: copy %s %s waits for another copy's file I/O (one at a time)", vm_name(op),
                     op->out ? "out of" : "into", op->out ? op->path : op->target);
        op->io_waited = true;
        return;
    }
    c->copy_io++;
    start(op);
}

/* The lane is free again: the next copy waiting takes it. */
static void io_release(sv_vmctl *c) {
    c->copy_io--;
    gcopy *next = c->copy_io_queue;
    if (!next)
        return;
    c->copy_io_queue = next->io_next;
    next->io_queued = false;
    c->copy_io++;
    next->io_start(next);
}

/* A copy given up while waiting for the lane leaves the queue. */
static void io_unqueue(gcopy *op) {
    for (gcopy **p = &op->rt->c->copy_io_queue; *p; p = &(*p)->io_next)
        if (*p == op) {
            *p = op->io_next;
            break;
        }
    op->io_queued = false;
}

static void io_delay(void) {
#if QV_TEST_HOOKS
    /* tests: each read or write of the client's file takes this long */
    const char *ms = getenv("QVISOR_TEST_COPY_IO_DELAY_MS");
    if (ms && *ms)
        usleep((useconds_t)strtoul(ms, NULL, 10) * 1000u);
#endif
}

static void read_work(uv_work_t *w) {
    gcopy *op = w->data;
    io_delay();
    ssize_t n;
    do
        n = pread(op->fd, op->buf, COPY_CHUNK, (off_t)op->bytes);
    while (n < 0 && errno == EINTR);
    op->io_result = n < 0 ? -errno : n;
}

static void write_work(uv_work_t *w) {
    gcopy *op = w->data;
    io_delay();
    ssize_t n;
    do
        n = pwrite(op->fd, op->buf + op->off, op->n - op->off, (off_t)op->bytes);
    while (n < 0 && errno == EINTR);
    op->io_result = n < 0 ? -errno : n;
}

/* The lane's read or write goes to a worker; after() gives the lane back. */
static void io_queue(gcopy *op, uv_work_cb work, uv_after_work_cb after, const char *what) {
    op->io.data = op;
    int r = uv_queue_work(op->rt->c->loop, &op->io, work, after);
    if (r < 0) {
        io_release(op->rt->c);
        qv_error err = {0};
        qv_error_set(&err, -r, "cannot %s: %s", what, uv_strerror(r));
        fail(op, &err);
    }
}

/* ---- the data -------------------------------------------------------------------- */

/* Between two steps: a client gone (or a daemon stopping) ends the copy. */
static bool stop_if_gone(gcopy *op) {
    qv_error err = {0};
    if (op_gone(op))
        qv_error_set(&err, ECANCELED, "the daemon is stopping or the VM is gone");
    else if (op->a.gone && op->a.gone(op->userdata))
        qv_error_set(&err, ECANCELED, "the client went away");
    else
        return false;
    fail(op, &err);
    return true;
}

static void read_next(gcopy *op);

static void write_chunk(gcopy *op);

static void after_write(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    gcopy *op = userdata;
    qv_error err;
    size_t wrote = 0;
    int r = outcome(op, status, e, &err);
    if (r == 0 && qga_parse_file_write(result, op->n - op->off, &wrote) < 0)
        r = qv_error_set(&err, EPROTO, "VM '%s': the guest agent's answer to guest-file-write is not one",
                         vm_name(op));
    if (r == 0 && wrote == 0)
        r = qv_error_set(&err, EIO, "VM '%s': the guest agent wrote 0 of %zu bytes to %s", vm_name(op),
                         op->n - op->off, op->tmp);
    if (r < 0) {
        fail(op, &err);
        return;
    }
    /* the agent may write less than asked: the rest goes again */
    op->off += wrote;
    if (op->off < op->n) {
        write_chunk(op);
        return;
    }
    op->bytes += op->n;
    if (op->a.progress)
        op->a.progress(op->bytes, op->total, op->userdata);
    read_next(op);
}

static void write_chunk(gcopy *op) {
    size_t n = op->n - op->off;
    qv_base64_encode(op->buf + op->off, n, op->b64);
    send_cmd(op, "guest-file-write",
             json_pack("{s:I, s:s, s:I}", "handle", (json_int_t)op->handle, "buf-b64", op->b64, "count",
                       (json_int_t)n),
             COPY_IO_TIMEOUT_MS, after_write);
}

static void on_read(uv_work_t *w, int status) {
    gcopy *op = w->data;
    ssize_t n = status < 0 ? status : op->io_result;
    io_release(op->rt->c);
    qv_error err = {0};
    if (op_gone(op)) {
        qv_error_set(&err, ECANCELED, "the daemon is stopping or the VM is gone");
    } else if (n < 0) {
        qv_error_set(&err, (int)-n, "reading the source: %s", strerror((int)-n));
    } else if (n == 0) {
        send_cmd(op, "guest-file-close", json_pack("{s:I}", "handle", (json_int_t)op->handle), COPY_CMD_TIMEOUT_MS,
                 after_close);
        return;
    } else {
        op->n = (size_t)n;
        op->off = 0;
        write_chunk(op);
        return;
    }
    fail(op, &err);
}

static void read_start(gcopy *op) {
    /* a worker reads: the client's file may be on a slow disk or NFS */
    io_queue(op, read_work, on_read, "read the source");
}

static void read_next(gcopy *op) {
    if (!stop_if_gone(op))
        io_submit(op, read_start);
}

/* ---- out of the guest: guest-file-read, the client's file written on a worker ------ */

static void read_out(gcopy *op);

static void close_out(gcopy *op) {
    send_cmd(op, "guest-file-close", json_pack("{s:I}", "handle", (json_int_t)op->handle), COPY_CMD_TIMEOUT_MS,
             after_close);
}

static void write_out(gcopy *op);

static void on_write_out(uv_work_t *w, int status) {
    gcopy *op = w->data;
    ssize_t n = status < 0 ? status : op->io_result;
    io_release(op->rt->c);
    qv_error err = {0};
    if (op_gone(op))
        qv_error_set(&err, ECANCELED, "the daemon is stopping or the VM is gone");
    else if (n < 0)
        qv_error_set(&err, (int)-n, "writing the target: %s", strerror((int)-n));
    else if (n == 0)
        qv_error_set(&err, EIO, "writing the target: nothing written");
    if (err.code) {
        fail(op, &err);
        return;
    }
    op->off += (size_t)n;
    op->bytes += (uint64_t)n;
    if (op->off < op->n) { /* a short write: the rest goes again */
        write_out(op);
        return;
    }
    if (op->a.progress)
        op->a.progress(op->bytes, 0, op->userdata);
    if (op->eof)
        close_out(op);
    else
        read_out(op);
}

static void write_start(gcopy *op) {
    io_queue(op, write_work, on_write_out, "write the target");
}

static void write_out(gcopy *op) {
    io_submit(op, write_start);
}

static void after_read_out(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    gcopy *op = userdata;
    qv_error err;
    qga_file_chunk ch = {0};
    size_t n = 0;
    int r = outcome(op, status, e, &err);
    /* the guest's answer is checked whole before anything is decoded */
    if (r == 0 && (qga_parse_file_read(result, COPY_CHUNK, &ch) < 0 ||
                   qv_base64_decode(ch.b64, ch.b64_len, op->buf, COPY_CHUNK, &n) < 0 || n != ch.count))
        r = qv_error_set(&err, EPROTO, "VM '%s': the guest agent's answer to guest-file-read is not one",
                         vm_name(op));
    if (r == 0 && n == 0 && !ch.eof) /* the agent says neither: never loop on it */
        r = qv_error_set(&err, EPROTO, "VM '%s': the guest agent read nothing before the end of %s", vm_name(op),
                         op->path);
    if (r < 0) {
        fail(op, &err);
        return;
    }
    op->eof = ch.eof;
    op->n = n;
    op->off = 0;
    if (n)
        write_out(op);
    else
        close_out(op);
}

static void read_out(gcopy *op) {
    if (stop_if_gone(op))
        return;
    send_cmd(op, "guest-file-read", json_pack("{s:I, s:I}", "handle", (json_int_t)op->handle, "count",
                                              (json_int_t)COPY_CHUNK),
             COPY_IO_TIMEOUT_MS, after_read_out);
}

/* ---- the start: target, temporary name, mark, file, mode -------------------------- */

static void after_chmod(gcopy *op, int code) {
    qv_error err = {0};
    if (code != 0) {
        if (code > 0)
            qv_error_set(&err, EIO, "VM '%s': chmod %s failed in the guest (exit %d)", vm_name(op), op->tmp, code);
        fail(op, code > 0 ? &err : &op->xerr);
        return;
    }
    if (op->a.progress)
        op->a.progress(0, op->total, op->userdata);
    read_next(op);
}

static void after_open(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    gcopy *op = userdata;
    qv_error err;
    int r = outcome(op, status, e, &err);
    if (r == 0 && qga_parse_file_open(result, &op->handle) < 0) {
        op->handle = 0;
        r = qv_error_set(&err, EPROTO, "VM '%s': the guest agent's answer to guest-file-open is not one",
                         vm_name(op));
    }
    if (r < 0) {
        fail(op, &err);
        return;
    }
    if (op->out) {
        if (op->a.progress)
            op->a.progress(0, 0, op->userdata);
        read_out(op);
        return;
    }
    /* qemu-ga creates it 0666 less its umask (0 in some guests): the
     * source's permission bits instead, before any data is in it */
    char mode[8];
    snprintf(mode, sizeof mode, "%o", op->mode & 07777u);
    exec_run(op, json_pack("[s, s, s, s]", "chmod", mode, "--", op->tmp), after_chmod);
}

static void mark_work(uv_work_t *w) {
    gcopy *op = w->data;
    op->mark_status = qv_write_file_atomic(op->mark_path, op->mark_text, strlen(op->mark_text), 0600);
}

static void mark_after(uv_work_t *w, int status) {
    gcopy *op = w->data;
    qv_error err = {0};
    if (status < 0 || op->mark_status < 0) {
        int code = status < 0 ? -status : -op->mark_status;
        qv_error_set(&err, code, "cannot write %s: %s", op->mark_path, strerror(code));
        fail(op, &err);
        return;
    }
    op->marked = true;
    if (stop_if_gone(op))
        return;
    send_cmd(op, "guest-file-open", json_pack("{s:s, s:s}", "path", op->tmp, "mode", "w"), COPY_CMD_TIMEOUT_MS,
             after_open);
}

/* The temporary name and its mark, written durably before the file exists. */
static void make_tmp(gcopy *op) {
    qv_error err = {0};
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != sizeof id)
        id = qv_now_ns() ^ ((uint64_t)getpid() << 32);
    char p[PATH_MAX];
    int r = sv_layout_guest_tmp(op->target, id, op->tmp, sizeof op->tmp);
    if (r == 0)
        r = sv_layout_copy_mark(id, op->mark, sizeof op->mark);
    if (r == 0)
        r = sv_layout_instance_file(op->rt->state_dir, op->mark, p, sizeof p);
    if (r < 0) {
        qv_error_set(&err, ENAMETOOLONG, "VM '%s': %s: name too long", vm_name(op), op->target);
        fail(op, &err);
        return;
    }
    if (asprintf(&op->mark_text, "%s\n", op->tmp) < 0 || !(op->mark_path = strdup(p))) {
        op->mark_text = NULL;
        qv_error_set(&err, ENOMEM, "out of memory");
        fail(op, &err);
        return;
    }
    op->work.data = op;
    r = uv_queue_work(op->rt->c->loop, &op->work, mark_work, mark_after);
    if (r < 0) {
        qv_error_set(&err, -r, "cannot queue work: %s", uv_strerror(r));
        fail(op, &err);
    }
}

static void after_test_exists(gcopy *op, int code) {
    qv_error err = {0};
    if (code < 0) {
        fail(op, &op->xerr);
    } else if (code == 0) {
        qv_error_set(&err, EEXIST, "%s:%s exists (--force replaces it)", vm_name(op), op->target);
        fail(op, &err);
    } else {
        make_tmp(op);
    }
}

static void after_test_dir(gcopy *op, int code) {
    qv_error err = {0};
    if (code < 0) {
        fail(op, &op->xerr);
        return;
    }
    size_t len = strlen(op->path);
    bool slash = op->path[len - 1] == '/', into_dir = code == 0;
    int n = 0;
    if (slash && !into_dir) {
        qv_error_set(&err, ENOTDIR, "%s:%s is not a directory in the guest", vm_name(op), op->path);
    } else if (into_dir && !op->filename) {
        qv_error_set(&err, EISDIR, "%s:%s is a directory in the guest (\"filename\" names the file in it)",
                     vm_name(op), op->path);
    } else {
        if (into_dir)
            n = snprintf(op->target, sizeof op->target, "%s%s%s", op->path, slash ? "" : "/", op->filename);
        else
            n = snprintf(op->target, sizeof op->target, "%s", op->path);
        if (n < 0 || (size_t)n > SV_GUEST_PATH_MAX)
            qv_error_set(&err, ENAMETOOLONG, "%s:%s: name too long", vm_name(op), op->path);
    }
    if (err.code) {
        op->target[0] = '\0';
        fail(op, &err);
    } else if (op->force) {
        make_tmp(op);
    } else {
        exec_run(op, json_pack("[s, s, s, s, s, s]", "test", "-e", op->target, "-o", "-L", op->target),
                 after_test_exists);
    }
}

/* The operation joins the VM's: its timer, a reference on the runtime. */
static void op_attach(vmrt *rt, gcopy *op) {
    op->rt = rt;
    uv_timer_init(rt->c->loop, &op->timer);
    op->timer.data = op;
    rt->refs++; /* answers may come after the VM is forgotten */
    op->next = rt->gcopies;
    rt->gcopies = op;
}

void vm__guest_copy_run(vmrt *rt, gcopy *op) {
    op_attach(rt, op);
    if (op->out) {
        log_info("VM %s: copying %s out of the guest", rt->vm->name, op->path);
        send_cmd(op, "guest-file-open", json_pack("{s:s, s:s}", "path", op->path, "mode", "r"), COPY_CMD_TIMEOUT_MS,
                 after_open);
        return;
    }
    log_info("VM %s: copying %llu bytes into %s", rt->vm->name, (unsigned long long)op->total, op->path);
    /* a guest directory gets the file's name; this first command also finds
     * an agent without guest-exec before anything is written */
    exec_run(op, json_pack("[s, s, s]", "test", "-d", op->path), after_test_dir);
}

/* A copy the door refused: never attached, its fd still the caller's. */
static void free_unattached(gcopy *op) {
    if (!op)
        return;
    free(op->path);
    free(op->filename);
    free(op->buf);
    free(op->b64);
    free(op);
}

/* A copy's operation, begun through the door (event `guest`): 0, or a
 * negative errno with err and nothing done. */
static int begin(sv_vmctl *c, sv_vm *vm, bool out, const sv_vm_copy_args *a, sv_vm_done_fn done, void *userdata,
                 qv_error *err) {
    gcopy *op = calloc(1, sizeof *op);
    if (op) {
        op->fd = -1;
        op->path = strdup(a->path);
        op->filename = a->filename ? strdup(a->filename) : NULL;
        op->buf = malloc(COPY_CHUNK);
        op->b64 = out ? NULL : malloc(qv_base64_encoded_len(COPY_CHUNK) + 1);
    }
    if (!op || !op->path || (a->filename && !op->filename) || !op->buf || (!out && !op->b64)) {
        free_unattached(op);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    op->out = out;
    op->a = *a;
    op->force = a->force;
    op->mode = a->mode;
    op->total = a->size;
    op->done = done;
    op->userdata = userdata;
    op->fd = a->fd; /* the operation's once it began */
    int r = vm__request(c, vm, SV_EV_GUEST, &(vm_event_arg){.copy = op, .err = err});
    if (r != 0) {
        free_unattached(op);
        return r < 0 ? r : qv_error_set(err, EINVAL, "the copy did not begin");
    }
    return 0;
}

int sv_vm_copy_in(sv_vmctl *c, sv_vm *vm, const sv_vm_copy_args *a, sv_vm_done_fn done, void *userdata,
                  qv_error *err) {
    return begin(c, vm, false, a, done, userdata, err);
}

int sv_vm_copy_out(sv_vmctl *c, sv_vm *vm, const sv_vm_copy_args *a, sv_vm_done_fn done, void *userdata,
                   qv_error *err) {
    return begin(c, vm, true, a, done, userdata, err);
}

/* ---- marks left behind ----------------------------------------------------------- */

static void recover_next(gcopy *op);

static void after_recover_rm(gcopy *op, int code) {
    const char *name = op->marks[op->i_mark];
    if (code == 0) {
        mark_remove(op, name);
        log_warning("VM %s: removed %s in the guest, left by a copy that did not end", vm_name(op), op->tmp);
    } else {
        log_warning("VM %s: could not remove %s in the guest (%s); tried again when its agent next comes up",
                    vm_name(op), op->tmp, code < 0 ? op->xerr.msg : "rm failed");
    }
    op->i_mark++;
    recover_next(op);
}

static void recover_next(gcopy *op) {
    while (op->i_mark < op->n_marks && !op_gone(op)) {
        const char *name = op->marks[op->i_mark];
        char p[PATH_MAX];
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = sv_layout_instance_file(op->rt->state_dir, name, p, sizeof p);
        if (r == 0)
            r = qv_read_regular_file(p, MARK_MAX, &text, &len);
        if (r == 0)
            r = sv_layout_copy_mark_parse(text, len, op->tmp, sizeof op->tmp);
        if (r < 0) {
            /* not a temporary name of ours: nothing is removed in the guest */
            log_warning("VM %s: %s does not name a temporary file of a copy: ignored and removed", vm_name(op), p);
            mark_remove(op, name);
            op->i_mark++;
            continue;
        }
        exec_run(op, json_pack("[s, s, s, s]", "rm", "-f", "--", op->tmp), after_recover_rm);
        return;
    }
    finish(op);
}

static bool mark_in_use(const vmrt *rt, const char *name) {
    for (const gcopy *op = rt->gcopies; op; op = op->next)
        if (!op->recover && strcmp(op->mark, name) == 0)
            return true;
    return false;
}

void vm__guest_copy_recover(vmrt *rt) {
    if (!rt->vm || !rt->qga || rt->copy_recovering || rt->c->shutting_down)
        return;
    _cleanup_close_ int dfd = qv_open_dir_nofollow(rt->state_dir);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d)
        return;
    TAKE_FD(dfd);
    char **marks = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!sv_layout_copy_mark_entry(de->d_name) || mark_in_use(rt, de->d_name))
            continue;
        char **m = realloc(marks, (n + 1) * sizeof *marks);
        if (!m)
            break;
        marks = m;
        if (!(marks[n] = strdup(de->d_name)))
            break;
        n++;
    }
    closedir(d);
    gcopy *op = n ? calloc(1, sizeof *op) : NULL;
    if (!op) {
        for (size_t i = 0; i < n; i++)
            free(marks[i]);
        free(marks);
        return;
    }
    op->fd = -1;
    op_attach(rt, op);
    op->recover = true;
    op->marks = marks;
    op->n_marks = n;
    rt->copy_recovering = true;
    log_info("VM %s: %zu copies into the guest did not end; removing their temporary files", rt->vm->name, n);
    recover_next(op);
}

void vm__guest_copy_release(vmrt *rt) {
    /* a copy waiting for the lane ends now */
    for (;;) {
        gcopy *op = rt->gcopies;
        while (op && !op->io_queued)
            op = op->next;
        if (!op)
            break;
        io_unqueue(op);
        qv_error err = {0};
        qv_error_set(&err, ECANCELED, "the daemon is stopping or the VM is gone");
        fail(op, &err);
    }
    /* commands were cancelled with the channels; what waits is a timer */
    for (;;) {
        gcopy *op = rt->gcopies;
        while (op && !op->waiting)
            op = op->next;
        if (!op)
            break;
        uv_timer_stop(&op->timer);
        op->waiting = false;
        op->then(op, qv_error_set(&op->xerr, ECANCELED, "the daemon is stopping or the VM is gone"));
    }
}
