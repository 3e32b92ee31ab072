/* The engine's sample of every VM for the metrics (see stats.h). */
#include "supervisor/vm/stats.h"
#include "supervisor/vm/engine.h"

/* One sample in progress.  `pending` counts what it waits for: each
 * query-blockstats sent, and the setup itself. */
struct sv_stats_job {
    sv_vmctl *c;
    sv_vm_stats *vms;
    size_t n;
    size_t missed;
    unsigned pending;
    bool cancelled;
    sv_vm_stats_fn done;
    void *userdata;
};

typedef struct block_query {
    sv_stats_job *job;
    size_t index;
} block_query;

static void job_free(sv_stats_job *job) {
    for (size_t i = 0; i < job->n; i++)
        free(job->vms[i].disks);
    free(job->vms);
    free(job);
}

/* The agents' status as the daemon keeps it: up once an agent answered
 * after the guest opened its port (QEMU's VSERPORT_CHANGE, monitor.c), down
 * when it closed it or stopped answering a `vm list`.  A scrape asks no
 * agent: a silent one would cost every scrape its deadline. */
static void fill_agents(sv_stats_job *job) {
    for (size_t i = 0; i < job->n; i++) {
        sv_vm_stats *s = &job->vms[i];
        if (s->agent < 0)
            continue;
        const sv_vm *vm = sv_registry_find(job->c->registry, s->name);
        s->agent = vm && vm->agent && strcmp(vm->agent, "ok") == 0;
    }
}

static void job_put(sv_stats_job *job) {
    if (--job->pending)
        return;
    if (!job->cancelled) {
        fill_agents(job);
        job->done(0, job->vms, job->n, job->missed, job->userdata);
    }
    job_free(job);
}

static void on_blockstats(qmp_conn *q, int status, const qmp_blockstats *st, size_t n, const qmp_error *e,
                          void *userdata) {
    (void)q;
    (void)e;
    block_query *bq = userdata;
    sv_stats_job *job = bq->job;
    sv_vm_stats *s = &job->vms[bq->index];
    free(bq);
    if (status == 0 && (s->disks = calloc(n ? n : 1, sizeof *s->disks))) {
        for (size_t i = 0; i < n; i++) {
            sv_disk_stats *d = &s->disks[i];
            snprintf(d->device, sizeof d->device, "%s", st[i].device);
            d->read_bytes = st[i].rd_bytes;
            d->write_bytes = st[i].wr_bytes;
            d->read_ops = st[i].rd_operations;
            d->write_ops = st[i].wr_operations;
        }
        s->n_disks = n;
        s->have_disks = true;
    } else {
        if (status != QMP_ECANCELED)
            log_debug("VM %s: no block statistics in this sample: %s", s->name, strerror(-status));
        job->missed++;
    }
    job_put(job);
}

/* A counter of /sys/class/net/TAP/statistics: one read into the stack. */
static int tap_counter(const char *tap, const char *name, uint64_t *ret) {
    char rel[96], line[32];
    snprintf(rel, sizeof rel, "sys/class/net/%s/statistics/%s", tap, name);
    _cleanup_close_ int fd = qv_sysroot_open(rel, O_RDONLY);
    if (fd < 0)
        return fd;
    ssize_t n = read(fd, line, sizeof line - 1);
    if (n <= 0 || (size_t)n == sizeof line - 1)
        return -EBADMSG;
    line[n] = '\0';
    line[strcspn(line, "\n")] = '\0';
    return qv_parse_uint(line, 0, UINT64_MAX, ret);
}

/* The VM's TAPs that exist now (a NIC whose TAP is gone is left out). */
static void sample_nics(const sv_vm *vm, sv_vm_stats *s) {
    nd_nic nics[ND_NICS_MAX];
    size_t n = 0;
    if (sv_net_nics(vm->spec, nics, &n, NULL) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (nics[i].mode == ND_MODE_USER)
            continue;
        sv_nic_stats *t = &s->nics[s->n_nics];
        t->index = (unsigned)i;
        nd_tap_name(vm->name, (unsigned)i, t->tap);
        /* the TAP's transmit is the guest's receive */
        if (tap_counter(t->tap, "tx_bytes", &t->rx_bytes) < 0 || tap_counter(t->tap, "rx_bytes", &t->tx_bytes) < 0 ||
            tap_counter(t->tap, "tx_packets", &t->rx_packets) < 0 ||
            tap_counter(t->tap, "rx_packets", &t->tx_packets) < 0)
            continue;
        s->n_nics++;
    }
}

/* CPU time and RSS of the VM's QEMU, when the pid is still the process
 * that was started (its start time matches). */
static void sample_proc(const sv_vm *vm, sv_vm_stats *s) {
    sv_proc_usage u;
    static long page, hz;
    if (!page) {
        page = sysconf(_SC_PAGESIZE);
        hz = sysconf(_SC_CLK_TCK);
    }
    if (sv_proc_usage_read(vm->run.pid, &u) < 0 || (vm->run.start_ticks && u.start_ticks != vm->run.start_ticks))
        return;
    s->have_proc = true;
    s->cpu_seconds = (double)u.cpu_ticks / (double)(hz > 0 ? hz : 100);
    s->rss_bytes = u.rss_pages * (uint64_t)page;
}

static void sample_vm(const sv_vm *vm, sv_vm_stats *s) {
    snprintf(s->name, sizeof s->name, "%s", vm->name);
    snprintf(s->pool, sizeof s->pool, "%s", vm->spec->pool ? vm->spec->pool : "default");
    s->state = vm->state;
    s->cpus = vm->spec->cpus;
    s->memory = vm->spec->memory;
    s->gpus = vm->spec->n_gpu_opts;
    s->restarts = vm->run.restarts;
    s->restarts_total = vm->restarts_total;
    s->agent = vm->spec->agent ? 0 : -1;
    s->has_qemu = vm->run.pid > 0 && sv_vm_state_has_qemu(vm->state);
    if (!s->has_qemu)
        return;
    s->started_at = vm->run.started_at;
    sample_proc(vm, s);
    sample_nics(vm, s);
}

/* query-blockstats to a QEMU that runs the guest (or holds it paused) and
 * whose monitor is up; starting and stopping QEMUs are left alone. */
static void ask_blockstats(sv_stats_job *job, const sv_vm *vm, size_t index, uint64_t timeout_ms) {
    const vmrt *rt = vm->rt;
    if (!rt || !rt->qmp || !qmp_is_ready(rt->qmp) || (vm->state != SV_VM_RUNNING && vm->state != SV_VM_PAUSED))
        return;
    block_query *bq = calloc(1, sizeof *bq);
    if (!bq)
        return;
    *bq = (block_query){.job = job, .index = index};
    if (qmp_query_blockstats(rt->qmp, timeout_ms, on_blockstats, bq) < 0) {
        free(bq);
        job->missed++;
        return;
    }
    job->pending++;
}

sv_stats_job *sv_vmctl_stats(sv_vmctl *c, uint64_t timeout_ms, sv_vm_stats_fn done, void *userdata) {
    size_t n = 0;
    for (sv_vm *vm = sv_registry_first(c->registry); vm; vm = sv_registry_next(vm))
        n++;
    sv_stats_job *job = calloc(1, sizeof *job);
    if (!job || !(job->vms = calloc(n ? n : 1, sizeof *job->vms))) {
        free(job);
        done(-ENOMEM, NULL, 0, 0, userdata);
        return NULL;
    }
    *job = (sv_stats_job){.c = c, .vms = job->vms, .done = done, .userdata = userdata, .pending = 1};
    for (sv_vm *vm = sv_registry_first(c->registry); vm; vm = sv_registry_next(vm), job->n++) {
        sample_vm(vm, &job->vms[job->n]);
        if (job->vms[job->n].has_qemu)
            ask_blockstats(job, vm, job->n, timeout_ms);
    }
    if (job->pending == 1) { /* nothing to wait for */
        job_put(job);
        return NULL;
    }
    job->pending--; /* the setup's own count; the answers hold the rest */
    return job;
}

void sv_stats_job_cancel(sv_stats_job *job) {
    if (job)
        job->cancelled = true;
}
