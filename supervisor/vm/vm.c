/* VM lifecycle engine (see vm.h and docs/lifecycle.md).
 *
 * One `vmrt` per VM holds what the engine knows beyond the registry: the
 * pidfd watch of the current QEMU, the monitor and agent connections, the
 * timers of the operation in progress and the requests waiting for it.
 * The authority on "QEMU is gone" is the pidfd (the process really exited),
 * never the monitor: cleanup runs from there, exactly once per process. */
#include "supervisor/vm/vm.h"

#include "qv-build.h"

#include "cleanup.h"
#include "sysroot.h"
#include "fileio.h"
#include "log.h"
#include "util.h"
#include "qmp/qga.h"
#include "qmp/qmp.h"
#include "supervisor/images/image.h"
#include "supervisor/vm/lifecycle.h"
#include "supervisor/vm/proc.h"
#include "supervisor/vm/qemuargv.h"
#include "supervisor/vm/nics.h"
#include "supervisor/vm/gpus.h"
#include "supervisor/resources/placement.h"
#include "supervisor/vm/console.h"
#include "frame.h"
#include "host/firmware.h"
#include "host/qemucaps.h"
#include "supervisor/resources/resources.h"
#include "supervisor/vm/seed.h"
#include "supervisor/vm/serlog.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define START_TIMEOUT_MS 60000u  /* QEMU up and `cont` answered */
#define CAPS_RETRY_MS 10000u     /* a failed probe of an unchanged binary is repeated at most this often */
#define QMP_CMD_TIMEOUT_MS 10000u
#define AGENT_PING_MS 3000u      /* Proxmox's: an agent slower than this is not used for shutdown */
#define ACPI_REPEAT_MS 5000u     /* a power button pressed before the guest listened is lost: press again */
#define AGENT_FALLBACK_MS 15000u /* an agent shutdown that has not taken by then gets ACPI too */
#define KILL_GRACE_MS 5000u      /* after SIGKILL: how often to complain while it lingers */
#define AGENT_FRESH_MS 2000u     /* agent answers younger than this are reused by `vm list` */
#define RESTART_RESET_S 60       /* a VM that ran this long has its restart counter reset */
#define PERSIST_COALESCE_MS 1000u /* pause/resume: state.json written at most this often */
#define PERSIST_RETRY_MS 5000u    /* a state that could not be saved: tried again this often */
#define PAUSE_LOG_BURST 10u       /* pause/resume changes logged one by one per window… */
#define PAUSE_LOG_WINDOW_MS 10000u /* …then counted, and the count logged at the window's end */

typedef struct waiter {
    sv_vm_done_fn done;
    void *userdata;
    struct waiter *next;
} waiter;

typedef enum stop_stage {
    STAGE_NONE,
    STAGE_GRACEFUL, /* agent guest-shutdown or ACPI, waiting for the guest */
    STAGE_QUIT,     /* QMP quit sent */
    STAGE_TERM,     /* SIGTERM sent */
    STAGE_KILL,     /* SIGKILL sent */
} stop_stage;

typedef struct watch watch;
typedef struct vmrt vmrt;

/* sv_vmctl_with_caps() calls waiting for a probe */
typedef struct caps_waiter {
    sv_vmctl_caps_fn done;
    void *userdata;
    struct caps_waiter *next;
} caps_waiter;

struct sv_vmctl {
    uv_loop_t *loop;
    sv_registry *registry;
    sv_config *const *config;
    vmrt *rts;
    unsigned refs;      /* open handles and queued work; freed at 0 once shut down */
    bool shutting_down;
    /* what the QEMU binary can do (probed once per binary and accelerator mode) */
    enum { CAPS_NONE, CAPS_PROBING, CAPS_DONE } caps_state;
    sv_qemu_caps caps;
    int caps_status;
    qv_error caps_err;
    char *caps_binary;
    bool caps_want_kvm;
    uint64_t caps_done_ms;      /* when the last probe ended (uv_now) */
    sv_qemu_binary_stamp caps_stamp;   /* the binary as that probe found it */
    bool accel_warned;
    caps_waiter *caps_waiters;
};

struct watch {
    uv_poll_t poll;
    int pidfd;
    pid_t pid;
    vmrt *rt;
};

struct vmrt {
    sv_vmctl *c;
    sv_vm *vm;             /* NULL once forgotten */
    vmrt *next;
    uv_timer_t timer;      /* start timeout, stop stages, restart backoff */
    uv_timer_t acpi_timer; /* ACPI repeats during a graceful stop */
    uv_timer_t persist_timer; /* a coalesced or retried write of state.json */
    int refs;
    /* state.json (persist, persist_soon) */
    bool persist_due;      /* the state in memory is newer than state.json */
    bool persist_failing;  /* the last write failed (logged once per streak) */
    uint64_t persist_last_ms;
    /* pause/resume changes logged in this window, and those only counted */
    uint64_t pause_window_ms;
    unsigned pause_logged, pause_unlogged;
    watch *watch;          /* the current QEMU, NULL when none */
    bool our_child;        /* spawned by this daemon (waitid gives its status) */
    qmp_conn *qmp;
    qga_conn *qga;
    bool paused;           /* QEMU says the guest is paused (QMP STOP) */
    unsigned pause_ops;    /* our stop/cont commands QEMU has not answered yet */
    bool pause_target;     /* where the last of them leads: paused (stop) or running (cont) */
    bool status_pending;   /* re-adopted: query-status asked, not answered yet */
    bool stop_waits_status; /* a graceful stop waits for that answer (paused or not) */
    /* start */
    waiter *start_waiters;
    bool starting_prep;    /* prep or probe in flight, QEMU not spawned yet */
    bool waiting_caps;
    bool cont_sent;
    bool policy_start;     /* started by the restart policy, not by a user */
    sv_start_placement place; /* this start's NUMA node and CPUs (decided before it began) */
    off_t log_offset;      /* where this QEMU's output starts in qemu.log */
    /* stop */
    waiter *stop_waiters;
    stop_stage stage;
    const char *how;       /* the step that ended it */
    uint64_t stop_begin_ms;
    char *stop_reason;     /* set when the daemon itself stops the VM (why) */
    bool monitor_failed;   /* stop_reason is a monitor failure during start */
    int fail_code;         /* errno a start killed by start_fail_code fails with */
    /* seen from this QEMU */
    bool shutdown_seen, shutdown_guest, panicked;
    char shutdown_reason[32];
    /* agent */
    uint64_t agent_checked_ms;
    bool agent_busy;
    /* GPU passthrough */
    vfio_plan pt_plan;     /* bound for this start: what goes on QEMU's command line */
    bool pt_ready;         /* the plan's devices are on vfio-pci */
    bool pt_busy;          /* a take or give-back is in flight */
    void (*after_release)(vmrt *rt);
    char *gone_how;        /* handle_gone, waiting for the give-back */
    pid_t gone_pid;
    int abandon_code;      /* start_abandon, waiting for the give-back */
    char *abandon_why;
    /* NICs: TAP and vhost-net fds from the prep until QEMU has its copies */
    sv_net_fds net;
    /* serial console: one client at a time (docs/console.md) */
    bool console_held;     /* answered to a client: reserved, or relaying */
    sv_relay *console;     /* the relay once the client's connection came */
    uid_t console_uid;
    pid_t console_pid;
    time_t console_since;
    sv_serial_cap *serial_cap; /* keeps serial.log bounded while QEMU runs */
};

static void launch(vmrt *rt);
static void handle_gone(vmrt *rt, const char *how_exited);
static void stage_quit(vmrt *rt);
static void stage_term(vmrt *rt);
static void schedule_restart(vmrt *rt);

static const sv_config *cfg(const sv_vmctl *c) {
    return *c->config;
}

/* ---- small helpers ------------------------------------------------------ */

/* Paused, or will be once QEMU has run the stop/cont commands already sent
 * (it runs them in order, so an ACPI request sent now lands after them). */
static bool guest_paused(const vmrt *rt) {
    return rt->pause_ops ? rt->pause_target : rt->paused;
}

static void ctl_unref(sv_vmctl *c) {
    if (--c->refs == 0 && c->shutting_down) {
        free(c->caps_binary);
        free(c);
    }
}

static void on_persist_timer(uv_timer_t *t);

/* Writes state.json now (it holds everything in memory, so a pending
 * coalesced write is done too).  A write that fails is logged once and
 * tried again every PERSIST_RETRY_MS until it succeeds; the caller decides
 * whether what it did must be undone (docs/lifecycle.md, "State on disk"). */
static int persist_err(vmrt *rt, qv_error *err) {
    sv_vm *vm = rt->vm;
    uv_timer_stop(&rt->persist_timer);
    rt->persist_due = false;
    rt->persist_last_ms = uv_now(rt->c->loop);
    int r = sv_registry_save(rt->c->registry, vm, err);
    if (r < 0) {
        if (!rt->persist_failing)
            log_error("VM %s: cannot save its state: %s; trying again every %u s", vm->name, err->msg,
                      PERSIST_RETRY_MS / 1000u);
        rt->persist_failing = true;
        rt->persist_due = true;
        uv_timer_start(&rt->persist_timer, on_persist_timer, PERSIST_RETRY_MS, 0);
        return r;
    }
    if (rt->persist_failing)
        log_info("VM %s: its state is saved again", vm->name);
    rt->persist_failing = false;
    return 0;
}

static int persist(vmrt *rt) {
    qv_error err = {0};
    return persist_err(rt, &err);
}

/* For changes a re-adopting daemon learns from QEMU anyway (paused or
 * running: query-status): written at most once per PERSIST_COALESCE_MS, so
 * a guest that makes its QEMU send STOP/RESUME in a loop costs one small
 * write a second, not one fsync per event. */
static void persist_soon(vmrt *rt) {
    if (rt->persist_due)
        return; /* a write is pending already, and will carry this change */
    rt->persist_due = true;
    uint64_t now = uv_now(rt->c->loop), at = rt->persist_last_ms + PERSIST_COALESCE_MS;
    uv_timer_start(&rt->persist_timer, on_persist_timer, at > now ? at - now : 0, 0);
}

static void on_persist_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->persist_due)
        persist(rt);
}

static void set_state(vmrt *rt, sv_vm_event ev) {
    sv_vm *vm = rt->vm;
    sv_vm_state to;
    int r = sv_vm_next_state(vm->state, ev, &to);
    if (r < 0) {
        log_warning("VM %s: event %s in state %s ignored", vm->name, sv_vm_event_name(ev),
                    sv_vm_state_name(vm->state));
        return;
    }
    if (to != vm->state)
        log_debug("VM %s: %s -> %s (%s)", vm->name, sv_vm_state_name(vm->state), sv_vm_state_name(to),
                  sv_vm_event_name(ev));
    vm->state = to;
}

static void add_waiter(waiter **list, sv_vm_done_fn done, void *userdata) {
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
static void complete(waiter **list, int status, json_t *result, const qv_error *err) {
    waiter *w = *list;
    *list = NULL;
    while (w) {
        waiter *next = w->next;
        w->done(status, result, err, w->userdata);
        free(w);
        w = next;
    }
}

static void fail_waiters(waiter **list, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail_waiters(waiter **list, int code, const char *fmt, ...) {
    qv_error err = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof err.msg, fmt, ap);
    va_end(ap);
    complete(list, -code, NULL, &err);
}

/* rt->refs: its three timers, the pidfd watch and queued start work. */
static void rt_unref(vmrt *rt) {
    sv_vmctl *c = rt->c;
    if (--rt->refs == 0) {
        free(rt->stop_reason);
        free(rt->gone_how);
        free(rt->abandon_why);
        vfio_plan_clear(&rt->pt_plan);
        sv_start_placement_clear(&rt->place);
        free(rt);
        ctl_unref(c);
    }
}

static void rt_close_cb(uv_handle_t *h) {
    rt_unref(h->data);
}

static vmrt *get_rt(sv_vmctl *c, sv_vm *vm) {
    if (vm->rt)
        return vm->rt;
    vmrt *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
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

static void serial_cap_start(vmrt *rt) {
    qv_error err = {0};
    if (!rt->serial_cap &&
        sv_serial_cap_start(rt->c->loop, rt->vm->dir, rt->vm->name, SV_SERIAL_LOG_MAX, &rt->serial_cap, &err) < 0)
        log_warning("VM %s: serial.log is not kept bounded: %s", rt->vm->name, err.msg);
}

static void run_path(const vmrt *rt, const char *file, char *buf, size_t len) {
    if (sv_vm_run_path(cfg(rt->c), rt->vm->name, file, buf, len) < 0)
        buf[0] = '\0';
}

static void remove_run_files(const vmrt *rt) {
    static const char *const files[] = {"qmp.sock", "qga.sock", "console.sock", "qemu.pid"};
    char p[PATH_MAX];
    for (size_t i = 0; i < QV_ARRAY_SIZE(files); i++) {
        run_path(rt, files[i], p, sizeof p);
        if (p[0] && unlink(p) < 0 && errno != ENOENT)
            log_warning("VM %s: cannot remove %s: %s", rt->vm->name, p, strerror(errno));
    }
    run_path(rt, NULL, p, sizeof p);
    if (p[0])
        rmdir(p); /* only when empty */
}

/* A free TCP port on 127.0.0.1 for the SSH forward (the kernel picks it). */
static int pick_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int r = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        r = -errno;
    close(fd);
    return r < 0 ? r : ntohs(a.sin_port);
}

/* The tail of what QEMU wrote to qemu.log since `offset`: its error
 * message when it dies at start.  Lines are joined with "; ". */
static void log_tail(const vmrt *rt, off_t offset, char *buf, size_t len) {
    buf[0] = '\0';
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/qemu.log", rt->vm->dir);
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

static const char *signal_name(int sig) {
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

/* ---- the pidfd watch: QEMU really exited ----------------------------- */

static void watch_close_cb(uv_handle_t *h) {
    watch *w = h->data;
    close(w->pidfd);
    rt_unref(w->rt);
    free(w);
}

static void watch_close(vmrt *rt) {
    watch *w = rt->watch;
    if (!w)
        return;
    rt->watch = NULL;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, watch_close_cb);
}

static void on_pidfd(uv_poll_t *h, int status, int events) {
    (void)events;
    watch *w = h->data;
    vmrt *rt = w->rt;
    char how[96];
    siginfo_t si = {0};
    if (status < 0) {
        log_warning("VM %s: watching QEMU pid %d failed (%s); treating it as gone", rt->vm->name, (int)w->pid,
                    uv_strerror(status));
        snprintf(how, sizeof how, "was lost from sight");
    } else {
        int r = waitid((idtype_t)P_PIDFD, (id_t)w->pidfd, &si, WEXITED | WNOHANG);
        if (r == 0 && si.si_pid == 0)
            return; /* spurious wake-up: not exited yet */
        if (r == 0 && si.si_code == CLD_EXITED)
            snprintf(how, sizeof how, "exited with status %d", si.si_status);
        else if (r == 0)
            snprintf(how, sizeof how, "was killed by %s (%d)", signal_name(si.si_status), si.si_status);
        else /* adopted after a daemon restart: not our child, no status */
            snprintf(how, sizeof how, "exited");
    }
    handle_gone(rt, how);
}

static int watch_start(vmrt *rt, pid_t pid, int pidfd) {
    watch *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->pidfd = pidfd;
    w->pid = pid;
    w->rt = rt;
    int r = uv_poll_init(rt->c->loop, &w->poll, pidfd);
    if (r < 0) {
        free(w);
        return r;
    }
    w->poll.data = w;
    rt->refs++;
    rt->watch = w;
    uv_poll_start(&w->poll, UV_READABLE, on_pidfd);
    return 0;
}

/* ---- the monitor -------------------------------------------------------- */

static void started(vmrt *rt);

/* QEMU says the guest is paused, or runs again: a STOP or RESUME event, the
 * answer to our own `stop` or `cont`, or query-status after a re-adoption.
 * Whichever of these comes first moves a running or paused VM along the
 * table; the others find it there already, so it moves (and is persisted
 * and logged) once. */
/* The first PAUSE_LOG_BURST changes of a window are logged one by one, the
 * rest are counted and the count logged once the window is over: a guest
 * cannot fill the journal through its QEMU. */
static void log_pause_change(vmrt *rt, bool paused) {
    const char *name = rt->vm->name;
    uint64_t now = uv_now(rt->c->loop);
    if (now - rt->pause_window_ms >= PAUSE_LOG_WINDOW_MS) {
        if (rt->pause_unlogged)
            log_warning("VM %s: %u more pause/resume changes in %.0f s were not logged one by one", name,
                        rt->pause_unlogged, (double)(now - rt->pause_window_ms) / 1000.0);
        rt->pause_window_ms = now;
        rt->pause_logged = rt->pause_unlogged = 0;
    }
    if (rt->pause_logged < PAUSE_LOG_BURST) {
        rt->pause_logged++;
        log_info("VM %s: %s", name, paused ? "paused" : "resumed");
    } else {
        rt->pause_unlogged++;
    }
}

static void note_paused(vmrt *rt, bool paused) {
    sv_vm *vm = rt->vm;
    rt->paused = paused;
    sv_vm_state want = paused ? SV_VM_PAUSED : SV_VM_RUNNING;
    if ((vm->state == SV_VM_RUNNING || vm->state == SV_VM_PAUSED) && vm->state != want) {
        set_state(rt, paused ? SV_EV_PAUSED : SV_EV_RESUMED);
        /* our own stop/cont (a request) is written at once; what QEMU did
         * by itself is coalesced */
        if (rt->pause_ops)
            persist(rt);
        else
            persist_soon(rt);
        log_pause_change(rt, paused);
    }
    if (paused && vm->state == SV_VM_STOPPING && rt->stage == STAGE_GRACEFUL) {
        log_info("VM %s: paused during a graceful stop; no ACPI to a paused guest, forcing", vm->name);
        stage_quit(rt);
    }
}

static void on_qmp_event(qmp_conn *q, const char *name, json_t *data, const qmp_timestamp *ts, void *userdata) {
    (void)q;
    (void)ts;
    vmrt *rt = userdata;
    sv_vm *vm = rt->vm;
    log_debug("VM %s: QMP event %s", vm->name, name);
    if (strcmp(name, "SHUTDOWN") == 0) {
        rt->shutdown_seen = true;
        rt->shutdown_guest = json_is_true(json_object_get(data, "guest"));
        const char *reason = json_string_value(json_object_get(data, "reason"));
        snprintf(rt->shutdown_reason, sizeof rt->shutdown_reason, "%s", reason ? reason : "");
        /* QEMU's ShutdownCause names ("guest-shutdown"): anything else is
         * kept out of last_exit, which `vm show` prints */
        for (char *ch = rt->shutdown_reason; *ch; ch++)
            if (!((*ch >= 'a' && *ch <= 'z') || (*ch >= '0' && *ch <= '9') || *ch == '-'))
                *ch = '?';
        if (reason && strcmp(reason, "guest-panic") == 0)
            rt->panicked = true;
        log_debug("VM %s: SHUTDOWN (guest %d, reason %s)", vm->name, rt->shutdown_guest, reason ? reason : "?");
    } else if (strcmp(name, "GUEST_PANICKED") == 0) {
        rt->panicked = true;
        log_warning("VM %s: the guest kernel panicked", vm->name);
    } else if (strcmp(name, "STOP") == 0) {
        note_paused(rt, true);
    } else if (strcmp(name, "RESUME") == 0) {
        note_paused(rt, false);
    }
}

static void start_fail_kill(vmrt *rt, const char *why);
static void start_fail_code(vmrt *rt, int code, const char *why);

static void on_qmp_disconnect(qmp_conn *q, int status, void *userdata) {
    vmrt *rt = userdata;
    /* The exit itself is learnt from the pidfd; a monitor lost while QEMU
     * lives only means the stop must use signals. */
    if (rt->watch)
        log_debug("VM %s: monitor connection closed (%s)", rt->vm->name, strerror(-status));
    char why[256];
    snprintf(why, sizeof why, "its monitor failed: %s", qmp_failure(q)[0] ? qmp_failure(q) : strerror(-status));
    if (rt->qmp == q) {
        qmp_close(q);
        rt->qmp = NULL;
    }
    /* A start cannot succeed without its monitor: fail it now, not at the
     * start deadline.  QEMU's own words (the tail of qemu.log) are added
     * once it is gone. */
    if (rt->vm->state == SV_VM_STARTING && rt->watch && !rt->stop_reason) {
        start_fail_kill(rt, why);
        rt->monitor_failed = true;
    }
}

/* The start fails with errno `code` (the exit code it maps to). */
static void start_fail_code(vmrt *rt, int code, const char *why) {
    log_warning("VM %s: start failed: %s; killing QEMU", rt->vm->name, why);
    free(rt->stop_reason);
    rt->stop_reason = strdup(why);
    rt->fail_code = code;
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGKILL); /* paused before cont: nothing to lose */
}

static void start_fail_kill(vmrt *rt, const char *why) {
    start_fail_code(rt, EIO, why);
}

static void on_cont(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || rt->vm == NULL || rt->vm->state != SV_VM_STARTING)
        return;
    if (status < 0) {
        char why[256];
        snprintf(why, sizeof why, "cont failed: %s", e ? e->desc : strerror(-status));
        start_fail_kill(rt, why);
        return;
    }
    started(rt);
}

static void send_cont(vmrt *rt) {
    rt->cont_sent = true;
    if (!rt->qmp || qmp_cont(rt->qmp, QMP_CMD_TIMEOUT_MS, on_cont, rt) < 0)
        start_fail_kill(rt, "cannot send cont");
}

/* query-cpus-fast answered while -S holds the vCPUs: pin them and every
 * other thread of QEMU (the emulator threads) to the start's CPUs, then
 * resume.  A stop that arrived meanwhile has quit QEMU: nothing to do. */
static void on_vcpus(qmp_conn *q, int status, const qmp_vcpu *cpus, size_t n_cpus, const qmp_error *e,
                     void *userdata) {
    (void)q;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || rt->vm == NULL || rt->vm->state != SV_VM_STARTING || rt->cont_sent)
        return;
    if (rt->stop_reason)
        return; /* already failing (timeout): QEMU is being killed, keep the first reason */
    sv_vm *vm = rt->vm;
    char why[sizeof(((qv_error *)0)->msg) + 32];
    if (status < 0) {
        snprintf(why, sizeof why, "query-cpus-fast failed: %s", e ? e->desc : strerror(-status));
        start_fail_kill(rt, why);
        return;
    }
    pid_t tids[1024];
    if (n_cpus == 0 || n_cpus > QV_ARRAY_SIZE(tids)) {
        snprintf(why, sizeof why, "query-cpus-fast listed %zu vCPUs", n_cpus);
        start_fail_kill(rt, why);
        return;
    }
    for (size_t i = 0; i < n_cpus; i++)
        tids[i] = cpus[i].thread_id;
    qv_error err = {0};
    size_t emulator = 0;
    if (sv_pin_threads((pid_t)vm->run.pid, tids, n_cpus, rt->place.cpus, rt->place.n_cpus, &emulator, &err) < 0) {
        snprintf(why, sizeof why, "pinning failed: %s", err.msg);
        start_fail_kill(rt, why);
        return;
    }
    char list[256];
    if (qv_format_cpulist(rt->place.cpus, rt->place.n_cpus, list, sizeof list) < 0)
        snprintf(list, sizeof list, "?");
    log_info("VM %s: %zu vCPU thread%s and %zu emulator thread%s pinned to CPUs %s", vm->name, n_cpus,
             n_cpus == 1 ? "" : "s", emulator, emulator == 1 ? "" : "s", list);
    send_cont(rt);
}

static void on_qmp_ready(qmp_conn *q, void *userdata) {
    vmrt *rt = userdata;
    sv_vm *vm = rt->vm;
    int maj = 0, min = 0, mic = 0;
    qmp_version(q, &maj, &min, &mic);
    log_debug("VM %s: monitor ready (QEMU %d.%d.%d)", vm->name, maj, min, mic);
    if (vm->state == SV_VM_STARTING && !rt->cont_sent) {
        /* setup while -S holds the vCPUs: pinning; `cont` when it is done */
        if (rt->place.n_cpus) {
            if (qmp_query_cpus_fast(q, QMP_CMD_TIMEOUT_MS, on_vcpus, rt) < 0)
                start_fail_kill(rt, "cannot send query-cpus-fast");
            return;
        }
        send_cont(rt);
    }
}

static int qmp_attach(vmrt *rt) {
    char path[PATH_MAX];
    run_path(rt, "qmp.sock", path, sizeof path);
    qmp_options o = {
        .on_ready = on_qmp_ready,
        .on_event = on_qmp_event,
        .on_disconnect = on_qmp_disconnect,
        .userdata = rt,
        .handshake_timeout_ms = START_TIMEOUT_MS,
    };
    return qmp_connect(rt->c->loop, path, &o, &rt->qmp);
}

/* ---- the guest agent ----------------------------------------------------- */

static void on_qga_disconnect(qga_conn *g, int status, void *userdata) {
    vmrt *rt = userdata;
    log_debug("VM %s: agent channel closed (%s)", rt->vm ? rt->vm->name : "?", strerror(-status));
    if (rt->qga == g) {
        qga_close(g);
        rt->qga = NULL;
    }
}

static void agent_attach(vmrt *rt) {
    if (!rt->vm->spec->agent || rt->qga)
        return;
    char path[PATH_MAX];
    run_path(rt, "qga.sock", path, sizeof path);
    qga_options o = {.on_disconnect = on_qga_disconnect, .userdata = rt};
    int r = qga_connect(rt->c->loop, path, &o, &rt->qga);
    if (r < 0)
        log_warning("VM %s: cannot connect to the guest-agent channel %s: %s", rt->vm->name, path, strerror(-r));
    rt->vm->agent = "unknown";
}

static void detach_channels(vmrt *rt) {
    if (rt->qmp) {
        qmp_close(rt->qmp);
        rt->qmp = NULL;
    }
    if (rt->qga) {
        qga_close(rt->qga);
        rt->qga = NULL;
    }
}

/* ---- start ------------------------------------------------------------- */

static json_t *start_result(const vmrt *rt) {
    const sv_vm *vm = rt->vm;
    json_t *j = json_pack("{s:s, s:s, s:i}", "name", vm->name, "state", sv_vm_state_name(vm->state), "pid",
                          vm->run.pid);
    json_object_set_new(j, "ssh_port", vm->run.ssh_port ? json_integer(vm->run.ssh_port) : json_null());
    char ip[ND_IPV4_CIDR_STRLEN];
    json_object_set_new(j, "ip", sv_vm_static_ip(vm, ip) ? json_string(ip) : json_null());
    return j;
}

static void started(vmrt *rt) {
    sv_vm *vm = rt->vm;
    uv_timer_stop(&rt->timer);
    set_state(rt, SV_EV_STARTED);
    qv_error perr = {0};
    if (persist_err(rt, &perr) < 0) {
        /* on disk it is still "starting": a daemon restart would stop it, so
         * the start fails now rather than later (the guest ran a moment) */
        vm->state = SV_VM_STARTING;
        char why[sizeof perr.msg + 32];
        snprintf(why, sizeof why, "cannot record that it runs: %s", perr.msg);
        start_fail_code(rt, perr.code, why);
        return;
    }
    log_info("VM %s: running (QEMU pid %d%s)", vm->name, vm->run.pid, rt->policy_start ? ", restarted by policy" : "");
    agent_attach(rt);
    json_t *res = start_result(rt);
    complete(&rt->start_waiters, 0, res, NULL);
    json_decref(res);
}

static void on_start_timeout(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->vm->state == SV_VM_STARTING)
        start_fail_kill(rt, "QEMU did not answer on its monitor in time");
}

typedef struct prep_job {
    uv_work_t work;
    vmrt *rt;
    char *base;
    uint64_t base_size;
    int64_t base_mtime_ns;
    char *dir;
    char *run_dir;
    sv_vmspec *spec;   /* copies for the worker thread */
    sv_config *config;
    bool seed_changed;
    bool vars_restored; /* UEFI: the variable store was missing and is a fresh copy */
    sv_net_fds net;
    int status;
    qv_error err;
} prep_job;

static void prep_job_free(prep_job *job) {
    if (!job)
        return;
    free(job->base);
    free(job->dir);
    free(job->run_dir);
    sv_vmspec_free(job->spec);
    sv_config_free(job->config);
    sv_net_fds_close(&job->net);
    free(job);
}

/* Worker thread: everything a start does on disk before QEMU runs. */
static void prep_work(uv_work_t *w) {
    prep_job *job = w->data;
    uint64_t size;
    int64_t mtime;
    int r = sv_image_stamp(job->base, &size, &mtime, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    if (job->base_size && (size != job->base_size || mtime != job->base_mtime_ns)) {
        job->status = qv_error_set(&job->err, ESTALE,
                                   "base image %s changed since this VM's disk was made on it (size or mtime "
                                   "differs); the disk would be corrupt: restore the image or recreate the VM",
                                   job->base);
        return;
    }
    /* The instance directory is reached through its fd from here on (a
     * directory swapped for a symlink is refused, and one swapped later is
     * not followed): /proc/PID/fd/N where a function takes a path. */
    _cleanup_close_ int dfd = qv_open_dir_nofollow(job->dir);
    char at[64];
    if (dfd < 0 || (r = qv_fd_path(dfd, at, sizeof at)) < 0) {
        r = dfd < 0 ? dfd : r;
        job->status = qv_error_set(&job->err, -r, "cannot open %s: %s", job->dir,
                                   r == -ENOTDIR || r == -ELOOP ? "not a directory (a symlink?)" : strerror(-r));
        return;
    }
    /* UEFI: the recorded code must still be there; a variable store deleted
     * by hand is made again from its template (the guest loses its boot
     * entries and settings, nothing else) */
    r = sv_fw_start_check(job->spec, at, &job->vars_restored, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    /* the seed follows the spec and the node's DNS: rewritten when they changed */
    r = sv_seed_prepare(job->spec, job->config, at, &job->seed_changed, &job->err);
    if (r < 0) {
        job->status = r;
        return;
    }
    r = qv_mkdir_p(job->run_dir, 0750);
    if (r < 0) {
        job->status = qv_error_set(&job->err, r, "cannot create %s: %s", job->run_dir, strerror(-r));
        return;
    }
    /* keep the previous boot's console next to this one; QEMU truncates
     * serial.log but keeps its mode: made here 0640, relative to the
     * directory and never through a symlink */
    if (renameat(dfd, "serial.log", dfd, "serial.log.1") < 0 && errno != ENOENT)
        log_debug("cannot rotate %s/serial.log: %s", job->dir, strerror(errno));
    _cleanup_close_ int old = openat(dfd, "serial.log.1", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (old >= 0 && fstat(old, &st) == 0 && S_ISREG(st.st_mode))
        fchmod(old, 0640); /* one an older qvisor made 0644 */
    r = qv_open_regular_at(dfd, "serial.log", O_WRONLY, 0640);
    if (r < 0) {
        job->status = qv_error_set(&job->err, r, "cannot create %s/serial.log: %s", job->dir, strerror(-r));
        return;
    }
    close(r);
    /* TAPs last: nothing after them can fail, and a failed start closes them */
    r = sv_net_setup(job->config, job->spec, &job->net, &job->err);
    if (r < 0)
        job->status = r;
}

static bool has_gpus(const sv_vm *vm) {
    return qv_strv_len(vm->spec->gpus) > 0;
}

static void on_released(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    (void)plan;
    vmrt *rt = userdata;
    rt->pt_busy = false;
    rt->pt_ready = false;
    vfio_plan_clear(&rt->pt_plan);
    if (rt->vm && status < 0)
        log_error("VM %s: giving its GPUs back failed: %s (see `qvisor gpu list`, `qvisor cleanup`)", rt->vm->name,
                  err->msg);
    else if (rt->vm)
        log_info("VM %s: GPUs given back to the host", rt->vm->name);
    if (rt->vm && !rt->c->shutting_down)
        rt->after_release(rt);
    rt_unref(rt);
}

/* Gives back whatever the VM holds on vfio-pci (kept devices stay), then
 * `then`, which runs at once when there is nothing to give back.  Only
 * once QEMU is gone: a device leaves vfio-pci after its user. */
static void release_devices(vmrt *rt, void (*then)(vmrt *rt)) {
    sv_vm *vm = rt->vm;
    if (!has_gpus(vm) && !sv_pt_holds(cfg(rt->c), vm->name)) {
        then(rt);
        return;
    }
    qv_error err = {0};
    rt->after_release = then;
    rt->pt_busy = true;
    rt->refs++;
    if (sv_pt_give_back(rt->c->loop, cfg(rt->c), vm->name, false, on_released, rt, &err) < 0) {
        log_error("VM %s: cannot give its GPUs back: %s", vm->name, err.msg);
        rt->pt_busy = false;
        rt->refs--;
        then(rt);
    }
}

static void start_abandon_now(vmrt *rt, int code, const char *why);

static void start_abandon_released(vmrt *rt) {
    char why[sizeof(((qv_error *)0)->msg)];
    snprintf(why, sizeof why, "%s", rt->abandon_why ? rt->abandon_why : "start failed");
    free(rt->abandon_why);
    rt->abandon_why = NULL;
    start_abandon_now(rt, rt->abandon_code, why);
}

/* A start whose QEMU never ran (or died during the start) ends here:
 * devices taken for it go back first. */
static void start_abandon(vmrt *rt, int code, const char *why) {
    if (has_gpus(rt->vm)) {
        rt->abandon_code = code;
        free(rt->abandon_why);
        rt->abandon_why = strdup(why);
        release_devices(rt, start_abandon_released);
        return;
    }
    start_abandon_now(rt, code, why);
}

static void start_abandon_now(vmrt *rt, int code, const char *why) {
    sv_vm *vm = rt->vm;
    rt->starting_prep = false;
    sv_net_fds_close(&rt->net); /* the TAPs vanish with their fds */
    if (vm->state == SV_VM_STOPPING) {
        /* a stop arrived before QEMU existed */
        set_state(rt, SV_EV_EXITED);
        vm->run = (sv_vm_run){.restarts = vm->run.restarts, .numa_node = -1};
        persist(rt);
        json_t *res = json_pack("{s:s, s:s, s:f}", "result", "clean", "how", "start aborted before QEMU ran",
                                "seconds", 0.0);
        complete(&rt->stop_waiters, 0, res, NULL);
        json_decref(res);
        fail_waiters(&rt->start_waiters, ECANCELED, "start of VM '%s' aborted by a stop request", vm->name);
        return;
    }
    set_state(rt, SV_EV_START_FAILED);
    char msg[sizeof(((qv_error *)0)->msg)];
    snprintf(msg, sizeof msg, "start failed: %s", why);
    sv_vm_set_last_exit(vm, msg);
    vm->run = (sv_vm_run){.restarts = vm->run.restarts, .numa_node = -1};
    persist(rt);
    log_warning("VM %s: %s", vm->name, msg);
    fail_waiters(&rt->start_waiters, code, "VM '%s' did not start: %s", vm->name, why);
    if (rt->policy_start)
        schedule_restart(rt);
}

static void maybe_launch(vmrt *rt);

static void prep_after(uv_work_t *w, int status) {
    prep_job *job = w->data;
    vmrt *rt = job->rt;
    const sv_vmctl *c = rt->c;
    if (status < 0 && job->status == 0)
        job->status = qv_error_set(&job->err, ECANCELED, "cancelled");
    if (rt->vm && !c->shutting_down) {
        if (job->seed_changed)
            log_info("VM %s: cloud-init seed (re)written", rt->vm->name);
        if (job->vars_restored)
            log_warning("VM %s: its UEFI variable store %s/" SV_FW_VARS_FILE " was missing; made a fresh copy of %s "
                        "(boot entries and firmware settings start over)",
                        rt->vm->name, job->dir, job->spec->firmware_vars);
        if (job->status < 0) {
            start_abandon(rt, job->err.code, job->err.msg);
        } else {
            sv_net_fds_close(&rt->net);
            rt->net = job->net; /* the runtime owns the fds now */
            sv_net_fds_init(&job->net);
            maybe_launch(rt);
        }
    }
    prep_job_free(job);
    rt_unref(rt);
}

static void caps_work(uv_work_t *w) {
    sv_vmctl *c = w->data;
    memset(&c->caps, 0, sizeof c->caps);
    c->caps_err = (qv_error){0};
    c->caps_status = sv_qemu_caps_probe(c->caps_binary, c->caps_want_kvm, &c->caps, &c->caps_err);
}

/* The probe's answer to one sv_vmctl_with_caps() caller, with the
 * accelerator resolved the way launch() will. */
static void caps_deliver(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata) {
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

static bool caps_current(sv_vmctl *c);

void sv_vmctl_with_caps(sv_vmctl *c, sv_vmctl_caps_fn done, void *userdata) {
    if (c->shutting_down || caps_current(c) || c->caps_state != CAPS_PROBING) {
        caps_deliver(c, done, userdata);
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
                maybe_launch(rt);
            }
    caps_waiter *w8 = c->caps_waiters;
    c->caps_waiters = NULL;
    while (w8) {
        caps_waiter *next = w8->next;
        caps_deliver(c, w8->done, w8->userdata);
        free(w8);
        w8 = next;
    }
    ctl_unref(c);
}

/* Probes the configured QEMU unless the cached answer is for it.  A
 * successful probe stands until the binary or the accelerator mode changes
 * in the config.  A failed one stands too, for CAPS_RETRY_MS or until the
 * binary itself changes (size, mtime, inode: reinstalled or fixed): every
 * start and create in between gets its error at once, and a broken binary
 * is not run again for each of them. */
static bool caps_current(sv_vmctl *c) {
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

static void on_taken(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    vmrt *rt = userdata;
    rt->pt_busy = false;
    if (rt->vm && !rt->c->shutting_down) {
        if (status < 0) {
            start_abandon(rt, err->code, err->msg);
        } else {
            rt->pt_ready = true;
            vfio_plan_clear(&rt->pt_plan);
            rt->pt_plan.devs = malloc((plan->n ? plan->n : 1) * sizeof *plan->devs);
            if (rt->pt_plan.devs) {
                memcpy(rt->pt_plan.devs, plan->devs, plan->n * sizeof *plan->devs);
                rt->pt_plan.n = plan->n;
            }
            log_info("VM %s: %zu PCI function%s on vfio-pci", rt->vm->name, plan->n, plan->n == 1 ? "" : "s");
            sv_crash_point("start-after-bind");
            if (!rt->pt_plan.devs)
                start_abandon(rt, ENOMEM, "out of memory");
            else
                maybe_launch(rt);
        }
    }
    rt_unref(rt);
}

/* Moves the VM's GPUs (and what must go with them) to vfio-pci, then
 * comes back to maybe_launch. */
static void take_devices(vmrt *rt) {
    qv_error err = {0};
    rt->pt_busy = true;
    rt->refs++;
    if (sv_pt_take(rt->c->loop, cfg(rt->c), rt->vm->spec, on_taken, rt, &err) < 0) {
        rt->pt_busy = false;
        rt->refs--;
        start_abandon(rt, err.code, err.msg);
    }
}

static void maybe_launch(vmrt *rt) {
    sv_vmctl *c = rt->c;
    if (rt->vm->state != SV_VM_STARTING) {
        start_abandon(rt, ECANCELED, "a stop request came first");
        return;
    }
    if (!caps_current(c)) {
        if (c->caps_state == CAPS_PROBING) {
            rt->waiting_caps = true;
            return;
        }
        start_abandon(rt, ENOMEM, "cannot probe QEMU");
        return;
    }
    if (c->caps_status < 0) {
        start_abandon(rt, c->caps_err.code, c->caps_err.msg);
        return;
    }
    if (has_gpus(rt->vm) && !rt->pt_ready) {
        take_devices(rt);
        return;
    }
    launch(rt);
}

/* The files QEMU gets as fds (qemuargv.h), opened here by the daemon; -1
 * for none.  Closed once QEMU has its copies. */
typedef struct vm_files {
    int disk, base, seed, fw_code, fw_vars, serial, kernel, initrd;
} vm_files;

static void vm_files_close(vm_files *f) {
    int *all[] = {&f->disk, &f->base, &f->seed, &f->fw_code, &f->fw_vars, &f->serial, &f->kernel, &f->initrd};
    for (size_t i = 0; i < QV_ARRAY_SIZE(all); i++)
        if (*all[i] >= 0) {
            close(*all[i]);
            *all[i] = -1;
        }
}

/* Opens what QEMU needs of the VM's files, each with the access mode QEMU
 * will ask its fdset for.  qvisor's own files are reached relative to the
 * instance directory and never through a symlink; the disk (a symlink into
 * its storage pool when it lives in one) must be the very file create made.
 * Returns 0 or -errno with err set; *f is filled as far as it got. */
static int open_vm_files(const sv_vm *vm, int dirfd, const char *base, vm_files *f, qv_error *err) {
    const sv_vmspec *s = vm->spec;
    *f = (vm_files){-1, -1, -1, -1, -1, -1, -1, -1};
    int r = f->disk = qv_open_existing_at(dirfd, "disk.qcow2", O_RDWR);
    struct stat st;
    if (r >= 0 && vm->disk_ino &&
        (fstat(f->disk, &st) < 0 || (uint64_t)st.st_dev != vm->disk_dev || (uint64_t)st.st_ino != vm->disk_ino))
        return qv_error_set(err, EPERM, "%s/disk.qcow2 is not the disk qvisor made for VM '%s' (another file is in "
                            "its place)", vm->dir, vm->name);
    if (r < 0)
        return qv_error_set(err, -r, "cannot open %s/disk.qcow2: %s", vm->dir, strerror(-r));
    if ((r = f->base = qv_open_existing_at(AT_FDCWD, base, O_RDONLY | O_NOFOLLOW)) < 0)
        return qv_error_set(err, -r, "cannot open base image %s: %s", base, strerror(-r));
    if (s->seed) {
        r = f->seed = qv_open_existing_at(dirfd, SV_SEED_ISO, O_RDONLY | O_NOFOLLOW);
        if (r < 0 && r != -ENOENT)
            return qv_error_set(err, -r, "cannot open %s/" SV_SEED_ISO ": %s", vm->dir, strerror(-r));
    }
    if (s->firmware != SV_FIRMWARE_BIOS && s->firmware_code) {
        /* the node's firmware (a package's file, maybe a symlink), read-only */
        if ((r = f->fw_code = qv_open_existing_at(AT_FDCWD, s->firmware_code, O_RDONLY)) < 0)
            return qv_error_set(err, -r, "cannot open firmware %s: %s", s->firmware_code, strerror(-r));
        if ((r = f->fw_vars = qv_open_existing_at(dirfd, SV_FW_VARS_FILE, O_RDWR | O_NOFOLLOW)) < 0)
            return qv_error_set(err, -r, "cannot open %s/" SV_FW_VARS_FILE ": %s", vm->dir, strerror(-r));
    }
    /* disk images are 0600 whatever an older qvisor left (seeds were 0640) */
    int images[] = {f->disk, f->seed, f->fw_vars};
    for (size_t i = 0; i < QV_ARRAY_SIZE(images); i++)
        if (images[i] >= 0 && fchmod(images[i], 0600) < 0)
            return qv_error_set(err, errno, "cannot make the files of VM '%s' 0600: %s", vm->name, strerror(errno));
    /* made empty (0640) by the prep; appended to, so that QEMU goes on at
     * the start of a log the daemon emptied (serlog.h) */
    if ((r = f->serial = qv_open_regular_at(dirfd, "serial.log", O_WRONLY | O_APPEND, 0640)) < 0)
        return qv_error_set(err, -r, "cannot open %s/serial.log: %s", vm->dir, strerror(-r));
    if (s->kernel && (r = f->kernel = qv_open_existing_at(AT_FDCWD, s->kernel, O_RDONLY)) < 0)
        return qv_error_set(err, -r, "cannot open kernel %s: %s", s->kernel, strerror(-r));
    if (s->kernel && s->initrd && (r = f->initrd = qv_open_existing_at(AT_FDCWD, s->initrd, O_RDONLY)) < 0)
        return qv_error_set(err, -r, "cannot open initrd %s: %s", s->initrd, strerror(-r));
    return 0;
}

/* The user QEMU drops to: NULL when it stays root (the daemon is not root,
 * or qemu.run_as is root); -ENOENT (err set) when the node lacks the user. */
static int qemu_user(const sv_config *conf, const char **ret, qv_error *err) {
    *ret = NULL;
    if (geteuid() != 0 || !conf->run_as[0] || strcmp(conf->run_as, "root") == 0)
        return 0;
    struct passwd *pw = getpwnam(conf->run_as);
    if (!pw)
        return qv_error_set(err, QV_ECONFIG,
                            "qemu.run_as: no user named '%s' on this node (run scripts/setup, which creates it, or "
                            "set qemu.run_as)", conf->run_as);
    if (pw->pw_uid != 0)
        *ret = conf->run_as;
    return 0;
}

static void launch(vmrt *rt) {
    sv_vmctl *c = rt->c;
    const sv_config *conf = cfg(c);
    sv_vm *vm = rt->vm;
    qv_error err = {0};
    rt->starting_prep = false;

    bool kvm = false;
    char warning[512] = "";
    if (sv_qemu_accel_resolve(sv_accel_to_string(conf->accelerator), &c->caps, &kvm, warning, sizeof warning,
                              &err) < 0) {
        start_abandon(rt, err.code, err.msg);
        return;
    }
    if (warning[0] && !c->accel_warned) {
        log_warning("%s", warning);
        c->accel_warned = true;
    }
    /* checked at create, but the node may have changed since (KVM gone,
     * another QEMU): QEMU's own refusal would be less clear */
    if (vm->spec->cpu_model && sv_qemu_cpu_model_check(&c->caps, kvm, vm->spec->cpu_model, &err) < 0) {
        start_abandon(rt, err.code, err.msg);
        return;
    }

    char qmp_path[PATH_MAX], qga_path[PATH_MAX], con_path[PATH_MAX], pidfile[PATH_MAX], disk[PATH_MAX],
        serial[PATH_MAX], logpath[PATH_MAX], seed[PATH_MAX], vars[PATH_MAX];
    run_path(rt, "qmp.sock", qmp_path, sizeof qmp_path);
    run_path(rt, "qga.sock", qga_path, sizeof qga_path);
    run_path(rt, "console.sock", con_path, sizeof con_path);
    run_path(rt, "qemu.pid", pidfile, sizeof pidfile);
    snprintf(disk, sizeof disk, "%s/disk.qcow2", vm->dir);
    snprintf(serial, sizeof serial, "%s/serial.log", vm->dir);
    snprintf(logpath, sizeof logpath, "%s/qemu.log", vm->dir);
    snprintf(seed, sizeof seed, "%s/" SV_SEED_ISO, vm->dir);
    snprintf(vars, sizeof vars, "%s/" SV_FW_VARS_FILE, vm->dir);
    if (!qmp_path[0] || !qga_path[0] || !con_path[0] || !pidfile[0]) {
        start_abandon(rt, ENAMETOOLONG, "run directory path too long");
        return;
    }

    /* the daemon binds the sockets and QEMU inherits them: no socket file
     * is made by QEMU (which may run as another user), and they exist
     * before QEMU does */
    _cleanup_close_ int lfd = -1, afd = -1, cfd = -1;
    const char *failed = qmp_path;
    int r = qmp_listen_socket(qmp_path, &lfd);
    if (r >= 0 && vm->spec->agent) {
        failed = qga_path;
        r = qmp_listen_socket(qga_path, &afd);
    }
    if (r >= 0) {
        failed = con_path;
        r = qmp_listen_socket(con_path, &cfd);
    }
    if (r < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot listen on %s: %s", failed, strerror(-r));
        start_abandon(rt, -r, why);
        return;
    }
    /* SSH is forwarded by the first user-mode NIC; a VM without one has no port */
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics = 0;
    if (sv_net_nics(vm->spec, nics, &n_nics, &err) < 0) {
        start_abandon(rt, err.code, err.msg);
        return;
    }
    bool user_nic = false;
    for (size_t i = 0; i < n_nics; i++)
        user_nic = user_nic || nics[i].mode == ND_MODE_USER;
    int port = user_nic ? pick_port() : 0;
    if (port < 0) {
        start_abandon(rt, -port, "no free TCP port on 127.0.0.1 for the SSH forward");
        return;
    }
    const char *run_as;
    if (qemu_user(conf, &run_as, &err) < 0) {
        start_abandon(rt, err.code, err.msg);
        return;
    }
    _cleanup_close_ int vmdirfd = qv_open_dir_nofollow(vm->dir);
    if (vmdirfd < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot open %s: %s", vm->dir,
                 vmdirfd == -ENOTDIR || vmdirfd == -ELOOP ? "not a directory (a symlink?)" : strerror(-vmdirfd));
        start_abandon(rt, -vmdirfd, why);
        return;
    }
    char base[PATH_MAX];
    vm_files files;
    if (sv_image_path(conf, vm->spec->image, base, sizeof base, &err) < 0 ||
        open_vm_files(vm, vmdirfd, base, &files, &err) < 0) {
        vm_files_close(&files);
        start_abandon(rt, err.code, err.msg);
        return;
    }
    /* fds as QEMU numbers them: 3 the monitor, 4 the agent (when it has
     * one), then the serial console, then TAPs and vhost-net in NIC order,
     * then the VM's files (vm_files order) */
    if (!kvm)
        sv_net_fds_drop_vhost(&rt->net); /* vhost-net needs KVM's irqfd */
    int fds[3 + 2 * ND_NICS_MAX + 8], tap_fds[ND_NICS_MAX], vhost_fds[ND_NICS_MAX];
    size_t n_fds = 0;
    fds[n_fds++] = lfd;
    int qga_fd = 0;
    if (afd >= 0) {
        qga_fd = 3 + (int)n_fds;
        fds[n_fds++] = afd;
    }
    int console_fd = 3 + (int)n_fds;
    fds[n_fds++] = cfd;
    for (size_t i = 0; i < ND_NICS_MAX; i++) {
        tap_fds[i] = vhost_fds[i] = -1;
        if (rt->net.tap[i] >= 0) {
            tap_fds[i] = 3 + (int)n_fds;
            fds[n_fds++] = rt->net.tap[i];
        }
        if (rt->net.vhost[i] >= 0) {
            vhost_fds[i] = 3 + (int)n_fds;
            fds[n_fds++] = rt->net.vhost[i];
        }
    }
    int file_fds[8];
    int *const file_src[] = {&files.disk,    &files.base,   &files.seed,   &files.fw_code,
                             &files.fw_vars, &files.serial, &files.kernel, &files.initrd};
    for (size_t i = 0; i < QV_ARRAY_SIZE(file_src); i++) {
        file_fds[i] = 0;
        if (*file_src[i] >= 0) {
            file_fds[i] = 3 + (int)n_fds;
            fds[n_fds++] = *file_src[i];
        }
    }
    sv_qemu_env env = {
        .binary = conf->qemu_binary,
        .kvm = kvm,
        .sandbox = c->caps.sandbox,
        .run_as = run_as,
    };
    sv_vm_paths paths = {
        .disk = disk,
        .serial_log = serial,
        .pidfile = pidfile,
        .qga_fd = qga_fd,
        .console_fd = console_fd,
        .seed_iso = files.seed >= 0 ? seed : NULL,
        .disk_fd = file_fds[0],
        .base_fd = file_fds[1],
        .seed_fd = file_fds[2],
        .fw_code_fd = file_fds[3],
        .fw_vars_fd = file_fds[4],
        .serial_fd = file_fds[5],
        .kernel_fd = file_fds[6],
        .initrd_fd = file_fds[7],
        .firmware_vars = vm->spec->firmware != SV_FIRMWARE_BIOS ? vars : NULL,
        .qmp_fd = 3,
        .ssh_port = port,
        .tap_fds = tap_fds,
        .vhost_fds = vhost_fds,
        .numa_bind = rt->place.bind_memory,
        .numa_node = rt->place.numa_node >= 0 ? (unsigned)rt->place.numa_node : 0,
    };
    sv_hostdev hostdevs[64];
    size_t n_host = 0;
    for (size_t i = 0; i < rt->pt_plan.n && n_host < QV_ARRAY_SIZE(hostdevs); i++)
        if (rt->pt_plan.devs[i].pass)
            hostdevs[n_host++] = (sv_hostdev){rt->pt_plan.devs[i].bdf, (unsigned)rt->pt_plan.devs[i].gpu,
                                              (unsigned)rt->pt_plan.devs[i].function};
    paths.hostdevs = hostdevs;
    paths.n_hostdevs = n_host;
    /* VFIO pins all guest RAM (and a little more for its own mappings) */
    sv_proc_limits limits = {.memlock = n_host ? vm->spec->memory + (1ull << 30) : 0};
#if QV_TEST_HOOKS
    /* test machines lack CAP_SYS_RESOURCE; the fake QEMU checks the request in qemu.log */
    limits.memlock_best_effort = getenv("QVISOR_TEST_MEMLOCK_BEST_EFFORT") != NULL;
#endif
    char **argv = NULL;
    if (sv_qemu_argv(vm->spec, &env, &paths, &argv, &err) < 0) {
        vm_files_close(&files);
        start_abandon(rt, err.code, err.msg);
        return;
    }
    /* relative to the instance directory, never through a symlink, 0640
     * whatever an older qvisor or the umask left */
    _cleanup_close_ int logfd = qv_open_regular_at(vmdirfd, "qemu.log", O_WRONLY | O_APPEND, 0640);
    if (logfd < 0) {
        int e = -logfd;
        logfd = -1;
        sv_argv_free(argv);
        vm_files_close(&files);
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot open %s: %s", logpath, strerror(e));
        start_abandon(rt, e, why);
        return;
    }
    /* a header, then the command line, as libvirt does: the log explains itself */
    char stamp[64];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&now, &tm));
    dprintf(logfd, "---- qvisor: starting %s at %s (%s) ----\n", vm->name, stamp, kvm ? "KVM" : "TCG");
    if (limits.memlock)
        dprintf(logfd, "RLIMIT_MEMLOCK %llu (guest RAM + 1 GiB: VFIO pins all guest memory)\n",
                (unsigned long long)limits.memlock);
    for (char **a = argv; *a; a++)
        dprintf(logfd, "%s%s", *a, a[1] ? " " : "\n");
    rt->log_offset = lseek(logfd, 0, SEEK_END);

    pid_t pid;
    int pidfd;
    r = sv_proc_spawn(argv, logfd, fds, n_fds, &limits, &pid, &pidfd, &err);
    sv_argv_free(argv);
    sv_net_fds_close(&rt->net); /* QEMU has them: its TAPs now live and die with it */
    vm_files_close(&files);
    if (r < 0) {
        start_abandon(rt, err.code, err.msg);
        return;
    }
    rt->our_child = true;
    rt->cont_sent = false;
    rt->paused = false;
    rt->shutdown_seen = rt->shutdown_guest = rt->panicked = false;
    rt->shutdown_reason[0] = '\0';
    vm->run.pid = pid;
    vm->run.start_ticks = 0;
    sv_proc_start_time(pid, &vm->run.start_ticks);
    vm->run.started_at = (int64_t)now;
    vm->run.ssh_port = port;
    vm->run.numa_node = rt->place.numa_node;
    qv_error perr = {0};
    bool recorded = persist_err(rt, &perr) == 0;
    sv_crash_point("start-after-spawn");
    r = watch_start(rt, pid, pidfd);
    if (r < 0) {
        /* cannot watch it: do not leave it running unwatched */
        sv_pidfd_signal(pidfd, SIGKILL);
        waitpid(pid, NULL, 0);
        close(pidfd);
        remove_run_files(rt);
        start_abandon(rt, -r, "cannot watch the QEMU process");
        return;
    }
    log_info("VM %s: QEMU started (pid %d, %s%s)", vm->name, (int)pid, kvm ? "KVM" : "TCG",
             env.sandbox ? ", seccomp sandbox" : "");
    serial_cap_start(rt);
    uv_timer_start(&rt->timer, on_start_timeout, sv_pt_start_timeout_ms(vm->spec, START_TIMEOUT_MS), 0);
    if (!recorded) {
        /* a QEMU whose pid is not on disk would be lost to a daemon restart */
        char why[sizeof perr.msg + 32];
        snprintf(why, sizeof why, "cannot record its pid: %s", perr.msg);
        start_fail_code(rt, perr.code, why);
        return;
    }
    r = qmp_attach(rt);
    if (r < 0)
        start_fail_kill(rt, "cannot connect to the monitor socket");
}

/* Admission and placement of a start (docs/resources.md): the VMs that have
 * a QEMU count; the NUMA node (auto, N) and the CPUs (pin, else the node's)
 * are decided and checked here, before QEMU exists.  *ret is set only on
 * success. */
static int start_placement(sv_vmctl *c, sv_vm *vm, sv_start_placement *ret, qv_error *err) {
    const sv_vmspec *s = vm->spec;
    sv_start_placement place = {.numa_node = -1};
    sv_capacity cap = {0};
    int r = sv_resources_capacity(&cap, err); /* once: for placement and admission */
    if (r < 0)
        return r;
    sv_admission_policy policy;
    _cleanup_free_ sv_vm_usage *usage = NULL;
    size_t n = 0;
    r = sv_admission_policy_init(&policy, cfg(c), s->pool, err);
    if (r == 0 && (r = sv_resources_usage(c->registry, false, &usage, &n)) < 0)
        r = qv_error_set(err, -r, "out of memory");
    if (r == 0)
        r = sv_start_place(&cap, &policy, usage, n, s, &place, err);
    if (r == 0 && (r = sv_resources_admit(c->registry, cfg(c), &cap, s, false, place.numa_node, err)) < 0)
        sv_start_placement_clear(&place);
    sv_capacity_clear(&cap);
    if (r < 0)
        return r;
    *ret = place;
    return 0;
}

static int begin_start(sv_vmctl *c, sv_vm *vm, bool policy, sv_vm_done_fn done, void *userdata, qv_error *err) {
    if (c->shutting_down)
        return qv_error_set(err, ECANCELED, "the daemon is stopping");
    sv_vm_state to;
    int r = sv_vm_next_state(vm->state, SV_EV_START, &to);
    if (r == -EALREADY)
        return qv_error_set(err, EALREADY, "VM '%s' is already %s", vm->name, sv_vm_state_name(vm->state));
    if (r < 0)
        return qv_error_set(err, EBUSY, "VM '%s' is %s; try again when that is done", vm->name,
                            sv_vm_state_name(vm->state));
    vmrt *rt = get_rt(c, vm);
    if (rt && rt->pt_busy)
        return qv_error_set(err, EBUSY, "VM '%s': its GPUs are being given back; try again in a moment", vm->name);
    prep_job *job = calloc(1, sizeof *job);
    char run_dir[PATH_MAX], base[PATH_MAX];
    if (!rt || !job)
        goto oom;
    if (sv_image_path(cfg(c), vm->spec->image, base, sizeof base, err) < 0) {
        free(job);
        return -err->code;
    }
    run_path(rt, NULL, run_dir, sizeof run_dir);
    job->rt = rt;
    job->work.data = job;
    sv_net_fds_init(&job->net);
    job->base = strdup(base);
    job->dir = strdup(vm->dir);
    job->run_dir = strdup(run_dir);
    job->base_size = vm->base_size;
    job->base_mtime_ns = vm->base_mtime_ns;
    json_t *specj = sv_vmspec_to_json(vm->spec);
    qv_error e2 = {0};
    if (specj)
        sv_vmspec_from_json(specj, &job->spec, &e2);
    json_decref(specj);
    job->config = sv_config_dup(cfg(c));
    if (!job->base || !job->dir || !job->run_dir || !job->spec || !job->config)
        goto oom;
    /* the node's resources: refused here, before anything changed */
    sv_start_placement place;
    r = start_placement(c, vm, &place, err);
    if (r < 0) {
        prep_job_free(job);
        return r;
    }
    sv_start_placement_clear(&rt->place);
    rt->place = place;
    /* "starting" is on disk before anything happens, or nothing happens:
     * a daemon that dies later must find the start it has to undo */
    const sv_vm_state from = vm->state;
    const sv_vm_run run_before = vm->run;
    vm->state = to;
    vm->run = (sv_vm_run){.restarts = policy ? vm->run.restarts : 0, .numa_node = -1};
    qv_error perr = {0};
    r = persist_err(rt, &perr);
    if (r == 0 && (r = uv_queue_work(c->loop, &job->work, prep_work, prep_after)) < 0)
        qv_error_set(&perr, -r, "cannot queue the start: %s", uv_strerror(r));
    if (r < 0) {
        vm->state = from;
        vm->run = run_before;
        persist(rt); /* undone on disk too (or retried until it is) */
        prep_job_free(job);
        return qv_error_set(err, perr.code, "VM '%s' not started: %s", vm->name, perr.msg);
    }
    uv_timer_stop(&rt->timer); /* a pending automatic restart is superseded */
    rt->policy_start = policy;
    rt->starting_prep = true;
    free(rt->stop_reason);
    rt->stop_reason = NULL;
    rt->monitor_failed = false;
    rt->fail_code = 0;
    rt->stage = STAGE_NONE;
    rt->refs++;
    add_waiter(&rt->start_waiters, done, userdata);
    log_info("VM %s: starting", vm->name);
    return 0;
oom:
    prep_job_free(job);
    return qv_error_set(err, ENOMEM, "out of memory");
}

int sv_vm_start(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return begin_start(c, vm, false, done, userdata, err);
}

/* ---- stop ------------------------------------------------------------ */

void sv_stop_timeouts(const sv_vmspec *spec, const sv_config *c, uint64_t override_ms, uint64_t *ret_graceful_ms,
                      uint64_t *ret_kill_ms) {
    uint64_t per16 = spec->memory / (16ull << 30);
    uint64_t base = spec->stop_timeout_ms ? spec->stop_timeout_ms : c->stop_timeout_ms;
    size_t gpus = qv_strv_len(spec->gpus);
    /* guest GPU drivers take their time to let go of the card */
    *ret_graceful_ms = override_ms ? override_ms : base + per16 * 5000 + gpus * 10000;
    *ret_kill_ms = c->kill_timeout_ms + per16 * 1000;
}

uint64_t sv_restart_backoff_ms(uint64_t restarts) {
    return restarts >= 6 ? 60000 : 1000ull << restarts;
}

static void on_stage_timer(uv_timer_t *t);

/* The stop's timeouts, from the spec, the node and the stop's own options. */
static uint64_t graceful_ms(const vmrt *rt) {
    uint64_t g, k;
    sv_stop_timeouts(rt->vm->spec, cfg(rt->c), rt->vm->run.stop_timeout_ms, &g, &k);
    return g;
}

static uint64_t kill_ms(const vmrt *rt) {
    uint64_t g, k;
    sv_stop_timeouts(rt->vm->spec, cfg(rt->c), rt->vm->run.stop_timeout_ms, &g, &k);
    return k;
}

static void arm(vmrt *rt, uint64_t ms) {
    uv_timer_start(&rt->timer, on_stage_timer, ms, 0);
}

static void on_acpi_ack(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status < 0 && status != QMP_ECANCELED && rt->vm)
        log_warning("VM %s: system_powerdown failed: %s", rt->vm->name, e ? e->desc : strerror(-status));
}

static void press_power_button(vmrt *rt) {
    if (guest_paused(rt)) {
        /* never ACPI to a paused guest: QEMU would queue it until resume */
        stage_quit(rt);
        return;
    }
    if (!rt->qmp) {
        log_warning("VM %s: no monitor connection for ACPI; forcing", rt->vm->name);
        stage_term(rt);
        return;
    }
    rt->how = "ACPI power button";
    qmp_system_powerdown(rt->qmp, QMP_CMD_TIMEOUT_MS, on_acpi_ack, rt);
}

static void on_acpi_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (rt->vm && rt->stage == STAGE_GRACEFUL) {
        if (strcmp(rt->how, "ACPI power button") != 0)
            log_info("VM %s: the guest agent's shutdown did not take; pressing the ACPI power button too",
                     rt->vm->name);
        press_power_button(rt);
    }
}

static void acpi(vmrt *rt) {
    press_power_button(rt);
    if (rt->stage == STAGE_GRACEFUL)
        uv_timer_start(&rt->acpi_timer, on_acpi_timer, ACPI_REPEAT_MS, ACPI_REPEAT_MS);
}

static void on_agent_shutdown(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)g;
    (void)result;
    (void)e;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || !rt->vm || rt->stage != STAGE_GRACEFUL)
        return;
    if (status < 0) {
        log_info("VM %s: agent guest-shutdown failed (%s); using ACPI", rt->vm->name, strerror(-status));
        acpi(rt);
    }
}

static void on_agent_ping(qga_conn *g, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)result;
    (void)e;
    vmrt *rt = userdata;
    if (status == QMP_ECANCELED || !rt->vm || rt->stage != STAGE_GRACEFUL)
        return;
    if (status == 0 && !guest_paused(rt)) {
        rt->vm->agent = "ok";
        rt->how = "guest agent guest-shutdown";
        log_info("VM %s: asking the guest agent to shut down", rt->vm->name);
        if (qga_shutdown(g, "powerdown", AGENT_PING_MS, on_agent_shutdown, rt) == 0) {
            /* guest-shutdown has no reply: an agent that took the request
             * and did nothing (just starting, wedged) is backed up by ACPI */
            uv_timer_start(&rt->acpi_timer, on_acpi_timer, AGENT_FALLBACK_MS, ACPI_REPEAT_MS);
            return;
        }
    }
    if (status != 0)
        rt->vm->agent = "no answer";
    log_info("VM %s: pressing the ACPI power button%s", rt->vm->name,
             status != 0 ? " (the guest agent did not answer)" : "");
    acpi(rt);
}

static void stage_graceful(vmrt *rt) {
    rt->stage = STAGE_GRACEFUL;
    arm(rt, graceful_ms(rt));
    if (rt->qga && rt->vm->spec->agent && !guest_paused(rt)) {
        rt->how = "guest agent";
        if (qga_ping(rt->qga, AGENT_PING_MS, on_agent_ping, rt) == 0)
            return;
    }
    log_info("VM %s: pressing the ACPI power button", rt->vm->name);
    acpi(rt);
}

static void on_quit(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    vmrt *rt = userdata;
    if (status < 0 && status != QMP_ECANCELED && status != QMP_EDISCONNECTED && rt->vm)
        log_info("VM %s: quit got no answer (%s)", rt->vm->name, e ? e->desc : strerror(-status));
}

static void stage_quit(vmrt *rt) {
    uv_timer_stop(&rt->acpi_timer);
    if (!rt->qmp) {
        stage_term(rt);
        return;
    }
    rt->stage = STAGE_QUIT;
    rt->how = "QMP quit";
    log_info("VM %s: sending quit to QEMU", rt->vm->name);
    if (qmp_quit(rt->qmp, QMP_CMD_TIMEOUT_MS, on_quit, rt) < 0) {
        stage_term(rt);
        return;
    }
    arm(rt, kill_ms(rt));
}

static void stage_term(vmrt *rt) {
    uv_timer_stop(&rt->acpi_timer);
    rt->stage = STAGE_TERM;
    rt->how = "SIGTERM";
    log_warning("VM %s: sending SIGTERM to QEMU pid %d", rt->vm->name, rt->vm->run.pid);
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGTERM);
    arm(rt, kill_ms(rt));
}

static void stage_kill(vmrt *rt) {
    rt->stage = STAGE_KILL;
    rt->how = "SIGKILL";
    log_warning("VM %s: QEMU pid %d ignored SIGTERM; sending SIGKILL", rt->vm->name, rt->vm->run.pid);
    if (rt->watch)
        sv_pidfd_signal(rt->watch->pidfd, SIGKILL);
    arm(rt, KILL_GRACE_MS);
}

static void on_stage_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (!rt->vm || rt->vm->state != SV_VM_STOPPING)
        return;
    switch (rt->stage) {
    case STAGE_GRACEFUL:
        log_info("VM %s: the guest did not shut down in time; forcing", rt->vm->name);
        stage_quit(rt);
        break;
    case STAGE_QUIT:
        stage_term(rt);
        break;
    case STAGE_TERM:
        stage_kill(rt);
        break;
    case STAGE_KILL:
        log_error("VM %s: QEMU pid %d survives SIGKILL (stuck in the kernel?); still waiting", rt->vm->name,
                  rt->vm->run.pid);
        arm(rt, KILL_GRACE_MS * 2);
        break;
    case STAGE_NONE:
        break;
    }
}

/* quit for a forced stop, a paused guest or one that never ran; else the
 * graceful step. */
static void stop_first_step(vmrt *rt, bool force) {
    if (guest_paused(rt) && !force) {
        /* QEMU would queue an ACPI request or a guest-shutdown until the
         * guest runs again: powered off on a later resume, or never */
        log_info("VM %s: the guest is paused: no ACPI or agent shutdown to a paused guest; quitting QEMU",
                 rt->vm->name);
        stage_quit(rt);
    } else if (force || !rt->cont_sent) {
        stage_quit(rt);
    } else {
        stage_graceful(rt);
    }
}

/* Starts (or joins) the stop of a VM that has, or will have, a QEMU. */
static void begin_stop_sequence(vmrt *rt, bool force) {
    rt->stop_begin_ms = qv_now_ms();
    if (!rt->watch) {
        if (!rt->starting_prep)
            log_error("VM %s: stopping but no QEMU is known", rt->vm->name);
        return; /* the start in flight sees the stop when it completes */
    }
    if (rt->status_pending && !force) {
        rt->stop_waits_status = true; /* on_adopt_status takes the first step */
        return;
    }
    stop_first_step(rt, force);
}

int sv_vm_stop(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
               qv_error *err) {
    if (c->shutting_down)
        return qv_error_set(err, ECANCELED, "the daemon is stopping");
    sv_vm_state to;
    int r = sv_vm_next_state(vm->state, SV_EV_STOP, &to);
    if (r == 1)
        return 1; /* already stopped */
    if (r < 0)
        return qv_error_set(err, EBUSY, "VM '%s' is %s; try again when that is done", vm->name,
                            sv_vm_state_name(vm->state));
    vmrt *rt = get_rt(c, vm);
    if (!rt)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (rt->pt_busy && !rt->watch && !rt->starting_prep)
        return qv_error_set(err, EBUSY, "VM '%s': its QEMU is gone and its GPUs are being given back; try again "
                            "in a moment", vm->name);
    add_waiter(&rt->stop_waiters, done, userdata);
    if (vm->state == SV_VM_STOPPING) {
        if (o->force && (rt->stage == STAGE_GRACEFUL || rt->stop_waits_status)) {
            log_info("VM %s: stop forced while the guest shuts down", vm->name);
            vm->run.stop_force = true;
            rt->stop_waits_status = false;
            persist(rt);
            stage_quit(rt);
        }
        return 0;
    }
    sv_vm_state from = vm->state;
    uv_timer_stop(&rt->timer);
    vm->state = to;
    vm->run.stop_force = o->force;
    vm->run.stop_timeout_ms = o->timeout_ms;
    persist(rt);
    log_info("VM %s: stopping%s", vm->name, o->force ? " (forced)" : "");
    if (from == SV_VM_STARTING)
        fail_waiters(&rt->start_waiters, ECANCELED, "start of VM '%s' aborted by a stop request", vm->name);
    /* a guest that is only starting would lose an ACPI request: quit it */
    begin_stop_sequence(rt, o->force || from == SV_VM_STARTING);
    sv_crash_point("stop-after-request");
    return 0;
}

/* ---- pause and resume ------------------------------------------------ */

typedef struct pause_op {
    vmrt *rt;
    bool pause;
    sv_vm_done_fn done;
    void *userdata;
} pause_op;

static json_t *pause_result(const sv_vm *vm, const char *result) {
    return json_pack("{s:s, s:s, s:s}", "name", vm->name, "state", sv_vm_state_name(vm->state), "result", result);
}

/* QEMU answered our `stop` or `cont`.  Commands and events come in order on
 * the monitor, so at this point the guest is as this command left it (a
 * later command's answer comes later): the state follows now unless the
 * STOP/RESUME event did it first.  A QEMU that went away meanwhile cancels
 * the command (the pidfd handles the rest). */
static void on_pause_reply(qmp_conn *q, int status, json_t *result, const qmp_error *e, void *userdata) {
    (void)q;
    (void)result;
    pause_op *op = userdata;
    vmrt *rt = op->rt;
    const char *cmd = op->pause ? "stop" : "cont";
    rt->pause_ops--;
    if (!rt->vm) {
        qv_error err = {0};
        qv_error_set(&err, ECANCELED, "the VM is gone");
        op->done(-err.code, NULL, &err, op->userdata);
    } else if (status < 0) {
        qv_error err = {0};
        if (status == QMP_ECANCELED || status == QMP_EDISCONNECTED)
            qv_error_set(&err, ECANCELED, "VM '%s': QEMU's monitor went away before it answered %s", rt->vm->name,
                         cmd);
        else
            qv_error_set(&err, EIO, "VM '%s': QEMU did not %s the guest: %s", rt->vm->name,
                         op->pause ? "pause" : "resume", e ? e->desc : strerror(-status));
        log_warning("%s", err.msg);
        op->done(-err.code, NULL, &err, op->userdata);
    } else {
        note_paused(rt, op->pause);
        if (rt->persist_due)
            persist(rt); /* what a request answers is on disk */
        json_t *res = pause_result(rt->vm, op->pause ? "paused" : "resumed");
        op->done(0, res, NULL, op->userdata);
        json_decref(res);
    }
    free(op);
}

/* vm pause / vm resume.  A request is judged against the state the
 * commands already sent lead to, so that `pause` followed at once by
 * `resume` resumes (QEMU runs them in order) instead of finding the VM
 * still running and doing nothing. */
static int pause_resume(sv_vmctl *c, sv_vm *vm, bool pause, sv_vm_done_fn done, void *userdata, qv_error *err) {
    const char *verb = pause ? "pause" : "resume";
    if (c->shutting_down)
        return qv_error_set(err, ECANCELED, "the daemon is stopping");
    vmrt *rt = vm->rt;
    sv_vm_state from = vm->state;
    if (rt && rt->pause_ops && (from == SV_VM_RUNNING || from == SV_VM_PAUSED))
        from = rt->pause_target ? SV_VM_PAUSED : SV_VM_RUNNING;
    sv_vm_state to;
    int r = sv_vm_next_state(from, pause ? SV_EV_PAUSE : SV_EV_RESUME, &to);
    if (r == 1)
        return 1;
    if (r == -EHOSTDOWN)
        return qv_error_set(err, EHOSTDOWN, "VM '%s' is %s: there is no QEMU to %s (qvisor vm start %s)", vm->name,
                            sv_vm_state_name(vm->state), verb, vm->name);
    if (r < 0)
        return qv_error_set(err, EBUSY, "VM '%s' is %s; try again when that is done", vm->name,
                            sv_vm_state_name(vm->state));
    if (!rt || !rt->qmp)
        return qv_error_set(err, EIO, "VM '%s': no connection to QEMU's monitor; cannot %s it", vm->name, verb);
    pause_op *op = calloc(1, sizeof *op);
    if (!op)
        return qv_error_set(err, ENOMEM, "out of memory");
    op->rt = rt;
    op->pause = pause;
    op->done = done;
    op->userdata = userdata;
    r = pause ? qmp_stop(rt->qmp, QMP_CMD_TIMEOUT_MS, on_pause_reply, op)
              : qmp_cont(rt->qmp, QMP_CMD_TIMEOUT_MS, on_pause_reply, op);
    if (r < 0) {
        free(op);
        return qv_error_set(err, EIO, "VM '%s': cannot send %s to QEMU's monitor: %s", vm->name,
                            pause ? "stop" : "cont", strerror(-r));
    }
    rt->pause_ops++;
    rt->pause_target = pause;
    log_info("VM %s: %s requested", vm->name, pause ? "pause" : "resume");
    return 0;
}

int sv_vm_pause(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return pause_resume(c, vm, true, done, userdata, err);
}

int sv_vm_resume(sv_vmctl *c, sv_vm *vm, sv_vm_done_fn done, void *userdata, qv_error *err) {
    return pause_resume(c, vm, false, done, userdata, err);
}

/* ---- serial console ------------------------------------------------------- */

/* Ends the attached console (end: stolen), or cancels a reservation whose
 * client connection has not come yet. */
static void console_end(vmrt *rt, json_t *end) {
    rt->console_held = false;
    if (rt->console)
        sv_relay_end(rt->console, end);
    else
        json_decref(end);
}

static void on_console_over(void *userdata) {
    vmrt *rt = userdata;
    rt->console = NULL;
    rt->console_held = false;
    if (rt->vm)
        log_info("VM %s: console detached (uid %u)", rt->vm->name, (unsigned)rt->console_uid);
    rt_unref(rt);
}

int sv_vm_console_open(sv_vmctl *c, sv_vm *vm, uid_t uid, pid_t pid, int *ret_fd, qv_error *err) {
    vmrt *rt = vm->rt;
    if (!rt || !rt->watch || !sv_vm_state_has_qemu(vm->state))
        return qv_error_set(err, EHOSTDOWN, "VM '%s' is %s: it has no console (qvisor vm start %s)", vm->name,
                            sv_vm_state_name(vm->state), vm->name);
    if (rt->console_held) {
        char since[32];
        struct tm tm;
        strftime(since, sizeof since, "%H:%M:%S", localtime_r(&rt->console_since, &tm));
        return qv_error_set(err, EBUSY,
                            "the console of VM '%s' is in use by uid %u (pid %d) since %s; one client at a time "
                            "(it detaches with Ctrl-])",
                            vm->name, (unsigned)rt->console_uid, (int)rt->console_pid, since);
    }
    char path[PATH_MAX];
    if (sv_vm_run_path(cfg(c), vm->name, "console.sock", path, sizeof path) < 0)
        return qv_error_set(err, ENAMETOOLONG, "run directory path too long");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return qv_error_set(err, ENAMETOOLONG, "%s is too long for a socket path", path);
    strcpy(sa.sun_path, path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return qv_error_set(err, errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        if (e == ENOENT)
            return qv_error_set(err, EOPNOTSUPP,
                                "VM '%s' has no console socket: its QEMU was started by a qvisor without "
                                "consoles (restart the VM to get one; serial.log: qvisor vm log %s)",
                                vm->name, vm->name);
        return qv_error_set(err, e == EAGAIN ? EBUSY : e, "cannot connect to %s: %s", path, strerror(e));
    }
    rt->console_held = true;
    rt->console_uid = uid;
    rt->console_pid = pid;
    rt->console_since = time(NULL);
    *ret_fd = TAKE_FD(fd);
    return 0;
}

void sv_vm_console_attach(sv_vmctl *c, const char *name, int client_fd, int qemu_fd) {
    sv_vm *vm = c->shutting_down ? NULL : sv_registry_find(c->registry, name);
    vmrt *rt = vm ? vm->rt : NULL;
    if (client_fd < 0) { /* the client went away before the handover */
        close(qemu_fd);
        if (rt && !rt->console)
            rt->console_held = false;
        return;
    }
    sv_relay_limits lim = SV_RELAY_LIMITS_DEFAULT;
    sv_relay *relay;
    if (!rt || !rt->console_held || rt->console) {
        /* it stopped between the answer and now: say so, and that is all */
        if (sv_relay_new(c->loop, client_fd, qemu_fd, &lim, NULL, NULL, &relay) == 0)
            sv_relay_end(relay, json_pack("{s:s}", "reason", "stopped"));
        return;
    }
    rt->refs++;
    if (sv_relay_new(c->loop, client_fd, qemu_fd, &lim, on_console_over, rt, &relay) < 0) {
        rt->console_held = false;
        rt_unref(rt);
        return;
    }
    rt->console = relay;
    log_info("VM %s: console attached by uid %u (pid %d)", name, (unsigned)rt->console_uid, (int)rt->console_pid);
}

/* ---- QEMU is gone ------------------------------------------------------- */

static void gone_finish(vmrt *rt, pid_t pid, const char *how_exited);

static void gone_released(vmrt *rt) {
    char how[256];
    snprintf(how, sizeof how, "%s", rt->gone_how ? rt->gone_how : "exited");
    free(rt->gone_how);
    rt->gone_how = NULL;
    gone_finish(rt, rt->gone_pid, how);
}

/* The one place a QEMU's end is handled: its watch, channels, timers and
 * run files go at once; its devices go back to the host; then the state. */
static void handle_gone(vmrt *rt, const char *how_exited) {
    sv_vm *vm = rt->vm;
    pid_t pid = rt->watch ? rt->watch->pid : vm->run.pid;
    watch_close(rt);
    sv_serial_cap_stop(rt->serial_cap);
    rt->serial_cap = NULL;
    console_end(rt, json_pack("{s:s, s:s}", "reason", "stopped", "how", how_exited));
    detach_channels(rt);
    uv_timer_stop(&rt->timer);
    uv_timer_stop(&rt->acpi_timer);
    remove_run_files(rt);
    sv_net_fds_close(&rt->net);
    sv_net_remove_taps(vm->spec); /* normally gone with QEMU's fds already */
    free(vm->ip);
    vm->ip = NULL;
    json_decref(vm->addresses);
    vm->addresses = NULL;
    vm->agent = NULL;
    if (has_gpus(vm)) {
        free(rt->gone_how);
        rt->gone_how = strdup(how_exited);
        rt->gone_pid = pid;
        release_devices(rt, gone_released);
        return;
    }
    gone_finish(rt, pid, how_exited);
}

static void gone_finish(vmrt *rt, pid_t pid, const char *how_exited) {
    sv_vm *vm = rt->vm;
    int64_t ran = vm->run.started_at ? (int64_t)time(NULL) - vm->run.started_at : 0;

    char why[sizeof(((qv_error *)0)->msg)];
    bool restart = false;
    sv_vm_state before = vm->state;
    if (before == SV_VM_STARTING) {
        char tail[1024];
        log_tail(rt, rt->log_offset, tail, sizeof tail);
        /* A monitor that closed because QEMU exited by itself is not the
         * cause: QEMU's exit and its words are. */
        bool own_exit = rt->monitor_failed && strncmp(how_exited, "exited", 6) == 0;
        if (rt->stop_reason && !own_exit)
            snprintf(why, sizeof why, "%s (QEMU %s)%s%s", rt->stop_reason, how_exited,
                     tail[0] ? "; QEMU said: " : "", tail);
        else
            snprintf(why, sizeof why, "QEMU %s%s%s", how_exited, tail[0] ? ": " : "", tail);
        free(rt->stop_reason); /* used up: it was this start's */
        rt->stop_reason = NULL;
        rt->monitor_failed = false;
        log_info("VM %s: QEMU pid %d %s during start; cleaned up", vm->name, (int)pid, how_exited);
        int code = rt->fail_code && !own_exit ? rt->fail_code : EIO;
        rt->fail_code = 0;
        start_abandon_now(rt, code, why);
        return;
    }
    if (before == SV_VM_STOPPING) {
        bool clean = rt->stage == STAGE_GRACEFUL || rt->stage == STAGE_NONE;
        const char *how = rt->stage == STAGE_NONE ? "the guest powered off" : rt->how ? rt->how : "?";
        double secs = (double)(qv_now_ms() - rt->stop_begin_ms) / 1000.0;
        if (rt->stop_reason)
            snprintf(why, sizeof why, "%s", rt->stop_reason);
        else
            snprintf(why, sizeof why, "stopped on request (%s: %s)", clean ? "clean" : "forced", how);
        sv_vm_set_last_exit(vm, why);
        set_state(rt, SV_EV_EXITED);
        vm->run = (sv_vm_run){.numa_node = -1};
        qv_error perr = {0};
        int saved = persist_err(rt, &perr);
        log_info("VM %s: QEMU pid %d %s; %s after %.1f s; cleaned up", vm->name, (int)pid, how_exited,
                 clean ? "clean stop" : "forced stop", secs);
        if (saved < 0) {
            /* a stop is never undone: it happened, and the answer says that
             * the disk does not know yet (the write is retried) */
            fail_waiters(&rt->stop_waiters, perr.code,
                         "VM '%s' stopped (%s: %s), but its state could not be saved: %s; the daemon keeps "
                         "trying", vm->name, clean ? "clean" : "forced", how, perr.msg);
        } else {
            json_t *res =
                json_pack("{s:s, s:s, s:f}", "result", clean ? "clean" : "forced", "how", how, "seconds", secs);
            complete(&rt->stop_waiters, 0, res, NULL);
            json_decref(res);
        }
        free(rt->stop_reason);
        rt->stop_reason = NULL;
        rt->stage = STAGE_NONE;
        return;
    }
    /* running or paused: nobody asked for this */
    sv_vm_event ev;
    const sv_vmspec *s = vm->spec;
    if (rt->panicked) {
        ev = SV_EV_CRASHED;
        snprintf(why, sizeof why, "the guest kernel panicked (QEMU %s)", how_exited);
    } else if (rt->shutdown_seen && rt->shutdown_guest) {
        ev = SV_EV_EXITED;
        snprintf(why, sizeof why, "the guest powered off (%s)", rt->shutdown_reason);
    } else if (rt->shutdown_seen && strcmp(how_exited, "exited with status 0") == 0) {
        ev = SV_EV_EXITED;
        snprintf(why, sizeof why, "QEMU was told to quit by something other than qvisor (%s)",
                 rt->shutdown_reason[0] ? rt->shutdown_reason : "no reason given");
    } else {
        char tail[512];
        log_tail(rt, rt->log_offset, tail, sizeof tail);
        ev = SV_EV_CRASHED;
        if (rt->our_child)
            snprintf(why, sizeof why, "QEMU %s%s%s", how_exited, tail[0] ? ": " : "", tail);
        else
            snprintf(why, sizeof why, "QEMU %s unexpectedly", how_exited);
    }
    restart = s->restart == SV_RESTART_ALWAYS || (s->restart == SV_RESTART_ON_FAILURE && ev == SV_EV_CRASHED);
    if (ran >= RESTART_RESET_S)
        vm->run.restarts = 0;
    uint64_t restarts = vm->run.restarts;
    set_state(rt, ev);
    sv_vm_set_last_exit(vm, why);
    vm->run = (sv_vm_run){.restarts = restarts, .numa_node = -1};
    persist(rt);
    if (ev == SV_EV_CRASHED)
        log_warning("VM %s: crashed: %s; cleaned up", vm->name, why);
    else
        log_info("VM %s: stopped: %s; cleaned up", vm->name, why);
    if (restart)
        schedule_restart(rt);
}

/* ---- restart policy -------------------------------------------------- */

static void policy_start_done(int status, json_t *result, const qv_error *err, void *userdata) {
    (void)status;
    (void)result;
    (void)err;
    (void)userdata; /* logged by the engine itself */
}

static void on_restart_timer(uv_timer_t *t) {
    vmrt *rt = t->data;
    if (!rt->vm || rt->c->shutting_down)
        return;
    sv_vm *vm = rt->vm;
    if (vm->state != SV_VM_CRASHED && vm->state != SV_VM_STOPPED)
        return; /* someone started it meanwhile */
    qv_error err = {0};
    if (begin_start(rt->c, vm, true, policy_start_done, NULL, &err) < 0) {
        /* refused before it began (capacity, a CPU gone, …): say so, and try
         * again later within the restart limit, as after a failed start */
        log_error("VM %s: automatic restart failed: %s", vm->name, err.msg);
        char why[sizeof err.msg + 32];
        snprintf(why, sizeof why, "automatic restart refused: %s", err.msg);
        sv_vm_set_last_exit(vm, why);
        persist(rt);
        schedule_restart(rt);
    }
}

static void schedule_restart(vmrt *rt) {
    sv_vm *vm = rt->vm;
    if (vm->run.restarts >= vm->spec->restart_limit) {
        log_error("VM %s: restart policy %s gives up after %llu restarts in a row", vm->name,
                  sv_restart_to_string(vm->spec->restart), (unsigned long long)vm->run.restarts);
        char why[sizeof(((qv_error *)0)->msg)];
        snprintf(why, sizeof why, "%s; restart limit (%llu) reached", vm->last_exit ? vm->last_exit : "stopped",
                 (unsigned long long)vm->spec->restart_limit);
        sv_vm_set_last_exit(vm, why);
        persist(rt);
        return;
    }
    uint64_t delay = sv_restart_backoff_ms(vm->run.restarts);
    vm->run.restarts++;
    persist(rt);
    log_info("VM %s: restart policy %s: starting again in %.0f s (restart %llu of at most %llu)", vm->name,
             sv_restart_to_string(vm->spec->restart), (double)delay / 1000.0, (unsigned long long)vm->run.restarts,
             (unsigned long long)vm->spec->restart_limit);
    uv_timer_start(&rt->timer, on_restart_timer, delay, 0);
}

/* ---- restart (stop + start) ------------------------------------------ */

typedef struct restart_job {
    sv_vmctl *c;
    sv_vm *vm;
    json_t *stop_result;
    sv_vm_done_fn done;
    void *userdata;
} restart_job;

static void restart_started(int status, json_t *result, const qv_error *err, void *userdata) {
    restart_job *job = userdata;
    if (status < 0) {
        job->done(status, NULL, err, job->userdata);
    } else {
        json_t *res = json_pack("{s:O, s:O}", "stop", job->stop_result, "start", result);
        job->done(0, res, NULL, job->userdata);
        json_decref(res);
    }
    json_decref(job->stop_result);
    free(job);
}

static void restart_stopped(int status, json_t *result, const qv_error *err, void *userdata) {
    restart_job *job = userdata;
    if (status < 0) {
        job->done(status, NULL, err, job->userdata);
        free(job);
        return;
    }
    job->stop_result = result ? json_incref(result) : json_pack("{s:s}", "result", "already-stopped");
    qv_error e = {0};
    if (begin_start(job->c, job->vm, false, restart_started, job, &e) < 0) {
        job->done(-e.code, NULL, &e, job->userdata);
        json_decref(job->stop_result);
        free(job);
    }
}

int sv_vm_restart(sv_vmctl *c, sv_vm *vm, const sv_stop_options *o, sv_vm_done_fn done, void *userdata,
                  qv_error *err) {
    restart_job *job = calloc(1, sizeof *job);
    if (!job)
        return qv_error_set(err, ENOMEM, "out of memory");
    job->c = c;
    job->vm = vm;
    job->done = done;
    job->userdata = userdata;
    int r = sv_vm_stop(c, vm, o, restart_stopped, job, err);
    if (r < 0) {
        free(job);
        return r;
    }
    if (r == 1) {
        /* not running: a plain start (the reply still names the stop step) */
        job->stop_result = json_pack("{s:s}", "result", "already-stopped");
        r = begin_start(c, vm, false, restart_started, job, err);
        if (r < 0) {
            json_decref(job->stop_result);
            free(job);
            return r;
        }
    }
    return 0;
}

/* ---- adoption after a daemon restart ---------------------------------- */

/* The pid in RUN_DIR/vm/NAME/qemu.pid, if that process is our QEMU for the
 * VM (command line; no start time is known for it). */
static pid_t pid_from_pidfile(vmrt *rt, uint64_t *ret_ticks) {
    char path[PATH_MAX];
    run_path(rt, "qemu.pid", path, sizeof path);
    _cleanup_free_ char *text = NULL;
    if (qv_read_file(path, 64, &text, NULL) < 0)
        return 0;
    uint64_t pid;
    text[strcspn(text, "\n")] = '\0';
    if (qv_parse_uint(text, 2, INT32_MAX, &pid) < 0)
        return 0;
    uint64_t ticks;
    if (sv_proc_start_time((pid_t)pid, &ticks) < 0 || !sv_proc_is_our_qemu((pid_t)pid, ticks, rt->vm->name, path))
        return 0;
    *ret_ticks = ticks;
    return (pid_t)pid;
}

/* query-status of a re-adopted QEMU.  state.json says running or paused
 * as of the last STOP/RESUME it saw; a daemon that died between QEMU's
 * answer and that write left it wrong, and QEMU sends no events for the
 * past.  A stop waiting for this goes on now: quit for a paused guest, and
 * quit too when QEMU cannot say (a monitor that cannot answer this cannot
 * deliver ACPI either). */
static void on_adopt_status(qmp_conn *q, int status, const qmp_run_status *st, const qmp_error *e,
                            void *userdata) {
    (void)q;
    vmrt *rt = userdata;
    bool stop_waits = rt->stop_waits_status;
    rt->status_pending = rt->stop_waits_status = false;
    if (status == QMP_ECANCELED || !rt->vm)
        return;
    sv_vm *vm = rt->vm;
    if (status == 0) {
        /* every run state but running and a guest's own suspend (S3) is a
         * vm_stop, announced by a STOP event when it happens live */
        bool paused = !st->running && strcmp(st->status ? st->status : "", "suspended") != 0;
        if ((vm->state == SV_VM_RUNNING && paused) || (vm->state == SV_VM_PAUSED && !paused))
            log_info("VM %s: QEMU reports the guest %s (%s), its saved state said %s", vm->name,
                     paused ? "paused" : "running", st->status ? st->status : "?", sv_vm_state_name(vm->state));
        note_paused(rt, paused);
    } else {
        log_warning("VM %s: query-status after re-adoption failed: %s", vm->name,
                    e ? e->desc : strerror(-status));
    }
    if (stop_waits && vm->state == SV_VM_STOPPING && rt->stage == STAGE_NONE)
        stop_first_step(rt, vm->run.stop_force || status < 0);
}

/* Asks a re-adopted QEMU whether its guest is paused (on_adopt_status). */
static void adopt_query_status(vmrt *rt) {
    if (rt->qmp && qmp_query_status(rt->qmp, QMP_CMD_TIMEOUT_MS, on_adopt_status, rt) == 0)
        rt->status_pending = true;
}

static void adopt(sv_vmctl *c, sv_vm *vm) {
    vmrt *rt = get_rt(c, vm);
    if (!rt)
        return;
    char pidfile[PATH_MAX];
    run_path(rt, "qemu.pid", pidfile, sizeof pidfile);
    pid_t pid = vm->run.pid;
    bool ours = pid > 0 && sv_proc_is_our_qemu(pid, vm->run.start_ticks, vm->name, pidfile);
    if (!ours && pid <= 0 && vm->state == SV_VM_STARTING) {
        /* the daemon died between saving "starting" and saving the pid */
        uint64_t ticks = 0;
        pid = pid_from_pidfile(rt, &ticks);
        if (pid > 0) {
            ours = true;
            vm->run.pid = pid;
            vm->run.start_ticks = ticks;
        }
    }
    int pidfd = ours ? sv_pidfd_open(pid) : -ESRCH;
    if (pidfd < 0) {
        if (pid > 0 && !ours && sv_proc_alive(pid))
            log_warning("VM %s: pid %d is now another process (command line or start time differ); not touched",
                        vm->name, (int)pid);
        rt->our_child = false;
        rt->log_offset = 0;
        sv_vm_state was = vm->state;
        if (was == SV_VM_STARTING || was == SV_VM_STOPPING) {
            vm->state = SV_VM_STOPPED;
            sv_vm_set_last_exit(vm, was == SV_VM_STARTING ? "start interrupted by a daemon restart; QEMU never ran"
                                                          : "stopped while the daemon was not running");
            vm->run = (sv_vm_run){.numa_node = -1};
            remove_run_files(rt);
            persist(rt);
            log_info("VM %s: %s", vm->name, vm->last_exit);
            return;
        }
        /* running or paused before: it ended while nobody watched */
        rt->watch = NULL;
        log_warning("VM %s: QEMU pid %d is gone; it ended while the daemon was not running", vm->name, (int)pid);
        handle_gone(rt, "exited while the daemon was not running");
        return;
    }
    if (watch_start(rt, pid, pidfd) < 0) {
        close(pidfd);
        log_error("VM %s: cannot watch QEMU pid %d; leaving it alone", vm->name, (int)pid);
        return;
    }
    rt->our_child = false;
    rt->cont_sent = true;
    serial_cap_start(rt);
    if (qmp_attach(rt) < 0)
        log_warning("VM %s: cannot reconnect to the monitor; a stop will use signals", vm->name);
    else if (vm->state != SV_VM_STARTING)
        adopt_query_status(rt);
    switch (vm->state) {
    case SV_VM_STARTING:
        log_info("VM %s: QEMU pid %d was half-started by the previous daemon; stopping it", vm->name, (int)pid);
        rt->cont_sent = false;
        rt->stop_reason = strdup("start interrupted by a daemon restart; QEMU was stopped");
        vm->state = SV_VM_STOPPING;
        vm->run.stop_force = true;
        persist(rt);
        begin_stop_sequence(rt, true);
        break;
    case SV_VM_STOPPING:
        log_info("VM %s: finishing the stop the previous daemon began (QEMU pid %d)", vm->name, (int)pid);
        begin_stop_sequence(rt, vm->run.stop_force);
        break;
    default:
        log_info("VM %s: re-adopted QEMU pid %d (%s)", vm->name, (int)pid, sv_vm_state_name(vm->state));
        rt->paused = vm->state == SV_VM_PAUSED;
        agent_attach(rt);
        break;
    }
}

void sv_vmctl_adopt_all(sv_vmctl *c) {
    for (sv_vm *vm = sv_registry_first(c->registry); vm; vm = vm->next)
        if (sv_vm_state_has_qemu(vm->state))
            adopt(c, vm);
        else
            sv_net_remove_taps(vm->spec); /* a TAP a crash left behind */
    /* automatic restarts of VMs that died while the daemon was down
     * were scheduled by handle_gone; devices taken for VMs that do not
     * run (a crash between bind and QEMU, or a VM removed) go back */
    sv_vmctl_release_orphans(c);
}

/* ---- agent refresh for `vm list` ------------------------------------ */

typedef struct refresh {
    unsigned pending;
    void (*done)(void *);
    void *userdata;
} refresh;

typedef struct refresh_item {
    refresh *r;
    vmrt *rt;
} refresh_item;

static void refresh_put(refresh *r) {
    if (--r->pending == 0) {
        r->done(r->userdata);
        free(r);
    }
}

static void on_interfaces(qga_conn *g, int status, const qga_interface *ifs, size_t n, const qmp_error *e,
                          void *userdata) {
    (void)g;
    (void)e;
    refresh_item *it = userdata;
    vmrt *rt = it->rt;
    if (rt->vm && status != QMP_ECANCELED) {
        sv_vm *vm = rt->vm;
        rt->agent_checked_ms = qv_now_ms();
        if (status == 0) {
            vm->agent = "ok";
            json_t *addrs = json_array();
            const char *first4 = NULL, *first6 = NULL;
            for (size_t i = 0; i < n; i++)
                for (size_t k = 0; k < ifs[i].n_addrs; k++) {
                    const qga_ip_address *a = &ifs[i].addrs[k];
                    if (strcmp(ifs[i].name, "lo") == 0)
                        continue;
                    json_array_append_new(addrs, json_pack("{s:s, s:s, s:i}", "interface", ifs[i].name, "address",
                                                           a->address, "prefix", (int)a->prefix));
                    if (a->family == AF_INET && !first4)
                        first4 = a->address;
                    if (a->family == AF_INET6 && !first6 && strncmp(a->address, "fe80", 4) != 0)
                        first6 = a->address;
                }
            json_decref(vm->addresses);
            vm->addresses = addrs;
            free(vm->ip);
            vm->ip = first4 ? strdup(first4) : first6 ? strdup(first6) : NULL;
        } else {
            vm->agent = status == QMP_EBADREPLY ? "bad reply" : "no answer";
            if (status == QMP_EBADREPLY) { /* refused (qga.h says why): nothing of it is kept */
                json_decref(vm->addresses);
                vm->addresses = NULL;
                free(vm->ip);
                vm->ip = NULL;
            }
        }
    }
    rt->agent_busy = false;
    refresh_put(it->r);
    free(it);
}

void sv_vmctl_refresh_agents(sv_vmctl *c, uint64_t timeout_ms, void (*done)(void *), void *userdata) {
    refresh *r = calloc(1, sizeof *r);
    if (!r) {
        done(userdata);
        return;
    }
    r->pending = 1; /* ours, dropped at the end */
    r->done = done;
    r->userdata = userdata;
    uint64_t now = qv_now_ms();
    for (vmrt *rt = c->rts; rt; rt = rt->next) {
        if (!rt->vm || !rt->qga || rt->agent_busy || rt->vm->state != SV_VM_RUNNING)
            continue;
        if (rt->agent_checked_ms && now - rt->agent_checked_ms < AGENT_FRESH_MS)
            continue;
        refresh_item *it = calloc(1, sizeof *it);
        if (!it)
            break;
        it->r = r;
        it->rt = rt;
        if (qga_network_get_interfaces(rt->qga, timeout_ms, on_interfaces, it) < 0) {
            free(it);
            continue;
        }
        rt->agent_busy = true;
        r->pending++;
    }
    refresh_put(r);
}

json_t *sv_vm_runtime_json(sv_vmctl *c, const sv_vm *vm) {
    char p[PATH_MAX];
    json_t *j = json_object();
    const vmrt *rt = vm->rt;
    bool up = rt && rt->watch;
    if (sv_vm_run_path(cfg(c), vm->name, "qmp.sock", p, sizeof p) == 0)
        json_object_set_new(j, "qmp_socket", json_string(p));
    if (vm->spec->agent && sv_vm_run_path(cfg(c), vm->name, "qga.sock", p, sizeof p) == 0)
        json_object_set_new(j, "agent_socket", json_string(p));
    if (sv_vm_run_path(cfg(c), vm->name, "qemu.pid", p, sizeof p) == 0)
        json_object_set_new(j, "pidfile", json_string(p));
    json_object_set_new(j, "monitor", json_string(!up ? "-" : rt->qmp && qmp_is_ready(rt->qmp) ? "connected"
                                                                                             : "not connected"));
    if (up && rt->stage != STAGE_NONE)
        json_object_set_new(j, "stop_step", json_string(rt->how ? rt->how : "?"));
    if (c->caps_state == CAPS_DONE && c->caps_status == 0)
        json_object_set_new(j, "qemu_version", json_string(c->caps.version));
    return j;
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

void sv_vm_forget(sv_vmctl *c, sv_vm *vm) {
    (void)c;
    vmrt *rt = vm->rt;
    if (!rt)
        return;
    console_end(rt, json_pack("{s:s}", "reason", "removed"));
    detach_channels(rt);
    watch_close(rt);
    release_rt(rt);
}

void sv_vmctl_shutdown(sv_vmctl *c) {
    if (!c)
        return;
    c->shutting_down = true;
    while (c->caps_waiters) {
        caps_waiter *w = c->caps_waiters;
        c->caps_waiters = w->next;
        caps_deliver(c, w->done, w->userdata);
        free(w);
    }
    while (c->rts) {
        vmrt *rt = c->rts;
        fail_waiters(&rt->start_waiters, ECANCELED,
                     "the daemon is stopping; the start is finished or rolled back when it runs again");
        fail_waiters(&rt->stop_waiters, ECANCELED,
                     "the daemon is stopping; the stop is finished when it runs again");
        console_end(rt, json_pack("{s:s, s:s}", "reason", "daemon", "message",
                                  "the qvisor daemon is stopping; the VM keeps running"));
        detach_channels(rt);
        watch_close(rt);
        if (rt->vm && rt->persist_due)
            persist(rt); /* a coalesced write still pending */
        release_rt(rt);
    }
    ctl_unref(c);
}

/* ---- devices nobody runs with ------------------------------------------- */

typedef struct orphan_sweep {
    sv_vmctl *c;
    json_t *items;   /* [{address, vm, action, detail}] */
    unsigned pending;
    void (*done)(json_t *items, void *userdata);
    void *userdata;
} orphan_sweep;

typedef struct orphan_job {
    orphan_sweep *s;
    vmrt *rt;        /* the VM's runtime when the VM exists */
    char vm[64];
} orphan_job;

static void orphan_sweep_put(orphan_sweep *s) {
    if (--s->pending > 0)
        return;
    if (s->done)
        s->done(s->items, s->userdata);
    json_decref(s->items);
    ctl_unref(s->c);
    free(s);
}

static void orphan_given_back(int status, const qv_error *err, const vfio_plan *plan, void *userdata) {
    (void)plan;
    orphan_job *j = userdata;
    orphan_sweep *s = j->s;
    char dir[PATH_MAX];
    sv_pt_records_dir(cfg(s->c), dir, sizeof dir);
    size_t i;
    json_t *it;
    json_array_foreach(s->items, i, it) {
        const char *vm = json_string_value(json_object_get(it, "vm"));
        const char *action = json_string_value(json_object_get(it, "action"));
        if (!vm || !action || strcmp(vm, j->vm) != 0 || strcmp(action, "give back") != 0)
            continue;
        vfio_record rec;
        const char *bdf = json_string_value(json_object_get(it, "address"));
        if (vfio_record_load(dir, bdf, &rec) == 0) {
            json_object_set_new(it, "action", json_string("failed"));
            json_object_set_new(it, "detail", json_string(rec.reason[0] ? rec.reason : (status < 0 ? err->msg : "?")));
            log_error("cleanup: %s (held for VM %s): giving it back failed: %s", bdf, j->vm,
                      rec.reason[0] ? rec.reason : status < 0 ? err->msg : "?");
        } else {
            json_object_set_new(it, "action", json_string("given back"));
            log_info("cleanup: %s (held for VM %s, which is not running) given back to the host", bdf, j->vm);
        }
    }
    if (j->rt) {
        j->rt->pt_busy = false;
        rt_unref(j->rt);
    }
    free(j);
    orphan_sweep_put(s);
}

static bool vm_runs(const sv_vm *vm) {
    return vm && (sv_vm_state_has_qemu(vm->state) || vm->state == SV_VM_CREATING);
}

void sv_vmctl_release_devices(sv_vmctl *c, bool dry_run, void (*done)(json_t *items, void *userdata),
                              void *userdata) {
    const sv_config *conf = cfg(c);
    char dir[PATH_MAX];
    sv_pt_records_dir(conf, dir, sizeof dir);
    orphan_sweep *s = calloc(1, sizeof *s);
    if (!s) {
        if (done)
            done(NULL, userdata);
        return;
    }
    s->c = c;
    c->refs++;
    s->items = json_array();
    s->pending = 1; /* ours, dropped at the end */
    s->done = done;
    s->userdata = userdata;
    _cleanup_free_ vfio_record *recs = NULL;
    size_t n = 0;
    vfio_record_list(dir, &recs, &n);
    /* devices on vfio-pci that nobody recorded: not ours to touch */
    _cleanup_closedir_ DIR *d = NULL;
    int dfd = qv_sysroot_open("sys/bus/pci/drivers/" VFIO_DRIVER, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0 && !(d = fdopendir(dfd)))
        close(dfd);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char bdf[VFIO_BDF_MAX];
        if (vfio_bdf_normalize(de->d_name, bdf) < 0 || strcmp(bdf, de->d_name) != 0)
            continue;
        bool recorded = false;
        for (size_t i = 0; i < n; i++)
            recorded |= strcmp(recs[i].bdf, bdf) == 0;
        if (!recorded)
            json_array_append_new(s->items,
                                  json_pack("{s:s, s:n, s:s, s:s}", "address", bdf, "vm", "action", "left alone",
                                            "detail", "on vfio-pci, but qvisor has no record of binding it: not ours"));
    }
    /* recorded devices whose VM does not run (or no longer exists) */
    _cleanup_free_ bool *queued_for = calloc(n ? n : 1, sizeof *queued_for);
    for (size_t i = 0; queued_for && i < n; i++) {
        sv_vm *vm = sv_registry_find(c->registry, recs[i].vm);
        vmrt *rt = vm ? vm->rt : NULL;
        if (vm_runs(vm) || (rt && rt->pt_busy))
            continue;
        if (vm && recs[i].keep && recs[i].state == VFIO_REC_BOUND)
            continue; /* kept on vfio-pci by choice while its VM exists */
        const char *why = !vm ? "its VM no longer exists" : "its VM is not running";
        json_array_append_new(s->items, json_pack("{s:s, s:s, s:s, s:s}", "address", recs[i].bdf, "vm", recs[i].vm,
                                                  "action", dry_run ? "would give back" : "give back", "detail",
                                                  recs[i].state == VFIO_REC_STUCK ? recs[i].reason : why));
        if (dry_run)
            continue;
        if (recs[i].state == VFIO_REC_STUCK) {
            /* a person asked for a cleanup: try again */
            recs[i].state = VFIO_REC_BOUND;
            vfio_record_save(dir, &recs[i]);
        }
        bool queued = false; /* one give-back per VM covers all its records */
        for (size_t k = 0; k < i; k++)
            queued |= queued_for[k] && strcmp(recs[k].vm, recs[i].vm) == 0;
        if (queued)
            continue;
        queued_for[i] = true;
        orphan_job *j = calloc(1, sizeof *j);
        if (!j)
            continue;
        j->s = s;
        snprintf(j->vm, sizeof j->vm, "%s", recs[i].vm);
        if (rt) {
            rt->pt_busy = true;
            rt->refs++;
            j->rt = rt;
        }
        qv_error err = {0};
        s->pending++;
        if (sv_pt_give_back(c->loop, conf, recs[i].vm, !vm, orphan_given_back, j, &err) < 0) {
            log_error("cleanup: cannot give back the devices of %s: %s", recs[i].vm, err.msg);
            orphan_given_back(-err.code, &err, NULL, j);
        }
    }
    orphan_sweep_put(s);
}

void sv_vmctl_release_orphans(sv_vmctl *c) {
    sv_vmctl_release_devices(c, false, NULL, NULL);
}
