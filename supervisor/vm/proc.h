/* QEMU processes: spawned detached (own session, so they outlive the
 * daemon), with exactly the fds we name, watched and signalled through
 * pidfds, and recognised again after a daemon restart by identity (command
 * line and start time), never by a bare pid. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

/* Spawns argv[0] (PATH lookup) in a new session: stdin /dev/null, stdout
 * and stderr appended to log_fd, and fds[i] mapped to fd 3+i in the child;
 * nothing else is inherited, every signal is at its default and none is
 * blocked.  The calling thread waits until the child has exec'd (clone with
 * CLONE_VM|CLONE_VFORK, as posix_spawn; proc.c says why); an exec failure
 * comes back as -errno with err set.  The child is ours (reap it with
 * waitpid).  *ret_pidfd is a pidfd for it (O_CLOEXEC).  limits (may be
 * NULL) are set in the child before the exec.  Right after the return the
 * kernel may not have put the new command line in place yet. */
typedef struct sv_proc_limits {
    uint64_t memlock; /* RLIMIT_MEMLOCK soft and hard, bytes; 0: inherited */
    bool memlock_best_effort; /* tests only: no CAP_SYS_RESOURCE, go on with the hard limit */
} sv_proc_limits;
int sv_proc_spawn(char *const argv[], int log_fd, const int *fds, size_t n_fds, const sv_proc_limits *limits,
                  pid_t *ret_pid, int *ret_pidfd, qv_error *err);

/* pidfd_open(); -errno (-ESRCH: no such process). */
int sv_pidfd_open(pid_t pid);
/* pidfd_send_signal(): signals exactly the process the pidfd refers to. */
int sv_pidfd_signal(int pidfd, int sig);

/* True when PID exists and is not a zombie (an exited process nobody has
 * reaped yet: a QEMU whose parent, a killed daemon, is gone). */
bool sv_proc_alive(pid_t pid);

/* Field 22 of /proc/PID/stat (start time in clock ticks since boot), read
 * through the sysfs/procfs root. */
int sv_proc_start_time(pid_t pid, uint64_t *ret);

/* What /proc/PID/stat says about a process's use of the machine: CPU time
 * of all its threads, living and exited (utime + stime, fields 14 and 15,
 * in clock ticks), its start time (field 22, the identity) and its resident
 * set (field 24, pages). */
typedef struct sv_proc_usage {
    uint64_t cpu_ticks;
    uint64_t start_ticks;
    uint64_t rss_pages;
} sv_proc_usage;
/* Parses the text of a stat file (pure).  -EBADMSG for anything else. */
int sv_proc_parse_usage(const char *stat, sv_proc_usage *ret);
/* Reads /proc/PID/stat through the sysfs/procfs root and parses it;
 * -ENOENT when there is no such process. */
int sv_proc_usage_read(pid_t pid, sv_proc_usage *ret);

/* True when PID is alive, started at start_time, and its command line
 * carries "-name guest=NAME,…" and "-pidfile PIDFILE": then it is the QEMU we
 * started for that VM.  Anything else (pid reused, another program) is
 * false, and must never be signalled. */
bool sv_proc_is_our_qemu(pid_t pid, uint64_t start_time, const char *vm_name, const char *pidfile);
