/* What the QMP and guest-agent clients share below their protocols: the
 * stream wrapper, the deadline heap and the connection base both embed
 * (message helpers are in msg.c).  See io.h for who calls what. */
#include "io.h"

#include "cleanup.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ---- Deadline heap ---- */

void qmp__tnode_init(qmp__tnode *node) {
    *node = (qmp__tnode){.idx = SIZE_MAX};
}

static bool tnode_before(const qmp__tnode *a, const qmp__tnode *b) {
    return a->deadline != b->deadline ? a->deadline < b->deadline : a->seq < b->seq;
}

static void heap_set(qmp__timeq *q, size_t i, qmp__tnode *node) {
    q->v[i] = node;
    node->idx = i;
}

static void heap_up(qmp__timeq *q, size_t i) {
    qmp__tnode *node = q->v[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!tnode_before(node, q->v[parent]))
            break;
        heap_set(q, i, q->v[parent]);
        i = parent;
    }
    heap_set(q, i, node);
}

static void heap_down(qmp__timeq *q, size_t i) {
    qmp__tnode *node = q->v[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= q->n)
            break;
        if (child + 1 < q->n && tnode_before(q->v[child + 1], q->v[child]))
            child++;
        if (!tnode_before(q->v[child], node))
            break;
        heap_set(q, i, q->v[child]);
        i = child;
    }
    heap_set(q, i, node);
}

int qmp__timeq_push(qmp__timeq *q, qmp__tnode *node, uint64_t deadline) {
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        qmp__tnode **v = realloc(q->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        q->v = v;
        q->cap = cap;
    }
    node->deadline = deadline;
    node->seq = q->seq++;
    heap_set(q, q->n++, node);
    heap_up(q, node->idx);
    return 0;
}

void qmp__timeq_remove(qmp__timeq *q, qmp__tnode *node) {
    size_t i = node->idx;
    if (i == SIZE_MAX)
        return;
    node->idx = SIZE_MAX;
    q->n--;
    if (i == q->n)
        return;
    heap_set(q, i, q->v[q->n]);
    if (i > 0 && tnode_before(q->v[i], q->v[(i - 1) / 2]))
        heap_up(q, i);
    else
        heap_down(q, i);
}

qmp__tnode *qmp__timeq_top(const qmp__timeq *q) {
    return q->n ? q->v[0] : NULL;
}

void qmp__timeq_free(qmp__timeq *q) {
    for (size_t i = 0; i < q->n; i++)
        q->v[i]->idx = SIZE_MAX;
    free(q->v);
    *q = (qmp__timeq){0};
}

/* ---- Stream wrapper ---- */

typedef struct io_write {
    uv_write_t req;
    char *data;
    qmp__write_done done;
    uint64_t tag;
} io_write;

static char ff_byte[1] = {(char)0xFF};
static char newline[1] = {'\n'};

static void io_maybe_free(qmp__io *io) {
    if (io->released && io->open_handles == 0)
        io->ops->on_free(io);
}

static void io_handle_closed(uv_handle_t *h) {
    qmp__io *io = h->data;
    io->open_handles--;
    io_maybe_free(io);
}

int qmp__io_init(qmp__io *io, uv_loop_t *loop, const qmp__io_ops *ops) {
    io->loop = loop;
    io->ops = ops;
    int r = uv_pipe_init(loop, &io->pipe, 0);
    if (r < 0)
        return r;
    r = uv_timer_init(loop, &io->timer);
    if (r < 0) {
        io->pipe.data = io;
        io->open_handles = 1;
        io->shut = true;
        uv_close((uv_handle_t *)&io->pipe, io_handle_closed);
        return r;
    }
    io->pipe.data = io;
    io->timer.data = io;
    io->connect_req.data = io;
    io->open_handles = 2;
    return 0;
}

static void io_connect_cb(uv_connect_t *req, int status) {
    qmp__io *io = req->data;
    if (status == UV_ECANCELED || io->shut)
        return;
    io->ops->on_connect(io, status);
}

int qmp__io_connect(qmp__io *io, const char *path) {
    struct sockaddr_un sa;
    if (!path || !*path)
        return -EINVAL;
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    uv_pipe_connect(&io->connect_req, &io->pipe, path, io_connect_cb);
    return 0;
}

int qmp__io_open(qmp__io *io, int fd) {
    if (fd < 0)
        return -EBADF;
    int flags = fcntl(fd, F_GETFD);
    int fl = fcntl(fd, F_GETFL);
    if (flags < 0 || fl < 0)
        return -errno;
    /* uv_read_start() can only fail on a stream that is not readable:
     * refuse such an fd here, while it is still the caller's. */
    if ((fl & O_ACCMODE) != O_RDWR)
        return -EINVAL;
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno;
    if (type != SOCK_STREAM)
        return -EINVAL;
    int r = uv_pipe_open(&io->pipe, fd);
    if (r < 0)
        return r;
    if (!(flags & FD_CLOEXEC))
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    return 0;
}

/* One read buffer for every connection of the thread's loop: a read is
 * handed to on_data, which copies what it keeps (the line buffer), before
 * the loop reads anything else.  A buffer per connection was 8 KiB of each
 * VM's monitor and agent connections, zeroed with them: most of what a
 * running VM cost the daemon (200 VMs: 3 of the 7 MB it held). */
static _Thread_local char io_rbuf[8 * 1024];

static void io_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    (void)h;
    *buf = uv_buf_init(io_rbuf, sizeof io_rbuf);
}

static void io_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    qmp__io *io = s->data;
    if (io->shut)
        return;
    if (nread > 0)
        io->ops->on_data(io, buf->base, (size_t)nread);
    else if (nread < 0)
        io->ops->on_read_error(io, (int)nread);
}

int qmp__io_start_read(qmp__io *io) {
    return uv_read_start((uv_stream_t *)&io->pipe, io_alloc_cb, io_read_cb);
}

void qmp__io_stop_read(qmp__io *io) {
    if (!io->shut)
        uv_read_stop((uv_stream_t *)&io->pipe);
}

static void io_write_cb(uv_write_t *req, int status) {
    io_write *w = qmp__container_of(req, io_write, req);
    qmp__io *io = req->data;
    if (w->done)
        w->done(io, status, w->tag);
    if (status < 0 && status != UV_ECANCELED && !io->shut)
        io->ops->on_write_error(io, status);
    free(w->data);
    free(w);
}

int qmp__io_write_line(qmp__io *io, bool ff_prefix, char *data, size_t len, qmp__write_done done,
                       uint64_t tag) {
    _cleanup_free_ char *owned = data;
    if (io->shut)
        return -ENOTCONN;
    io_write *w = malloc(sizeof *w);
    if (!w)
        return -ENOMEM;
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (ff_prefix)
        bufs[n++] = uv_buf_init(ff_byte, 1);
    bufs[n++] = uv_buf_init(owned, (unsigned)len);
    bufs[n++] = uv_buf_init(newline, 1);

    /* Write at once when nothing is queued: no request, and none of the
     * epoll_ctl() that libuv does per completed uv_write().  A caller that
     * wants a completion gets it from a request, never synchronously. */
    if (!done) {
        size_t total = len + 1 + (ff_prefix ? 1 : 0);
        int r = uv_try_write((uv_stream_t *)&io->pipe, bufs, n);
        if (r >= 0 && (size_t)r == total) {
            free(w);
            return 0;
        }
        if (r > 0) {
            /* Queue what is left, in order. */
            size_t skip = (size_t)r;
            unsigned first = 0;
            while (skip >= bufs[first].len)
                skip -= bufs[first++].len;
            bufs[first].base += skip;
            bufs[first].len -= skip;
            memmove(bufs, bufs + first, (n - first) * sizeof *bufs);
            n -= first;
        }
        /* UV_EAGAIN, or an error that uv_write() reports through its
         * callback like any other write failure. */
    }
    *w = (io_write){.data = owned, .done = done, .tag = tag};
    w->req.data = io;
    int r = uv_write(&w->req, (uv_stream_t *)&io->pipe, bufs, n, io_write_cb);
    if (r < 0) {
        free(w);
        return r;
    }
    TAKE_PTR(owned);
    return 0;
}

static void io_timer_cb(uv_timer_t *t) {
    qmp__io *io = t->data;
    io->timer_armed = false;
    if (!io->shut)
        io->ops->on_timer(io);
}

void qmp__io_timer_at(qmp__io *io, uint64_t deadline) {
    if (io->shut)
        return;
    if (deadline == 0) {
        if (io->timer_armed) {
            uv_timer_stop(&io->timer);
            io->timer_armed = false;
        }
        return;
    }
    if (io->timer_armed && io->timer_deadline == deadline)
        return;
    uint64_t now = uv_now(io->loop);
    uv_timer_start(&io->timer, io_timer_cb, deadline > now ? deadline - now : 0, 0);
    io->timer_armed = true;
    io->timer_deadline = deadline;
}

void qmp__io_shutdown(qmp__io *io) {
    if (io->shut)
        return;
    io->shut = true;
    io->timer_armed = false;
    uv_read_stop((uv_stream_t *)&io->pipe);
    uv_close((uv_handle_t *)&io->pipe, io_handle_closed);
    uv_close((uv_handle_t *)&io->timer, io_handle_closed);
}

void qmp__io_release(qmp__io *io) {
    io->released = true;
    qmp__io_shutdown(io);
    io_maybe_free(io);
}

uint64_t qmp__io_now(qmp__io *io) {
    uv_update_time(io->loop);
    return uv_now(io->loop);
}

int qmp__map_stream_error(int uv_status) {
    switch (uv_status) {
    case UV_EOF:
    case UV_ECONNRESET:
    case UV_EPIPE:
        return QMP__EDISCONNECTED;
    default:
        return uv_status < 0 ? uv_status : -EIO;
    }
}

/* ---- Connection base ---- */

static qmp__conn *io_base(qmp__io *io) {
    return qmp__container_of(io, qmp__conn, io);
}

static size_t bucket_of(const qmp__conn *b, uint64_t id) {
    /* Ids are sequential: the low bits already spread them evenly. */
    return (size_t)(id & (b->n_buckets - 1));
}

static void hash_rebuild(qmp__conn *b) {
    size_t n = b->n_buckets;
    while (n < b->n_reqs)
        n *= 2;
    qmp__req **v = calloc(n, sizeof *v);
    if (!v)
        return; /* keep the old table: longer chains, still correct */
    free(b->buckets);
    b->buckets = v;
    b->n_buckets = n;
    for (qmp__req *p = b->head; p; p = p->next) {
        size_t i = bucket_of(b, p->id);
        p->hnext = v[i];
        v[i] = p;
    }
}

static int req_link(qmp__conn *b, qmp__req *p, uint64_t deadline) {
    if (deadline) {
        int r = qmp__timeq_push(&b->timeq, &p->tnode, deadline);
        if (r < 0)
            return r;
    }
    p->prev = b->tail;
    p->next = NULL;
    if (b->tail)
        b->tail->next = p;
    else
        b->head = p;
    b->tail = p;
    b->n_reqs++;
    if (!b->buckets)
        return 0;
    if (b->n_reqs > b->n_buckets * 2) {
        hash_rebuild(b);
    } else {
        size_t i = bucket_of(b, p->id);
        p->hnext = b->buckets[i];
        b->buckets[i] = p;
    }
    return 0;
}

static void req_unlink(qmp__conn *b, qmp__req *p) {
    qmp__timeq_remove(&b->timeq, &p->tnode);
    qmp__conn_rearm(b); /* an answered command leaves no wake-up behind */
    if (p->prev)
        p->prev->next = p->next;
    else
        b->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        b->tail = p->prev;
    if (b->buckets)
        for (qmp__req **pp = &b->buckets[bucket_of(b, p->id)]; *pp; pp = &(*pp)->hnext)
            if (*pp == p) {
                *pp = p->hnext;
                break;
            }
    b->n_reqs--;
}

static void req_free(qmp__req *p) {
    free(p->line);
    free(p);
}

qmp__req *qmp__conn_find(const qmp__conn *b, uint64_t id) {
    for (qmp__req *p = b->buckets[bucket_of(b, id)]; p; p = p->hnext)
        if (p->id == id)
            return p;
    return NULL;
}

void qmp__conn_complete(qmp__conn *b, qmp__req *p, int status, json_t *result, const struct qmp_error *err) {
    req_unlink(b, p);
    p->dispatch(b, p, status, result, err);
    req_free(p);
}

void qmp__conn_discard(qmp__conn *b, qmp__req *p) {
    req_unlink(b, p);
    req_free(p);
}

void qmp__conn_rearm(qmp__conn *b) {
    if (b->deferred_fail) {
        qmp__io_timer_at(&b->io, 1); /* in the past: fires on the next loop pass */
        return;
    }
    qmp__tnode *top = qmp__timeq_top(&b->timeq);
    qmp__io_timer_at(&b->io, top ? top->deadline : 0);
}

static void fail_all(qmp__conn *b, int status) {
    /* Re-read the head each time: a callback may close the connection,
     * which fails the rest from inside this loop. */
    while (b->head)
        qmp__conn_complete(b, b->head, status, NULL, NULL);
}

int qmp__conn_submit(qmp__conn *b, const char *command, json_t *args, uint64_t timeout_ms,
                     qmp__req_dispatch dispatch, qmp__fn cb, void *userdata, qmp__req **ret) {
    if (b->dead)
        return -ENOTCONN;
    _cleanup_free_ qmp__req *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    qmp__tnode_init(&p->tnode);
    p->id = b->next_id++;
    p->dispatch = dispatch;
    p->cb = cb;
    p->userdata = userdata;
    int r = qmp__build_command(command, args, p->id, &p->line, &p->line_len);
    if (r < 0)
        return r;
    uint64_t deadline = timeout_ms ? qmp__io_now(&b->io) + timeout_ms : 0;
    r = req_link(b, p, deadline);
    if (r < 0) {
        free(p->line);
        return r;
    }
    if (deadline && qmp__timeq_top(&b->timeq) == &p->tnode)
        qmp__conn_rearm(b);
    *ret = TAKE_PTR(p);
    return 0;
}

void qmp__conn_fail(qmp__conn *b, int status) {
    if (b->dead)
        return;
    if (b->ops->on_fail)
        b->ops->on_fail(b, status);
    b->dead = true;
    qmp__io_shutdown(&b->io);
    fail_all(b, status);
    if (!b->closed && !b->disconnect_fired) {
        b->disconnect_fired = true;
        b->ops->on_disconnect(b, status);
    }
}

void qmp__conn_defer_fail(qmp__conn *b, int status) {
    if (!b->deferred_fail)
        b->deferred_fail = status;
    qmp__conn_rearm(b);
}

void qmp__conn_close(qmp__conn *b) {
    if (b->closed)
        return;
    b->closed = true;
    if (!b->dead) {
        b->dead = true;
        qmp__io_shutdown(&b->io);
    }
    fail_all(b, QMP__ECANCELED);
    qmp__io_release(&b->io);
}

static void conn_on_connect(qmp__io *io, int status) {
    qmp__conn *b = io_base(io);
    if (status < 0) {
        qmp__conn_fail(b, status);
        return;
    }
    b->connected = true;
    int r = qmp__io_start_read(io);
    if (r < 0) {
        qmp__conn_fail(b, r);
        return;
    }
    if (b->ops->kick)
        b->ops->kick(b);
}

static void conn_on_data(qmp__io *io, const char *buf, size_t len) {
    qmp__conn *b = io_base(io);
    b->ops->on_data(b, buf, len);
}

static void conn_on_error(qmp__io *io, int status) {
    qmp__conn_fail(io_base(io), qmp__map_stream_error(status));
}

static void conn_on_timer(qmp__io *io) {
    qmp__conn *b = io_base(io);
    if (b->deferred_fail) {
        qmp__conn_fail(b, b->deferred_fail);
        return;
    }
    uint64_t now = uv_now(io->loop);
    qmp__tnode *top;
    while ((top = qmp__timeq_top(&b->timeq)) && top->deadline <= now) {
        if (top->fire) {
            qmp__timeq_remove(&b->timeq, top);
            top->fire(top);
        } else {
            qmp__req *p = qmp__container_of(top, qmp__req, tnode);
            if (b->ops->on_timeout)
                b->ops->on_timeout(b, p);
            qmp__conn_complete(b, p, QMP__ETIMEDOUT, NULL, NULL);
        }
        if (b->dead)
            return;
    }
    if (b->ops->kick)
        b->ops->kick(b);
    qmp__conn_rearm(b);
}

static void conn_free(qmp__conn *b) {
    while (b->head)
        qmp__conn_discard(b, b->head);
    if (b->ops->on_free)
        b->ops->on_free(b);
    qv_linebuf_free(&b->lb);
    qmp__timeq_free(&b->timeq);
    free(b->buckets);
    free(b);
}

static void conn_on_free(qmp__io *io) {
    conn_free(io_base(io));
}

static const qmp__io_ops conn_io_ops = {
    .on_connect = conn_on_connect,
    .on_data = conn_on_data,
    .on_read_error = conn_on_error,
    .on_write_error = conn_on_error,
    .on_timer = conn_on_timer,
    .on_free = conn_on_free,
};

static int conn_new(uv_loop_t *loop, const qmp__conn_ops *ops, qmp__conn **ret) {
    if (!loop)
        return -EINVAL;
    qmp__conn *b = calloc(1, ops->size);
    if (!b)
        return -ENOMEM;
    b->ops = ops;
    b->next_id = 1;
    qv_linebuf_init(&b->lb, ops->max_message);
    if (ops->by_id) {
        b->n_buckets = 64;
        b->buckets = calloc(b->n_buckets, sizeof *b->buckets);
        if (!b->buckets) {
            conn_free(b);
            return -ENOMEM;
        }
    }
    int r = qmp__io_init(&b->io, loop, &conn_io_ops);
    if (r < 0) {
        if (b->io.open_handles)
            qmp__io_release(&b->io);
        else
            conn_free(b);
        return r;
    }
    *ret = b;
    return 0;
}

/* Failure while starting: nothing was reported to the user yet. */
static int conn_abort(qmp__conn *b, int r) {
    b->dead = true;
    b->closed = true;
    qmp__io_release(&b->io);
    return r;
}

static int conn_connect(qmp__conn *b, const char *path) {
    int r = qmp__io_connect(&b->io, path);
    if (r == 0 && b->ops->on_start)
        r = b->ops->on_start(b);
    return r;
}

static int conn_open(qmp__conn *b, int fd) {
    int r = b->ops->on_start ? b->ops->on_start(b) : 0;
    if (r == 0)
        r = qmp__io_open(&b->io, fd);
    if (r < 0)
        return r;
    /* The handle owns fd now.  qmp__io_open() checked the fd is a readable
     * socket, which is all uv_read_start() can object to; should it fail
     * all the same, fd goes with the handle. */
    r = qmp__io_start_read(&b->io);
    if (r == 0)
        b->connected = true;
    return r;
}

int qmp__conn_start(uv_loop_t *loop, const qmp__conn_ops *ops, const void *opts, bool connect, const char *path,
                    int fd, qmp__conn **ret) {
    qmp__conn *b;
    int r = conn_new(loop, ops, &b);
    if (r < 0)
        return r;
    if (ops->init)
        ops->init(b, opts);
    r = connect ? conn_connect(b, path) : conn_open(b, fd);
    if (r < 0)
        return conn_abort(b, r);
    *ret = b;
    return 0;
}
