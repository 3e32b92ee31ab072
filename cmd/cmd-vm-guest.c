/* qvisor vm exec and vm cp: a command in the guest and files in and out,
 * through the guest agent (docs/guest.md).  The daemon relays one agent
 * command per request for vm exec (vm.exec, vm.exec_status), and runs a
 * copy whole (vm.copy_in, vm.copy_out, with the local file passed with the
 * request); the local files are this process's, opened or made with the
 * user's own rights, never the daemon's. */
#include "cli.h"
#include "guest-util.h"
#include "output.h"

#include "base64.h"
#include "cleanup.h"
#include "fileio.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXEC_TIMEOUT_EXIT 124      /* as timeout(1) */
#define STATUS_WAIT_MS 120000u     /* one vm.exec_status: its output may be 2 x 16 MiB */
#define POLL_FIRST_MS 20u
#define POLL_MAX_MS 500u

/* SIGINT, SIGTERM, SIGHUP: noted, acted on between two requests (each is
 * short), so that what was begun is cleaned up on both sides. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
    interrupted = sig;
}

static void catch_signals(void) {
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

static int interrupted_error(qv_error *err) {
    return qv_error_set(err, EINTR, "interrupted (signal %d)", (int)interrupted);
}

static void sleep_ms(unsigned ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Decodes result[key] (base64 of at most max bytes) into a new buffer. */
static int decode_field(json_t *result, const char *key, size_t max, unsigned char **ret, size_t *ret_len,
                        qv_error *err) {
    json_t *v = json_object_get(result, key);
    if (!json_is_string(v))
        return qv_error_set(err, EPROTO, "the daemon's answer has no \"%s\"", key);
    size_t n;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (qv_base64_check(s, len, max, &n) < 0)
        return qv_error_set(err, EPROTO, "the daemon's \"%s\" is not base64 of at most %zu bytes", key, max);
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        return qv_error_set(err, ENOMEM, "out of memory");
    qv_base64_decode(s, len, buf, n, &n);
    *ret = buf;
    *ret_len = n;
    return 0;
}

/* ---- running a command in the guest --------------------------------------- */

typedef struct exec_result {
    int exitcode, signal;   /* -1 when none */
    unsigned char *out, *errout;
    size_t out_len, err_len;
    bool out_truncated, err_truncated;
} exec_result;

static void exec_result_done(exec_result *r) {
    free(r->out);
    free(r->errout);
}

static int exec_start(qv_cli *cli, const char *name, json_t *argv, json_t *env, const char *input_b64,
                      int64_t *ret_pid, qv_error *err) {
    json_t *params = json_pack("{s:s, s:O}", "name", name, "argv", argv);
    if (params && env)
        json_object_set(params, "env", env);
    if (params && input_b64)
        json_object_set_new(params, "input", json_string(input_b64));
    json_t *res = NULL;
    int r = qv_cli_call(cli, "vm.exec", params, &res, err);
    if (r < 0)
        return r;
    json_t *pid = json_object_get(res, "pid");
    if (!json_is_integer(pid) || json_integer_value(pid) <= 0) {
        json_decref(res);
        return qv_error_set(err, EPROTO, "the daemon's answer to vm.exec has no pid");
    }
    *ret_pid = json_integer_value(pid);
    json_decref(res);
    return 0;
}

/* Once: 1 with *ret filled when the command has ended, 0 while it runs. */
static int exec_poll(qv_cli *cli, const char *name, int64_t pid, exec_result *ret, qv_error *err) {
    json_t *res = NULL;
    int r = qv_cli_call_long(cli, "vm.exec_status", json_pack("{s:s, s:I}", "name", name, "pid", (json_int_t)pid),
                             STATUS_WAIT_MS, &res, err);
    if (r < 0)
        return r;
    if (!json_is_true(json_object_get(res, "exited"))) {
        json_decref(res);
        return 0;
    }
    exec_result x = {.exitcode = -1, .signal = -1};
    json_t *code = json_object_get(res, "exitcode"), *sig = json_object_get(res, "signal");
    if (json_is_integer(code))
        x.exitcode = (int)json_integer_value(code);
    if (json_is_integer(sig))
        x.signal = (int)json_integer_value(sig);
    x.out_truncated = json_is_true(json_object_get(res, "stdout_truncated"));
    x.err_truncated = json_is_true(json_object_get(res, "stderr_truncated"));
    r = decode_field(res, "stdout", QV_EXEC_MAX_OUTPUT, &x.out, &x.out_len, err);
    if (r == 0)
        r = decode_field(res, "stderr", QV_EXEC_MAX_OUTPUT, &x.errout, &x.err_len, err);
    json_decref(res);
    if (r < 0) {
        exec_result_done(&x);
        return r;
    }
    *ret = x;
    return 1;
}

/* Ends a guest command that outlived its time: `kill -KILL PID` in the
 * guest (best effort: its own children are not killed), then its status is
 * collected so that the agent forgets it. */
static void exec_kill(qv_cli *cli, const char *name, int64_t pid) {
    char num[24];
    snprintf(num, sizeof num, "%lld", (long long)pid);
    json_t *argv = json_pack("[s, s, s]", "kill", "-KILL", num);
    qv_error err = {0};
    int64_t kpid;
    if (argv && exec_start(cli, name, argv, NULL, NULL, &kpid, &err) == 0) {
        exec_result x;
        for (int i = 0; i < 50; i++) {
            int r = exec_poll(cli, name, kpid, &x, &err);
            if (r == 1)
                exec_result_done(&x);
            if (r != 0)
                break;
            sleep_ms(100);
        }
        for (int i = 0; i < 20; i++) {
            int r = exec_poll(cli, name, pid, &x, &err);
            if (r == 1)
                exec_result_done(&x);
            if (r != 0)
                break;
            sleep_ms(100);
        }
    } else {
        log_warning("could not kill the command in the guest: %s", err.msg);
    }
    json_decref(argv);
}

/* Runs argv in the guest until it ends (timeout_ms 0: no limit).  1 with
 * *ret when it ended, 0 when it timed out (killed, see exec_kill). */
static int exec_run(qv_cli *cli, const char *name, json_t *argv, json_t *env, const char *input_b64,
                    uint64_t timeout_ms, exec_result *ret, qv_error *err) {
    int64_t pid;
    int r = exec_start(cli, name, argv, env, input_b64, &pid, err);
    if (r < 0)
        return r;
    uint64_t start = qv_now_ms();
    unsigned wait = POLL_FIRST_MS;
    for (;;) {
        r = exec_poll(cli, name, pid, ret, err);
        if (r != 0)
            return r;
        if (interrupted || (timeout_ms && qv_now_ms() - start >= timeout_ms)) {
            exec_kill(cli, name, pid);
            return interrupted ? interrupted_error(err) : 0;
        }
        uint64_t left = timeout_ms ? timeout_ms - (qv_now_ms() - start) : UINT64_MAX;
        sleep_ms(left < wait ? (unsigned)left : wait);
        wait = wait * 2 > POLL_MAX_MS ? POLL_MAX_MS : wait * 2;
    }
}

static const char exec_help[] =
    "Usage: qvisor vm exec NAME [--timeout T] [--env NAME=VALUE]... -- COMMAND [ARG]...\n"
    "\n"
    "Runs COMMAND in the guest through its guest agent (guest-exec), as the\n"
    "agent's user (root), waits for it to end and writes its stdout and stderr\n"
    "to ours, separately, once it ended (the agent hands them over at the end).\n"
    "COMMAND is looked up in the agent's PATH; no shell runs it.  When our\n"
    "stdin is not a terminal, it is read to its end and given to the command\n"
    "as its stdin (at most what one request holds: about 3/4 of\n"
    "daemon.max_request_size); otherwise the command's stdin is /dev/null.\n"
    "\n"
    "  --timeout T        give up after T (\"30s\", \"2m\"): the command is killed\n"
    "                     in the guest (kill -KILL PID; its own children are not)\n"
    "  --env NAME=VALUE   the command's environment (repeatable); with it, the\n"
    "                     command gets exactly these (and PATH, unless given)\n"
    "\n"
    "The agent keeps at most 16 MiB of stdout and of stderr; beyond that it\n"
    "discards the rest: qvisor then says so on stderr, and exits 1 if the\n"
    "command itself exited 0.\n"
    "\n"
    "Exit: the command's exit status (128+N when signal N ended it); 124 the\n"
    "timeout passed; 64 usage; 65 stdin too large; 66 no such VM; 69 the VM is\n"
    "not running, has no agent or its agent does not answer; 75 the VM is\n"
    "paused or busy; 77 not allowed; 1 the agent refused the command (no such\n"
    "program, …).\n";

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* daemon.max_request_size of the running daemon (config.get), or the
 * default when it does not say. */
static uint64_t max_request(qv_cli *cli) {
    json_t *cfg = NULL;
    qv_error err = {0};
    uint64_t n = 1u << 20;
    if (qv_cli_call(cli, "config.get", NULL, &cfg, &err) == 0) {
        json_t *v = json_object_get(json_object_get(cfg, "daemon"), "max_request_size");
        if (json_is_integer(v) && json_integer_value(v) > 0)
            n = (uint64_t)json_integer_value(v);
    }
    json_decref(cfg);
    return n;
}

/* stdin to its end, as base64 (NULL and 0 when it is a terminal or empty). */
static int read_stdin_b64(size_t max, char **ret, qv_error *err) {
    *ret = NULL;
    if (isatty(STDIN_FILENO))
        return 0;
    _cleanup_free_ unsigned char *buf = malloc(max + 1);
    if (!buf)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t len = 0;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf + len, max + 1 - len);
        if (n < 0 && errno == EINTR && !interrupted)
            continue;
        if (n < 0 && errno == EBADF)
            return 0; /* no stdin at all */
        if (n < 0)
            return qv_error_set(err, errno, "reading stdin: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max)
            return qv_error_set(err, EMSGSIZE,
                                "stdin is larger than %zu bytes, the most one request takes (copy it in with "
                                "qvisor vm cp instead)",
                                max);
    }
    if (len == 0)
        return 0;
    char *b64 = malloc(qv_base64_encoded_len(len) + 1);
    if (!b64)
        return qv_error_set(err, ENOMEM, "out of memory");
    qv_base64_encode(buf, len, b64);
    *ret = b64;
    return 0;
}

int cmd_vm_exec(qv_cli *cli, int argc, char **argv) {
    enum { OPT_TIMEOUT = 0x100, OPT_ENV };
    static const struct option opts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"env", required_argument, NULL, OPT_ENV},
        {NULL, 0, NULL, 0},
    };
    uint64_t timeout_ms = 0;
    _cleanup_(json_decrefp) json_t *env = NULL;
    bool env_path = false;
    const char *name = NULL;
    /* options before and after NAME; the command starts at "--" (or at the
     * first word after NAME that is not an option) */
    for (int pass = 0; pass < 2; pass++) {
        int c;
        while ((c = qv_cli_getopt(cli, argc, argv, "+h", opts, exec_help)) != -1) {
            switch (c) {
            case OPT_TIMEOUT:
                if (qv_parse_duration_ms(optarg, &timeout_ms) < 0 || timeout_ms == 0)
                    return qv_cli_usage_error("vm exec ", "bad --timeout '%s' (\"30s\", \"2m\")", optarg);
                break;
            case OPT_ENV:
                if (!strchr(optarg, '=') || optarg[0] == '=')
                    return qv_cli_usage_error("vm exec ", "--env takes NAME=VALUE, not '%s'", optarg);
                if (!env && !(env = json_array()))
                    abort();
                if (strncmp(optarg, "PATH=", 5) == 0)
                    env_path = true;
                json_array_append_new(env, json_string(optarg));
                break;
            case -2:
                return QV_EXIT_OK;
            default:
                return QV_EXIT_USAGE;
            }
        }
        if (pass == 0) {
            if (optind >= argc || strcmp(argv[optind - 1], "--") == 0)
                return qv_cli_usage_error("vm exec ", "needs a NAME, then -- COMMAND");
            name = argv[optind++];
        }
    }
    if (optind >= argc)
        return qv_cli_usage_error("vm exec ", "needs a COMMAND (after --)");
    if (env && !env_path)
        json_array_append_new(env, json_string(DEFAULT_PATH));
    _cleanup_(json_decrefp) json_t *cmd = json_array();
    for (int i = optind; i < argc; i++)
        if (json_array_append_new(cmd, json_string(argv[i])) < 0)
            return qv_cli_usage_error("vm exec ", "the command's words must be UTF-8");
    catch_signals();
    qv_error err = {0};
    _cleanup_free_ char *input = NULL;
    if (read_stdin_b64(qv_cp_write_chunk(max_request(cli)), &input, &err) < 0)
        return qv_cli_fail(cli, &err);
    exec_result x;
    int r = exec_run(cli, name, cmd, env, input, timeout_ms, &x, &err);
    if (r < 0) {
        if (err.code == EINTR)
            qv_fprintf(stderr, "qvisor: interrupted; the command was killed in the guest\n");
        return err.code == EINTR ? 128 + (int)interrupted : qv_cli_fail(cli, &err);
    }
    if (r == 0) {
        char t[32];
        qv_format_duration_ms(timeout_ms, t, sizeof t);
        qv_fprintf(stderr, "qvisor: error: the command did not end within %s; it was killed in the guest\n", t);
        return EXEC_TIMEOUT_EXIT;
    }
    /* the guest's bytes as they are: they are the command's output */
    int werr = qv_write_all(STDOUT_FILENO, x.out, x.out_len);
    if (qv_write_all(STDERR_FILENO, x.errout, x.err_len) < 0 && werr == 0)
        werr = -EIO;
    int status = qv_exec_exit_status(x.exitcode, x.signal);
    if (x.out_truncated || x.err_truncated) {
        qv_fprintf(stderr, "qvisor: warning: the guest agent kept only the first %u MiB of the command's %s and "
                           "discarded the rest\n",
                   QV_EXEC_MAX_OUTPUT >> 20,
                   x.out_truncated && x.err_truncated ? "stdout and stderr" : x.out_truncated ? "stdout" : "stderr");
        if (status == 0)
            status = QV_EXIT_FAILED;
    }
    exec_result_done(&x);
    if (werr < 0 && status == 0)
        status = QV_EXIT_FAILED;
    return status;
}

/* ---- copying files ------------------------------------------------------- */

/* The progress line of vm cp on a terminal:  "copying NAME  42%  84.0M / 200.0M" */
typedef struct cp_bar {
    const char *label;
    bool draw;
    uint64_t total, last_ms;
    bool shown;
} cp_bar;

static void bar_update(cp_bar *b, uint64_t done, bool final) {
    if (!b->draw)
        return;
    uint64_t now = qv_now_ms();
    if (!final && b->shown && now - b->last_ms < 100)
        return;
    b->last_ms = now;
    char d[32], t[32];
    qv_format_size_human(done, d, sizeof d);
    qv_format_size_human(b->total, t, sizeof t);
    if (b->total)
        fprintf(stderr, "\r\033[Kcopying %s  %3d%%  %s / %s", b->label, (int)(done * 100 / b->total), d, t);
    else
        fprintf(stderr, "\r\033[Kcopying %s  %s", b->label, d);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
    b->shown = !final;
}

static void bar_end(cp_bar *b) {
    if (b->draw && b->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        b->shown = false;
    }
}

/* The daemon's progress messages of vm.copy_in and vm.copy_out on the
 * progress line ("total" only into the guest: the agent has no stat). */
static void copy_progress(json_t *progress, void *userdata) {
    cp_bar *b = userdata;
    json_t *bytes = json_object_get(progress, "bytes"), *total = json_object_get(progress, "total");
    if (json_is_integer(total) && json_integer_value(total) > 0)
        b->total = (uint64_t)json_integer_value(total);
    if (json_is_integer(bytes) && json_integer_value(bytes) >= 0)
        bar_update(b, (uint64_t)json_integer_value(bytes), false);
}

/* A guest file or directory that does not exist: exit 66, as for a local
 * file (the agent's refusal says so in its words). */
static void guest_open_error(qv_error *err) {
    if (err->code == EIO && strstr(err->msg, "No such file or directory"))
        err->code = ENOENT;
}

/* guest file -> local file */
static int copy_out(qv_cli *cli, const char *vm, const char *gpath, const char *local, bool force, cp_bar *bar,
                    uint64_t *ret_bytes, qv_error *err) {
    char base[PATH_MAX], target[PATH_MAX], dir[PATH_MAX], tmp[PATH_MAX];
    qv_path_base(gpath, base, sizeof base);
    if (!base[0])
        return qv_error_set(err, EINVAL, "%s:%s names no file", vm, gpath);
    struct stat st;
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        if ((size_t)snprintf(target, sizeof target, "%s/%s", local, base) >= sizeof target)
            return qv_error_set(err, ENAMETOOLONG, "%s/%s: name too long", local, base);
    } else {
        snprintf(target, sizeof target, "%s", local);
    }
    if (lstat(target, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return qv_error_set(err, EEXIST, "%s is a directory", target);
        if (!force)
            return qv_error_set(err, EEXIST, "%s exists (--force replaces it)", target);
    }
    qv_path_dir(target, dir, sizeof dir);
    qv_path_base(target, base, sizeof base);
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.qvisor-XXXXXX", dir, base) >= sizeof tmp)
        return qv_error_set(err, ENAMETOOLONG, "%s: name too long", target);

    _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return qv_error_set(err, errno, "cannot create a file in %s: %s", dir, strerror(errno));
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    /* the daemon reads the guest file and writes it here (vm.copy_out) */
    json_t *params = json_pack("{s:s, s:s, s:i, s:s}", "name", vm, "path", gpath, "target_fd", 0, "target", tmp);
    json_t *res = NULL;
    int r = params ? 0 : qv_error_set(err, EINVAL, "%s or %s is not valid UTF-8", gpath, tmp);
    if (r == 0) {
        sv_ctl_client_interrupt_on(&interrupted);
        r = qv_cli_call_fds(cli, "vm.copy_out", params, &fd, 1, copy_progress, bar, &res, err);
        sv_ctl_client_interrupt_on(NULL);
    }
    if (r < 0 && interrupted)
        r = interrupted_error(err);
    else if (r < 0)
        guest_open_error(err);
    json_t *b = json_object_get(res, "bytes");
    uint64_t total = json_is_integer(b) && json_integer_value(b) >= 0 ? (uint64_t)json_integer_value(b) : 0;
    json_decref(res);
    if (r == 0 && fsync(fd) < 0)
        r = qv_error_set(err, errno, "writing %s: %s", tmp, strerror(errno));
    if (r == 0) {
        /* without --force, a file that appeared meanwhile is not replaced */
        if (!force && link(tmp, target) < 0)
            r = qv_error_set(err, errno, errno == EEXIST ? "%s exists (--force replaces it)" : "%s: %s", target,
                             strerror(errno));
        else if (!force)
            unlink(tmp);
        else if (rename(tmp, target) < 0)
            r = qv_error_set(err, errno, "%s: %s", target, strerror(errno));
    }
    if (r < 0) {
        unlink(tmp);
        return r;
    }
    *ret_bytes = total;
    return 0;
}

/* local file -> guest file: the daemon does the copy (vm.copy_in) from the
 * file opened here, with the user's rights; a temp name next to the target,
 * renamed by `mv` in the guest once complete, removed by the daemon on any
 * failure and when this process goes away (Ctrl-C closes the connection). */
static int copy_in(qv_cli *cli, const char *local, const char *vm, const char *gpath, bool force, cp_bar *bar,
                   uint64_t *ret_bytes, qv_error *err) {
    _cleanup_close_ int fd = -1;
    _cleanup_free_ char *label = NULL;
    int r = qv_cli_open_input("file", local, &fd, &label, err);
    if (r < 0)
        return r;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_error_set(err, errno, "%s: %s", local, strerror(errno));
    bar->total = (uint64_t)st.st_size;
    char base[PATH_MAX];
    qv_path_base(local, base, sizeof base);
    json_t *params = json_pack("{s:s, s:s, s:s, s:b, s:I, s:i, s:s}", "name", vm, "path", gpath, "filename", base,
                               "force", force, "mode", (json_int_t)(st.st_mode & 0777), "source_fd", 0, "source",
                               label);
    if (!params)
        return qv_error_set(err, EINVAL, "%s or %s is not valid UTF-8", local, gpath);
    json_t *res = NULL;
    sv_ctl_client_interrupt_on(&interrupted);
    r = qv_cli_call_fds(cli, "vm.copy_in", params, &fd, 1, copy_progress, bar, &res, err);
    sv_ctl_client_interrupt_on(NULL);
    if (r < 0) {
        if (interrupted)
            return interrupted_error(err);
        guest_open_error(err);
        return r;
    }
    json_t *b = json_object_get(res, "bytes");
    *ret_bytes = json_is_integer(b) && json_integer_value(b) >= 0 ? (uint64_t)json_integer_value(b) : 0;
    json_decref(res);
    return 0;
}

static const char cp_help[] =
    "Usage: qvisor vm cp [--force] NAME:PATH LOCAL\n"
    "       qvisor vm cp [--force] LOCAL NAME:PATH\n"
    "\n"
    "Copies a file out of or into VM NAME through its guest agent\n"
    "(guest-file-open/read/write), in chunks, any content, any size.  PATH is\n"
    "absolute in the guest; a LOCAL of the form \"x:y\" is written \"./x:y\".\n"
    "A target that is a directory (or, in the guest, ends in '/') gets the\n"
    "source's name.  The local file is opened (or made) by qvisor with your own\n"
    "rights, never by the daemon, which does the copy through that descriptor.\n"
    "\n"
    "Nothing is replaced without --force, and a failed or interrupted copy\n"
    "leaves no partial file: the data goes to a temporary name next to the\n"
    "target (\".NAME.qvisor-…\"), renamed once complete (in the guest with\n"
    "`mv`, run through the agent; copying into a guest needs guest-exec).\n"
    "Into a guest, the daemon removes its temporary file if the copy fails, is\n"
    "interrupted (also kill -9 of qvisor) or the daemon itself is killed (at\n"
    "its next start).  On a terminal a progress line shows on stderr.\n"
    "\n"
    "  -f, --force   replace an existing target\n"
    "\n"
    "Exit: 64 usage; 65 a bad argument; 66 no such VM or source file; 69 the VM\n"
    "is not running, has no agent or its agent does not answer (also when it\n"
    "stops during the copy); 73 the target exists; 75 the VM is paused or busy;\n"
    "77 not allowed; 1 the agent refused (a directory that does not exist, …);\n"
    "130 interrupted.\n";

int cmd_vm_cp(qv_cli *cli, int argc, char **argv) {
    static const struct option opts[] = {
        QV_CLI_COMMON_LONGOPTS,
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    bool force = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "fh", opts, cp_help)) != -1) {
        switch (c) {
        case 'f':
            force = true;
            break;
        case -2:
            return QV_EXIT_OK;
        default:
            return QV_EXIT_USAGE;
        }
    }
    if (argc - optind != 2)
        return qv_cli_usage_error("vm cp ", "needs a source and a target, one of them NAME:PATH");
    const char *src = argv[optind], *dst = argv[optind + 1];
    char vm_src[QV_NAME_MAX + 1], vm_dst[QV_NAME_MAX + 1];
    const char *gsrc = NULL, *gdst = NULL;
    int rs = qv_guest_arg_parse(src, vm_src, sizeof vm_src, &gsrc);
    int rd = qv_guest_arg_parse(dst, vm_dst, sizeof vm_dst, &gdst);
    if (rs < 0 || rd < 0)
        return qv_cli_usage_error("vm cp ", "the path in a VM must be absolute (NAME:/path)");
    if (rs == rd)
        return qv_cli_usage_error("vm cp ", rs ? "one side must be a local file" : "one side must be NAME:PATH");
    catch_signals();
    cp_bar bar = {.label = rs ? src : dst, .draw = cli->verbosity >= 0 && !cli->json && isatty(STDERR_FILENO)};
    qv_error err = {0};
    uint64_t bytes = 0;
    int r;
    if (rs) {
        /* the agent has no stat: the progress line counts bytes, no total */
        r = copy_out(cli, vm_src, gsrc, dst, force, &bar, &bytes, &err);
    } else {
        r = copy_in(cli, src, vm_dst, gdst, force, &bar, &bytes, &err);
    }
    bar_end(&bar);
    if (r < 0) {
        if (err.code == EINTR) {
            qv_fprintf(stderr, rs ? "qvisor: interrupted; no partial file left\n"
                                  : "qvisor: interrupted; the daemon removes the partial file in the guest\n");
            return 128 + (interrupted ? (int)interrupted : SIGINT);
        }
        return qv_cli_fail(cli, &err);
    }
    if (cli->json) {
        json_t *out = json_pack("{s:s, s:s, s:I}", "source", src, "target", dst, "bytes", (json_int_t)bytes);
        qv_print_json(out, stdout);
        json_decref(out);
    } else if (cli->verbosity > 0) {
        char sz[32];
        qv_format_size_human(bytes, sz, sizeof sz);
        qv_fprintf(stderr, "copied %s (%llu bytes)\n", sz, (unsigned long long)bytes);
    }
    return QV_EXIT_OK;
}
