#include "supervisor/vm/proc.h"

#include "cleanup.h"
#include "fileio.h"
#include "sysroot.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int sv_pidfd_open(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

int sv_pidfd_signal(int pidfd, int sig) {
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

/* The spawn is clone(CLONE_VM | CLONE_VFORK), as posix_spawn does it: the
 * child borrows the daemon's memory until it execs, and the calling thread
 * waits for that.  A fork would copy the page tables of the daemon (with
 * many VMs, megabytes of them) only for exec to throw the copy away, and
 * every page the daemon then writes would fault once; it was a tenth of
 * the loop thread's time in a profile of starts and stops.
 *
 * What that asks of the child: it runs on a stack of its own, writes no
 * memory but that stack and `a->err`, and makes only system calls (no
 * malloc, no stdio, no locks: another thread of the daemon may hold one).
 * Signals stay blocked from before the clone until every disposition is
 * back to the default, so no handler of the daemon ever runs in it.
 * Sanitizer instrumentation is off here: the sanitizers do not know this
 * stack. */
#define LIMIT_FAILED 0x10000 /* or'ed into the errno the child reports: setrlimit, not exec */
#define SPAWN_STACK (32u * 1024u) /* the child's frame and execvp's copy of PATH + the name */

typedef struct spawn_args {
    char *const *argv;
    int log_fd;
    const int *fds;
    size_t n_fds;
    const sv_proc_limits *limits;
    int err; /* the child's errno (| LIMIT_FAILED) when it could not exec; 0 when it did */
} spawn_args;

#if defined(__clang__) || __GNUC__ >= 8
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))
#else
#define NO_SANITIZE
#endif

NO_SANITIZE static int child(void *arg) {
    spawn_args *a = arg;
    int fail_flag = 0;
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL); /* SIGKILL, SIGSTOP and glibc's own fail: fine */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0)
        goto fail;
    /* Move everything we keep above the target range first, so mapping
     * fds[i] -> 3+i never clobbers a source that is still needed. */
    int high = 3 + (int)a->n_fds + 3;
    int moved[64];
    if (a->n_fds > 60) {
        errno = EMFILE;
        goto fail;
    }
    for (size_t i = 0; i < a->n_fds; i++) {
        moved[i] = fcntl(a->fds[i], F_DUPFD, high);
        if (moved[i] < 0)
            goto fail;
        high = moved[i] + 1;
    }
    int log_moved = fcntl(a->log_fd, F_DUPFD, high);
    if (log_moved < 0)
        goto fail;
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(log_moved, 1) < 0 || dup2(log_moved, 2) < 0)
        goto fail;
    for (size_t i = 0; i < a->n_fds; i++)
        if (dup2(moved[i], 3 + (int)i) < 0)
            goto fail;
    close_range(3 + (unsigned)a->n_fds, ~0u, 0); /* nothing else is inherited */
    const sv_proc_limits *limits = a->limits;
    if (limits && limits->memlock) {
        /* VFIO pins all guest RAM; QEMU (maybe unprivileged after -runas) cannot raise this itself */
        struct rlimit rl = {limits->memlock, limits->memlock};
        if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0) {
            struct rlimit now;
            if (!limits->memlock_best_effort || getrlimit(RLIMIT_MEMLOCK, &now) < 0) {
                fail_flag = LIMIT_FAILED;
                goto fail;
            }
            now.rlim_cur = now.rlim_max;
            (void)setrlimit(RLIMIT_MEMLOCK, &now);
        }
    }
    execvp(a->argv[0], a->argv);
fail:
    a->err = (errno ? errno : EIO) | fail_flag;
    syscall(SYS_exit_group, 127); /* not _exit: a sanitizer's interceptor would run here */
    return 127;
}

int sv_proc_spawn(char *const argv[], int log_fd, const int *fds, size_t n_fds, const sv_proc_limits *limits,
                  pid_t *ret_pid, int *ret_pidfd, qv_error *err) {
    /* The child's stack is a part of this thread's, unused while this
     * thread waits for the child to exec (as musl's posix_spawn does it) */
    _Alignas(16) char stack[SPAWN_STACK];
    spawn_args a = {.argv = argv, .log_fd = log_fd, .fds = fds, .n_fds = n_fds, .limits = limits};
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return qv_error_set(err, clone_errno, "clone: %s", strerror(clone_errno));
    int child_errno = a.err;
    if (child_errno) {
        /* exec failed: reap the child, report why */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        if (child_errno & LIMIT_FAILED) {
            int e = child_errno & ~LIMIT_FAILED;
            return qv_error_set(err, e, "cannot raise RLIMIT_MEMLOCK to %llu bytes for %s (VFIO pins guest RAM): %s",
                                (unsigned long long)limits->memlock, argv[0], strerror(e));
        }
        if (child_errno == ENOENT)
            return qv_error_set(err, EOPNOTSUPP, "%s not found (install qemu-system-x86 or set qemu.binary)",
                                argv[0]);
        return qv_error_set(err, child_errno, "cannot run %s: %s", argv[0], strerror(child_errno));
    }
    int pidfd = sv_pidfd_open(pid);
    if (pidfd < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return qv_error_set(err, -pidfd, "pidfd_open: %s", strerror(-pidfd));
    }
    *ret_pid = pid;
    *ret_pidfd = pidfd;
    return 0;
}

bool sv_proc_alive(pid_t pid) {
    char rel[64];
    snprintf(rel, sizeof rel, "proc/%d/stat", (int)pid);
    _cleanup_free_ char *stat = NULL;
    if (pid <= 0 || qv_sysroot_read(rel, &stat, NULL) < 0)
        return false;
    const char *p = strrchr(stat, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* The decimal number of field `field` (1-based, >= 3) of a stat line; p
 * points just after comm's closing ')', at the space before field 3. */
static int stat_field(const char *p, int field, uint64_t *ret) {
    for (int f = 3; f < field; f++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EBADMSG;
    }
    if (p[1] < '0' || p[1] > '9')
        return -EBADMSG;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(p + 1, &end, 10);
    if (errno || (*end != ' ' && *end != '\n' && *end != '\0'))
        return -EBADMSG;
    *ret = v;
    return 0;
}

int sv_proc_parse_usage(const char *stat, sv_proc_usage *ret) {
    /* comm (field 2) may contain spaces and ')': fields resume after the last ')' */
    const char *p = strrchr(stat, ')');
    if (!p)
        return -EBADMSG;
    p++;
    uint64_t utime, stime, start, rss;
    if (stat_field(p, 14, &utime) < 0 || stat_field(p, 15, &stime) < 0 || stat_field(p, 22, &start) < 0 ||
        stat_field(p, 24, &rss) < 0 || utime + stime < utime)
        return -EBADMSG;
    *ret = (sv_proc_usage){.cpu_ticks = utime + stime, .start_ticks = start, .rss_pages = rss};
    return 0;
}

/* Every metrics scrape reads this for every VM: one read into the stack
 * (procfs hands the whole line to the first read), no allocation. */
int sv_proc_usage_read(pid_t pid, sv_proc_usage *ret) {
    char rel[64];
    snprintf(rel, sizeof rel, "proc/%d/stat", (int)pid);
    _cleanup_close_ int fd = qv_sysroot_open(rel, O_RDONLY);
    if (fd < 0)
        return fd;
    char buf[2048]; /* a stat line is ~400 bytes; 52 numbers of 20 digits fit */
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf - 1)) < 0 && errno == EINTR)
        ;
    if (n < 0)
        return -errno;
    if ((size_t)n == sizeof buf - 1)
        return -EBADMSG;
    buf[n] = '\0';
    return sv_proc_parse_usage(buf, ret);
}

int sv_proc_start_time(pid_t pid, uint64_t *ret) {
    char rel[64];
    snprintf(rel, sizeof rel, "proc/%d/stat", (int)pid);
    _cleanup_free_ char *stat = NULL;
    int r = qv_sysroot_read(rel, &stat, NULL);
    if (r < 0)
        return r;
    const char *p = strrchr(stat, ')');
    if (!p)
        return -EBADMSG;
    return stat_field(p + 1, 22, ret);
}

bool sv_proc_is_our_qemu(pid_t pid, uint64_t start_time, const char *vm_name, const char *pidfile) {
    if (pid <= 1)
        return false;
    uint64_t st;
    if (sv_proc_start_time(pid, &st) < 0 || st != start_time)
        return false;
    char rel[64];
    snprintf(rel, sizeof rel, "proc/%d/cmdline", (int)pid);
    _cleanup_free_ char *cmd = NULL;
    size_t len;
    if (qv_sysroot_read(rel, &cmd, &len) < 0)
        return false;
    char want_name[128];
    snprintf(want_name, sizeof want_name, "guest=%s,", vm_name);
    bool name_ok = false, pidfile_ok = false;
    /* cmdline is NUL-separated arguments */
    for (size_t off = 0; off < len;) {
        const char *arg = cmd + off;
        size_t alen = strlen(arg);
        const char *next = off + alen + 1 < len ? arg + alen + 1 : NULL;
        if (next && strcmp(arg, "-name") == 0 && strncmp(next, want_name, strlen(want_name)) == 0)
            name_ok = true;
        if (next && strcmp(arg, "-pidfile") == 0 && strcmp(next, pidfile) == 0)
            pidfile_ok = true;
        off += alen + 1;
    }
    return name_ok && pidfile_ok;
}
