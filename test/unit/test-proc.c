/* Detached spawn with explicit fds, exec errors, pidfds, identity checks. */
#include "testlib.h"

#include "cleanup.h"
#include "sysroot.h"
#include "supervisor/vm/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void wait_exit(int pidfd, pid_t pid, int *status) {
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, (int)qv_test_timeout_ms(5000)), 1);
    assert_int_equal(waitpid(pid, status, 0), pid);
}

static void test_spawn_maps_fds_and_detaches(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-proc");
    char logp[PATH_MAX], datap[PATH_MAX];
    snprintf(logp, sizeof logp, "%s/log", dir);
    snprintf(datap, sizeof datap, "%s/data", dir);
    int logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int datafd = open(datap, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int leak = open("/dev/null", O_RDONLY); /* not CLOEXEC: must still not reach the child */
    /* the child reports its session, what fd 3 is, and which fds it has */
    char a0[] = "sh", a1[] = "-c",
         a2[] = "echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; readlink /proc/self/fd/3; "
                    "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; echo to-fd3 >&3";
    char *argv[] = {a0, a1, a2, NULL};
    pid_t pid;
    int pidfd;
    qv_error err = {0};
    int fds[] = {datafd};
    assert_int_equal(sv_proc_spawn(argv, logfd, fds, 1, NULL, &pid, &pidfd, &err), 0);
    int status;
    wait_exit(pidfd, pid, &status);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(pidfd);
    char buf[4096] = "";
    FILE *f = fopen(logp, "r");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    char want[256];
    snprintf(want, sizeof want, "sid=%d pid=%d\n%s\n", (int)pid, (int)pid, datap);
    if (strncmp(buf, want, strlen(want)) != 0)
        fail_msg("child said:\n%s\nwant prefix:\n%s", buf, want);
    /* fds: 0 1 2 3 and the one ls itself opens; nothing inherited beyond 3 */
    const char *fdline = buf + strlen(want);
    assert_true(strncmp(fdline, "0 1 2 3 ", 8) == 0);
    assert_int_equal(strchr(fdline, '\n') - fdline, strlen("0 1 2 3 4 "));
    f = fopen(datap, "r");
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    assert_string_equal(buf, "to-fd3\n");
    close(leak);
    close(logfd);
    close(datafd);
    qv_test_rm_rf(dir);
}

static void test_exec_failure_is_reported(void **state) {
    (void)state;
    char a0[] = "/nonexistent/qemu-system-x86_64";
    char *argv[] = {a0, NULL};
    pid_t pid = 0;
    int pidfd = -1;
    qv_error err = {0};
    assert_int_equal(sv_proc_spawn(argv, 2, NULL, 0, NULL, &pid, &pidfd, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.msg, "/nonexistent/qemu-system-x86_64 not found"));
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1); /* the failed child was reaped */
}

/* The spawn blocks every signal around its clone: the child must still
 * start with none blocked and none ignored, whatever the daemon had, and
 * the caller gets its own mask back. */
static void on_usr2(int sig) {
    (void)sig;
}

static void test_child_starts_with_default_signals(void **state) {
    (void)state;
    _cleanup_free_ char *dir = qv_test_mkdtemp("qv-proc");
    char logp[PATH_MAX];
    snprintf(logp, sizeof logp, "%s/log", dir);
    int logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    assert_true(logfd >= 0);
    struct sigaction ign = {.sa_handler = SIG_IGN}, usr2 = {.sa_handler = on_usr2}, old_usr1, old_usr2;
    sigaction(SIGUSR1, &ign, &old_usr1);
    sigaction(SIGUSR2, &usr2, &old_usr2);
    sigset_t hup, before, after;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    sigprocmask(SIG_BLOCK, &hup, &before);
    char a0[] = "cat", a1[] = "/proc/self/status"; /* cat catches nothing itself */
    char *argv[] = {a0, a1, NULL};
    pid_t pid;
    int pidfd;
    qv_error err = {0};
    assert_int_equal(sv_proc_spawn(argv, logfd, NULL, 0, NULL, &pid, &pidfd, &err), 0);
    sigprocmask(SIG_SETMASK, NULL, &after);
    assert_true(sigismember(&after, SIGHUP));
    assert_false(sigismember(&after, SIGTERM));
    assert_false(sigismember(&after, SIGCHLD));
    int status;
    wait_exit(pidfd, pid, &status);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(pidfd);
    sigprocmask(SIG_SETMASK, &before, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGUSR2, &old_usr2, NULL);
    char buf[8192] = "";
    FILE *f = fopen(logp, "r");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    const char *want[] = {"\nSigBlk:\t0000000000000000\n", "\nSigIgn:\t0000000000000000\n",
                          "\nSigCgt:\t0000000000000000\n"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(buf, want[i]))
            fail_msg("the child's status lacks %s:\n%s", want[i] + 1, buf);
    close(logfd);
    qv_test_rm_rf(dir);
}

static void test_pidfd_signal_and_identity(void **state) {
    (void)state;
    qv_sysroot_set(NULL);
    char a0[] = "sh", a1[] = "-c", a2[] = "while :; do sleep 1; done", a3[] = "qemu-system-x86_64", a4[] = "-name",
         a5[] = "guest=vm1,debug-threads=on", a6[] = "-pidfile", a7[] = "/run/qvisor/vm/vm1/qemu.pid";
    char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7, NULL};
    pid_t pid;
    int pidfd;
    qv_error err = {0};
    assert_int_equal(sv_proc_spawn(argv, 2, NULL, 0, NULL, &pid, &pidfd, &err), 0);
    uint64_t start;
    assert_int_equal(sv_proc_start_time(pid, &start), 0);
    /* the spawn returns once the exec has replaced the child's memory, a
     * moment before the kernel has set its new command line up: wait */
    bool ours = false;
    for (int i = 0; i < 500 && !(ours = sv_proc_is_our_qemu(pid, start, "vm1", "/run/qvisor/vm/vm1/qemu.pid")); i++)
        usleep(10000);
    if (!ours)
        kill(pid, SIGKILL);
    assert_true(ours);
    assert_false(sv_proc_is_our_qemu(pid, start + 1, "vm1", "/run/qvisor/vm/vm1/qemu.pid")); /* reused pid */
    assert_false(sv_proc_is_our_qemu(pid, start, "vm", "/run/qvisor/vm/vm1/qemu.pid"));      /* prefix only */
    assert_false(sv_proc_is_our_qemu(pid, start, "vm1", "/run/qvisor/vm/vm2/qemu.pid"));
    uint64_t self_start;
    assert_int_equal(sv_proc_start_time(getpid(), &self_start), 0);
    assert_false(sv_proc_is_our_qemu(getpid(), self_start, "vm1", "/run/qvisor/vm/vm1/qemu.pid"));
    assert_false(sv_proc_is_our_qemu(1, 0, "vm1", "x"));

    assert_int_equal(sv_pidfd_signal(pidfd, SIGTERM), 0);
    int status;
    wait_exit(pidfd, pid, &status);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    /* the pidfd still names the dead (reaped) process: signalling it is ESRCH, never another process */
    assert_int_equal(sv_pidfd_signal(pidfd, SIGKILL), -ESRCH);
    close(pidfd);
    assert_int_equal(sv_pidfd_open(pid) < 0 ? 1 : 0, 1);
}

static void test_start_time_parsing_with_odd_comm(void **state) {
    (void)state;
    _cleanup_free_ char *root = qv_test_mkdtemp("qv-procroot");
    /* comm with spaces and ')' must not shift the fields */
    qv_test_write(root, "proc/4242/stat",
                  "4242 (qemu) (x y)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 100000 200\n");
    unsetenv("QVISOR_SYSROOT");
    assert_int_equal(qv_sysroot_set(root), 0);
    uint64_t st;
    assert_int_equal(sv_proc_start_time(4242, &st), 0);
    assert_true(st == 987654);
    assert_int_equal(sv_proc_start_time(4243, &st), -ENOENT);
    qv_sysroot_set(NULL);
    qv_test_rm_rf(root);
}

static void test_alive_is_false_for_zombies(void **state) {
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    /* until reaped it is a zombie: exited, not alive */
    siginfo_t si;
    assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
    assert_false(sv_proc_alive(pid));
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_false(sv_proc_alive(pid));
    assert_true(sv_proc_alive(getpid()));
    assert_false(sv_proc_alive(0));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spawn_maps_fds_and_detaches),
        cmocka_unit_test(test_exec_failure_is_reported),
        cmocka_unit_test(test_child_starts_with_default_signals),
        cmocka_unit_test(test_pidfd_signal_and_identity),
        cmocka_unit_test(test_start_time_parsing_with_odd_comm),
        cmocka_unit_test(test_alive_is_false_for_zombies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
