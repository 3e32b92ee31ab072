/* qvisor vm ssh: ssh to a VM as its cloud-init user, with the key qvisor
 * made for it. */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char ssh_help[] =
    "Usage: qvisor vm ssh NAME [-l USER] [-- COMMAND...]\n"
    "\n"
    "Runs ssh to the VM through the port qvisor forwards from 127.0.0.1 to the\n"
    "guest's port 22, as the VM's cloud-init user, with the key qvisor made\n"
    "for it (`vm create --ssh`) when there is one.  A VM without a user-mode\n"
    "NIC is reached on port 22 of its first static address (a nat NIC's, through\n"
    "the NAT bridge).  The guest's host key is remembered per VM in\n"
    "INSTANCE_DIR/known_hosts.\n"
    "\n"
    "The owner of a VM (vm create --owner), who may not read INSTANCE_DIR, gets\n"
    "its key from the daemon (only for a VM of theirs), handed to ssh in memory\n"
    "(never a file), and the host key goes to the user's own known_hosts under\n"
    "the alias qvisor-NAME-CREATED.  Others use their own keys.\n"
    "\n"
    "  -l, --user USER   log in as USER instead (before or after NAME)\n"
    "\n"
    "Everything after NAME and its options (or after \"--\") is the remote\n"
    "command, passed on whole.\n"
    "\n"
    "Exit: ssh's own exit status once it runs; 64 a bad user name, 65 the VM's\n"
    "user name is not one ssh can take safely, 66 no such VM, 69 daemon not\n"
    "running or the VM not running, 1 ssh cannot be run.\n";

/* A login name ssh takes as one: what useradd allows (and '$' at the end of
 * machine accounts), nothing ssh could read as an option or a host. */
static bool ssh_user_ok(const char *u) {
    size_t len = strlen(u);
    if (len == 0 || len > 256 || u[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)u[i]) && !strchr("._-$", u[i]))
            return false;
    return true;
}

/* The VM's --ssh key from the daemon (vm.ssh_key: only for a VM of this
 * user's) in a memfd of mode 0600, as ssh wants its keys: the fd, or -1
 * when there is none to have (not this user's VM, no key, an old daemon);
 * ssh then goes without, as it would. */
static int daemon_key(qv_cli *cli, const char *name) {
    qv_error err = {0};
    json_t *res = NULL;
    if (qv_cli_call(cli, "vm.ssh_key", json_pack("{s:s}", "name", name), &res, &err) < 0) {
        log_debug("no SSH key of VM %s from the daemon: %s", name, err.msg);
        return -1;
    }
    const char *key = json_string_value(json_object_get(res, "key"));
    int fd = key ? memfd_create("qvisor-ssh-key", MFD_CLOEXEC) : -1;
    if (fd >= 0 && (fchmod(fd, 0600) < 0 || qv_write_all(fd, key, strlen(key)) < 0))
        qv_closep(&fd);
    json_decref(res);
    return fd;
}

/* Where ssh keeps the guest's host key: the VM's known_hosts (vm.show's
 * known_hosts) when this user may write there (root), else the user's own
 * known hosts (*ret_known NULL), under an alias of this VM's creation: a
 * VM created anew under the same name is another host.  -ENOMEM. */
static int host_key_options(json_t *vm, const char *name, char **ret_known, char **ret_alias) {
    const char *known_hosts = json_string_value(json_object_get(vm, "known_hosts"));
    _cleanup_free_ char *dir = known_hosts ? strdup(known_hosts) : NULL;
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash)
        *slash = '\0';
    if (slash && access(dir, W_OK) == 0) {
        if (asprintf(ret_known, "UserKnownHostsFile=%s", known_hosts) < 0)
            return -ENOMEM;
        return asprintf(ret_alias, "HostKeyAlias=qvisor-%s", name) < 0 ? -ENOMEM : 0;
    }
    *ret_known = NULL;
    long long created = (long long)json_integer_value(json_object_get(vm, "created_at"));
    return asprintf(ret_alias, "HostKeyAlias=qvisor-%s-%lld", name, created) < 0 ? -ENOMEM : 0;
}

/* ssh as a child, waited for: its exit status (128 + N when signal N
 * ended it, as a shell says), 1 when it cannot be run.  SIGINT and SIGQUIT
 * from the terminal are ssh's: we ignore them while it runs. */
static int run_ssh(char *const args[]) {
    posix_spawnattr_t attr;
    sigset_t dfl;
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGQUIT);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_int, old_quit;
    sigaction(SIGINT, &ign, &old_int);
    sigaction(SIGQUIT, &ign, &old_quit);
    pid_t pid;
    int r = posix_spawnp(&pid, "ssh", NULL, &attr, args, environ);
    posix_spawnattr_destroy(&attr);
    int status = 0;
    while (r == 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGQUIT, &old_quit, NULL);
    if (r != 0) {
        qv_fprintf(stderr, "qvisor: error: cannot run ssh: %s (install openssh-client)\n", strerror(r));
        return QV_EXIT_FAILED;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : QV_EXIT_FAILED;
}

/* -l USER (and --help) from optind up to the first word that is no option,
 * so that the remote command keeps its own: 0, -2 after --help, or a usage
 * error's exit code. */
static int ssh_options(qv_cli *cli, int argc, char **argv, const char **user) {
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"user", required_argument, NULL, 'l'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "+hl:", longopts, ssh_help)) != -1) {
        if (c == -2)
            return -2;
        if (c != 'l')
            return qv_cli_usage_error("vm ssh ", "bad option");
        *user = optarg;
    }
    return 0;
}

int cmd_vm_ssh(qv_cli *cli, int argc, char **argv) {
    const char *user = NULL;
    int r = ssh_options(cli, argc, argv, &user);
    if (r != 0)
        return r == -2 ? QV_EXIT_OK : r;
    if (optind >= argc)
        return qv_cli_usage_error("vm ssh ", "needs a NAME");
    const char *name = argv[optind++];
    /* options may follow NAME too (vm ssh NAME -l USER -- CMD): getopt
     * carries on from optind and stops at "--" or the command */
    if ((r = ssh_options(cli, argc, argv, &user)) != 0)
        return r == -2 ? QV_EXIT_OK : r;
    if (user && !ssh_user_ok(user))
        return qv_cli_usage_error("vm ssh ", "bad user name (letters, digits, '.', '_', '-', '$', not starting "
                                             "with '-', at most 256 bytes)");
    qv_error err = {0};
    json_t *vm = NULL;
    if (qv_cli_call(cli, "vm.show", json_pack("{s:s}", "name", name), &vm, &err) < 0)
        return qv_cli_fail(cli, &err);
    json_t *port = json_object_get(vm, "ssh_port");
    /* no user-mode NIC: the address of its first NIC that has a static one
     * (a nat NIC is reachable from the node through the NAT bridge) */
    const char *host = "127.0.0.1";
    if (!json_is_integer(port) && json_is_string(json_object_get(vm, "ip")) &&
        json_integer_value(json_object_get(vm, "pid")) > 0)
        host = json_string_value(json_object_get(vm, "ip"));
    if (!json_is_integer(port) && strcmp(host, "127.0.0.1") == 0) {
        qv_fprintf(stderr, "qvisor: error: VM %s is %s: no SSH port to connect to (qvisor vm start %s)\n", name,
                json_string_value(json_object_get(vm, "state")), name);
        json_decref(vm);
        return QV_EXIT_UNAVAILABLE;
    }
    /* the daemon names the VM's files (its instance layout is not the CLI's to know) */
    const char *key = json_string_value(json_object_get(vm, "ssh_key"));
    json_t *spec = json_object_get(vm, "spec");
    if (!user) {
        user = json_string_value(json_object_get(spec, "user"));
        if (user && !ssh_user_ok(user)) {
            qv_fprintf(stderr, "qvisor: error: VM %s has a user name ssh cannot take safely; use -l USER\n", name);
            json_decref(vm);
            return QV_EXIT_DATAERR;
        }
    }
    unsigned char probe[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, probe) != 1 && inet_pton(AF_INET6, host, probe) != 1) {
        qv_fprintf(stderr, "qvisor: error: VM %s: the daemon gave no usable address\n", name);
        json_decref(vm);
        return QV_EXIT_DATAERR;
    }
    /* a user who may not read the instance directory (not root: the
     * VM's owner) gets the key from the daemon, if it is theirs */
    _cleanup_close_ int key_fd = -1;
    char key_path[64];
    if (key && access(key, R_OK) != 0) {
        key = NULL; /* without it, ssh goes with the user's own keys */
        if ((key_fd = daemon_key(cli, name)) >= 0) {
            snprintf(key_path, sizeof key_path, "/proc/%d/fd/%d", (int)getpid(), key_fd);
            key = key_path;
        }
    }
    _cleanup_free_ char *portarg = NULL, *dest = NULL, *known = NULL, *alias = NULL;
    if (asprintf(&portarg, "%lld", json_is_integer(port) ? (long long)json_integer_value(port) : 22ll) < 0 ||
        asprintf(&dest, "%s@%s", user ? user : "qvisor", host) < 0 || host_key_options(vm, name, &known, &alias) < 0)
        abort();
    /* fixed arguments, "--", the remote command, NULL */
    size_t cap = 16 + (size_t)(argc - optind);
    _cleanup_free_ const char **args = calloc(cap, sizeof *args);
    if (!args)
        abort();
    size_t n = 0;
    args[n++] = "ssh";
    args[n++] = "-p";
    args[n++] = portarg;
    if (known) {
        args[n++] = "-o";
        args[n++] = known;
    }
    args[n++] = "-o";
    args[n++] = alias;
    args[n++] = "-o";
    args[n++] = "StrictHostKeyChecking=accept-new";
    if (key) {
        args[n++] = "-i";
        args[n++] = key;
    }
    args[n++] = dest;
    if (optind < argc) {
        args[n++] = "--";
        for (int i = optind; i < argc; i++)
            args[n++] = argv[i];
    }
    args[n] = NULL;
    fflush(stdout);
    /* ssh closes every fd above 2 as it starts: the key it is given in a
     * memfd of ours stays readable as /proc/OUR_PID/fd/N while we wait */
    int code = QV_EXIT_FAILED;
    if (key_fd >= 0) {
        code = run_ssh((char *const *)args);
    } else {
        execvp("ssh", (char *const *)args);
        qv_fprintf(stderr, "qvisor: error: cannot run ssh: %s (install openssh-client)\n", strerror(errno));
    }
    json_decref(vm); /* args borrow from it */
    return code;
}
