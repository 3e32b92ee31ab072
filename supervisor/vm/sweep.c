/* qvisor cleanup (see sweep.h). */
#include "supervisor/vm/sweep.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "sysroot.h"
#include "util.h"
#include "netdev/link.h"
#include "netdev/nic.h"
#include "supervisor/vm/proc.h"
#include "supervisor/vm/registry.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const sv_sweep_vm *find_vm(const sv_sweep_vm *vms, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(vms[i].name, name) == 0)
            return &vms[i];
    return NULL;
}

static void add(json_t *actions, const char *what, const char *path, pid_t pid, const char *action) {
    json_t *a = json_pack("{s:s, s:s}", "what", what, "action", action);
    if (path)
        json_object_set_new(a, "path", json_string(path));
    if (pid)
        json_object_set_new(a, "pid", json_integer(pid));
    json_array_append_new(actions, a);
}

/* The VM name a QEMU command line claims: -pidfile RUN_DIR/vm/NAME/qemu.pid
 * (supervisor/vm/layout.h) together with -name guest=NAME,...  Empty when it
 * is not one of ours. */
static void claimed_vm(const sv_config *c, const char *cmd, size_t len, char name[64]) {
    name[0] = '\0';
    const char *pidfile = NULL, *guest = NULL;
    for (size_t off = 0; off < len;) {
        const char *arg = cmd + off;
        size_t alen = strnlen(arg, len - off);
        const char *next = off + alen + 1 < len ? arg + alen + 1 : NULL;
        if (next && strcmp(arg, "-pidfile") == 0)
            pidfile = next;
        if (next && strcmp(arg, "-name") == 0 && strncmp(next, "guest=", 6) == 0)
            guest = next + 6;
        off += alen + 1;
    }
    char cand[64];
    if (!pidfile || !guest || !sv_layout_pidfile_vm(c, pidfile, cand))
        return;
    size_t glen = strcspn(guest, ",");
    if (glen != strlen(cand) || strncmp(guest, cand, glen) != 0)
        return;
    snprintf(name, 64, "%s", cand);
}

/* Waits up to ms for the process behind pidfd to exit. */
static bool wait_exit(int pidfd, uint64_t ms) {
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, (int)ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

static void stop_orphan(const sv_config *c, pid_t pid, const char *name, bool dry_run, json_t *actions) {
    char what[96];
    snprintf(what, sizeof what, "orphan QEMU of '%s'", name);
    if (dry_run) {
        add(actions, what, NULL, pid, "would stop (SIGTERM, then SIGKILL)");
        return;
    }
    int fd = sv_pidfd_open(pid);
    if (fd < 0) {
        add(actions, what, NULL, pid, "gone already");
        return;
    }
    const char *how = "stopped (SIGTERM)";
    sv_pidfd_signal(fd, SIGTERM);
    if (!wait_exit(fd, c->kill_timeout_ms)) {
        sv_pidfd_signal(fd, SIGKILL);
        how = wait_exit(fd, 5000) ? "killed (SIGKILL after SIGTERM)" : "still alive after SIGKILL";
    }
    close(fd);
    log_info("cleanup: %s pid %d: %s", what, (int)pid, how);
    add(actions, what, NULL, pid, how);
}

static void scan_processes(const sv_config *c, const sv_sweep_vm *vms, size_t n, bool dry_run, json_t *actions) {
    char procdir[PATH_MAX];
    snprintf(procdir, sizeof procdir, "%s/proc", qv_sysroot_path());
    _cleanup_closedir_ DIR *d = opendir(procdir);
    for (struct dirent *e; d && (e = readdir(d));) {
        uint64_t pid;
        if (qv_parse_uint(e->d_name, 2, INT32_MAX, &pid) < 0)
            continue;
        char rel[64];
        snprintf(rel, sizeof rel, "proc/%s/cmdline", e->d_name);
        _cleanup_free_ char *cmd = NULL;
        size_t len = 0;
        if (qv_sysroot_read(rel, &cmd, &len) < 0)
            continue;
        char name[64];
        claimed_vm(c, cmd, len, name);
        if (!name[0])
            continue;
        const sv_sweep_vm *vm = find_vm(vms, n, name);
        if (vm && vm->pid == (pid_t)pid)
            continue; /* supervised */
        stop_orphan(c, (pid_t)pid, name, dry_run, actions);
    }
}

/* True when some process has `path` open (an import or create in flight
 * in another program, say): such files are left alone. */
static bool open_by_someone(const char *path) {
    char procdir[PATH_MAX];
    snprintf(procdir, sizeof procdir, "%s/proc", qv_sysroot_path());
    _cleanup_closedir_ DIR *d = opendir(procdir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char fddir[PATH_MAX];
        snprintf(fddir, sizeof fddir, "%s/%s/fd", procdir, e->d_name);
        _cleanup_closedir_ DIR *f = opendir(fddir);
        for (struct dirent *fe; f && (fe = readdir(f));) {
            char link[PATH_MAX + 300], target[PATH_MAX];
            snprintf(link, sizeof link, "%s/%s", fddir, fe->d_name);
            ssize_t k = readlink(link, target, sizeof target - 1);
            if (k <= 0)
                continue;
            target[k] = '\0';
            if (strncmp(target, path, strlen(path)) == 0 &&
                (target[strlen(path)] == '\0' || target[strlen(path)] == '/'))
                return true;
        }
    }
    return false;
}

static void remove_path(const char *what, const char *path, bool dry_run, json_t *actions) {
    if (open_by_someone(path)) {
        add(actions, what, path, 0, "left alone: a process has it open");
        return;
    }
    if (dry_run) {
        add(actions, what, path, 0, "would remove");
        return;
    }
    int r = qv_rm_rf(path);
    log_info("cleanup: removed %s %s%s", what, path, r < 0 ? " (partly)" : "");
    add(actions, what, path, 0, r < 0 ? "partly removed" : "removed");
}

static void scan_temp(const sv_config *c, const sv_sweep_vm *vms, size_t n, bool dry_run, json_t *actions) {
    _cleanup_closedir_ DIR *d = opendir(c->instances_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        /* the entries the daemon's own scan at load takes for leftovers
         * (sv_registry_load), and no others */
        const char *s = e->d_name;
        char name[64];
        bool creating;
        if (!sv_layout_leftover_name(s, name, &creating))
            continue;
        const sv_sweep_vm *vm = find_vm(vms, n, name);
        if (vm && vm->busy)
            continue; /* the daemon is working on it right now */
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", c->instances_dir, s);
        remove_path(creating ? "temp directory of an interrupted create" : "temp directory of an interrupted remove",
                    path, dry_run, actions);
    }
    _cleanup_closedir_ DIR *img = opendir(c->images_dir);
    for (struct dirent *e; img && (e = readdir(img));) {
        if (e->d_name[0] != '.' || !qv_has_suffix(e->d_name, ".partial"))
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", c->images_dir, e->d_name);
        remove_path("partial image import", path, dry_run, actions);
    }
}

static void scan_run_dirs(const sv_config *c, const sv_sweep_vm *vms, size_t n, bool dry_run, json_t *actions) {
    char dir[PATH_MAX];
    if (sv_layout_run_root(c, dir, sizeof dir) < 0)
        return;
    _cleanup_closedir_ DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!qv_name_valid(e->d_name))
            continue;
        const sv_sweep_vm *vm = find_vm(vms, n, e->d_name);
        if (vm && (vm->pid || vm->busy))
            continue;
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove_path(vm ? "stale sockets and pidfile" : "run directory of an unknown VM", path, dry_run, actions);
    }
}

/* TAPs with our names that no running VM accounts for.  The kernel removes
 * a TAP with its last fd, so one survives only while something still holds
 * it (an orphan QEMU, killed above) or when it was made persistent. */
static void scan_taps(const sv_sweep_vm *vms, size_t n_vms, bool dry_run, json_t *actions) {
    _cleanup_free_ nd_link *links = NULL;
    size_t n = 0;
    qv_error e = {0};
    if (nd_link_list(&links, &n, &e) < 0) {
        log_warning("cannot list network links: %s", e.msg);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(links[i].kind, "tun") != 0 || !nd_tap_name_ours(links[i].name))
            continue;
        bool used = false;
        for (size_t v = 0; v < n_vms && !used; v++) {
            if (!vms[v].pid && !vms[v].busy)
                continue;
            for (unsigned k = 0; k < ND_NICS_MAX && !used; k++) {
                char tap[IFNAMSIZ];
                nd_tap_name(vms[v].name, k, tap);
                used = strcmp(tap, links[i].name) == 0;
            }
        }
        if (used)
            continue;
        if (dry_run) {
            add(actions, "leftover TAP", links[i].name, 0, "would delete");
            continue;
        }
        int r = nd_link_delete(links[i].name, &e);
        add(actions, "leftover TAP", links[i].name, 0, r == 0 || r == -ENODEV ? "deleted" : e.msg);
    }
}

int sv_sweep_run(const sv_config *c, const sv_sweep_vm *vms, size_t n_vms, bool dry_run, json_t **ret,
                   qv_error *err) {
    json_t *actions = json_array();
    if (!actions)
        return qv_error_set(err, ENOMEM, "out of memory");
    /* processes first: a killed orphan's run directory goes in the same pass */
    scan_processes(c, vms, n_vms, dry_run, actions);
    scan_temp(c, vms, n_vms, dry_run, actions);
    scan_run_dirs(c, vms, n_vms, dry_run, actions);
    scan_taps(vms, n_vms, dry_run, actions);
    *ret = json_pack("{s:o, s:b}", "actions", actions, "dry_run", dry_run);
    return 0;
}
