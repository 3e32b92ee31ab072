/* qvisor vm console | log: the two streaming verbs (docs/console.md).
 *
 * Both send one request and then read frames (common/frame.h) on the
 * same connection; the console also sends the terminal's bytes.  Every way
 * out goes through finish(), which puts the terminal back first. */
#include "cli.h"

#include "cleanup.h"
#include "fileio.h"
#include "util.h"
#include "frame.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#define DETACH_CHAR 0x1d /* Ctrl-] */
#define INPUT_MAX 65536  /* terminal bytes held for the daemon */

/* ---- terminal and signals ---------------------------------------------- */

static struct termios saved_tio;
static bool tio_raw;
static int sig_pipe[2] = {-1, -1};

static void term_restore(void) {
    if (tio_raw) {
        tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_tio);
        tio_raw = false;
    }
}

static int term_raw(void) {
    if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return -errno;
    struct termios raw = saved_tio;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) < 0)
        return -errno;
    tio_raw = true;
    atexit(term_restore);
    return 0;
}

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {
        /* the pipe is full: a signal is already waiting */
    }
    errno = saved;
}

/* SIGINT, SIGTERM and SIGHUP end the stream through the poll loop. */
static int signals_catch(void) {
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* ---- the stream ------------------------------------------------------------ */

typedef struct stream {
    const char *name;
    bool console;   /* vm console (else vm log) */
    bool quiet;
    json_t *end;    /* the end frame's object, once it came */
    bool out_gone;  /* stdout closed (vm log | head) */
    int fail;       /* a protocol error */
} stream;

static void notice(stream *st, const char *payload, size_t len) {
    json_t *j = json_loadb(payload, len, 0, NULL);
    if (!j)
        return;
    const char *eol = tio_raw ? "\r\n" : "\n";
    json_t *v;
    if ((v = json_object_get(j, "dropped")))
        fprintf(stderr, "%s[qvisor: %lld bytes of console output dropped: this terminal did not keep up]%s", eol,
                (long long)json_integer_value(v), eol);
    else if (json_is_string(json_object_get(j, "boot")) && !st->quiet)
        fprintf(stderr, "==> VM %s started again: a new serial.log <==\n", st->name);
    else if ((v = json_object_get(j, "skipped")) && !st->quiet)
        fprintf(stderr, "==> the first %lld bytes of serial.log are not shown: -n reads at most the last %lld "
                        "bytes <==\n",
                (long long)json_integer_value(v), (long long)json_integer_value(json_object_get(j, "scan_limit")));
    json_decref(j);
}

static int on_frame(char type, const char *payload, size_t len, void *userdata) {
    stream *st = userdata;
    switch (type) {
    case QV_FRAME_DATA:
        if (!st->out_gone && qv_write_all(STDOUT_FILENO, payload, len) < 0)
            st->out_gone = true;
        return 0;
    case QV_FRAME_NOTICE:
        notice(st, payload, len);
        return 0;
    default: /* QV_FRAME_END */
        st->end = json_loadb(payload, len, 0, NULL);
        if (!st->end)
            st->end = json_object();
        return 1;
    }
}

/* What the end of a stream means for the user: a message on stderr and the
 * exit code (docs/console.md). */
static int finish(stream *st, int sig, bool detached, bool lost) {
    term_restore();
    const char *reason = json_string_value(json_object_get(st->end, "reason"));
    const char *msg = json_string_value(json_object_get(st->end, "message"));
    int code = QV_EXIT_OK;
    if (sig || detached) {
        if (st->console && !st->quiet)
            fprintf(stderr, "\nDetached from %s's serial console.\n", st->name);
    } else if (lost || !reason) {
        fprintf(stderr, "\nqvisor: lost the connection to the qvisor daemon; VM %s keeps running if it was "
                        "(try again once the daemon is back)\n", st->name);
        code = QV_EXIT_TEMPFAIL;
    } else if (strcmp(reason, "detached") == 0 || strcmp(reason, "eof") == 0) {
        code = QV_EXIT_OK;
    } else if (strcmp(reason, "stopped") == 0) {
        fprintf(stderr, "\nVM %s stopped\n", st->name);
        code = QV_EXIT_UNAVAILABLE;
    } else if (strcmp(reason, "daemon") == 0) {
        fprintf(stderr, "\nqvisor: the qvisor daemon is stopping; VM %s keeps running (try again once the daemon "
                        "is back)\n", st->name);
        code = QV_EXIT_TEMPFAIL;
    } else if (strcmp(reason, "removed") == 0) {
        fprintf(stderr, "\nVM %s was removed\n", st->name);
        code = QV_EXIT_OK;
    } else if (strcmp(reason, "closed") == 0) {
        fprintf(stderr, "\nqvisor: %s (VM %s)\n", msg ? msg : "the console was closed", st->name);
        code = QV_EXIT_UNAVAILABLE;
    } else {
        const char *c = json_string_value(json_object_get(st->end, "code"));
        fprintf(stderr, "\nqvisor: error: %s\n", msg ? msg : reason);
        code = qv_exit_code_for_errno(c ? qv_errno_from_name(c) : EIO);
    }
    json_decref(st->end);
    st->end = NULL;
    return code;
}

/* Runs the stream on fd until it ends; rest: bytes already read after the
 * reply.  Returns the exit code. */
static int run_stream(stream *st, int fd, const char *rest, size_t rest_len) {
    qv_frame_dec dec;
    qv_frame_dec_init(&dec);
    bool tty = st->console && isatty(STDIN_FILENO);
    bool in_open = st->console; /* reading the terminal */
    bool wr_shut = false;
    char inbuf[INPUT_MAX];
    size_t in_len = 0;
    int code = -1;
    int r = qv_frame_feed(&dec, rest, rest_len, on_frame, st);
    if (r < 0)
        st->fail = r;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (!st->end && !st->fail && !st->out_gone) {
        struct pollfd p[3] = {
            {.fd = fd, .events = POLLIN | (in_len ? POLLOUT : 0)},
            {.fd = sig_pipe[0], .events = POLLIN},
            {.fd = in_open && in_len < sizeof inbuf ? STDIN_FILENO : -1, .events = POLLIN},
        };
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents) {
            unsigned char sig = 0;
            if (read(sig_pipe[0], &sig, 1) == 1) {
                code = finish(st, sig, false, false);
                break;
            }
        }
        if (p[2].revents) {
            ssize_t n = read(STDIN_FILENO, inbuf + in_len, sizeof inbuf - in_len);
            if (n < 0 && errno != EINTR && errno != EAGAIN)
                n = 0;
            if (n == 0) {
                in_open = false; /* end of input: detach once it is delivered */
            } else if (n > 0) {
                char *d = tty ? memchr(inbuf + in_len, DETACH_CHAR, (size_t)n) : NULL;
                if (d) {
                    in_len = (size_t)(d - inbuf);
                    /* what came before Ctrl-] still goes */
                    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
                    qv_write_all(fd, inbuf, in_len);
                    code = finish(st, 0, true, false);
                    break;
                }
                in_len += (size_t)n;
            }
        }
        if (in_len && (p[0].revents & POLLOUT)) {
            ssize_t n = send(fd, inbuf, in_len, MSG_NOSIGNAL);
            if (n > 0) {
                memmove(inbuf, inbuf + n, in_len - (size_t)n);
                in_len -= (size_t)n;
            }
        }
        if (st->console && !in_open && !in_len && !wr_shut) {
            shutdown(fd, SHUT_WR);
            wr_shut = true;
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[65536];
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0) {
                code = finish(st, 0, false, true);
                break;
            }
            r = qv_frame_feed(&dec, buf, (size_t)n, on_frame, st);
            if (r < 0)
                st->fail = r;
        }
    }
    qv_frame_dec_free(&dec);
    if (code >= 0)
        return code;
    if (st->out_gone) { /* vm log | head: nobody reads any more */
        term_restore();
        json_decref(st->end);
        return QV_EXIT_OK;
    }
    if (st->fail) {
        term_restore();
        fprintf(stderr, "\nqvisor: error: malformed stream from the daemon\n");
        return QV_EXIT_FAILED;
    }
    return finish(st, 0, false, false);
}

/* Sends the request; on success *ret_fd is the stream. */
static int open_stream(qv_cli *cli, const char *method, json_t *params, int *ret_fd, char **ret_rest,
                       size_t *ret_len, qv_error *err) {
    const char *path;
    int r = qv_cli_socket_path(cli, &path, err);
    if (r < 0) {
        json_decref(params);
        return r;
    }
    json_t *res = NULL;
    r = sv_ctl_call_stream(path, method, params, (int)cli->timeout_ms, &res, ret_fd, ret_rest, ret_len, err);
    json_decref(params);
    json_decref(res);
    return r;
}

static const char console_help[] =
    "Usage: qvisor vm console NAME\n"
    "\n"
    "Attaches this terminal to the VM's serial console (the guest's ttyS0),\n"
    "like virsh console.  The terminal goes raw while attached; Ctrl-] detaches.\n"
    "Everything the guest writes is also kept in serial.log, attached or not\n"
    "(qvisor vm log NAME).  One client at a time per VM.  Without a terminal on\n"
    "stdin the bytes are relayed as they are (Ctrl-] is a byte like any) and the\n"
    "end of input detaches once it has been delivered.  Needs root, the\n"
    "daemon's socket group or the VM's owner (vm create --owner): a console is\n"
    "often a root shell.\n"
    "\n"
    "Exit: 0 detached (Ctrl-], end of input, SIGINT, SIGTERM or SIGHUP), 66 no\n"
    "such VM, 69 daemon not running, VM not running, or it stopped while\n"
    "attached (\"VM NAME stopped\"), 75 another client holds the console, or the\n"
    "daemon stopped or went away while attached (the VM keeps running), 77 not\n"
    "root, the socket group or the VM's owner.\n";

int cmd_vm_console(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, console_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("vm console ", "bad option");
    if (optind != argc - 1)
        return qv_cli_usage_error("vm console ", "needs exactly one NAME");
    const char *name = argv[optind];
    qv_error err = {0};
    if (signals_catch() < 0)
        return QV_EXIT_FAILED;
    int fd = -1;
    _cleanup_free_ char *rest = NULL;
    size_t rest_len = 0;
    if (open_stream(cli, "vm.console", json_pack("{s:s}", "name", name), &fd, &rest, &rest_len, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->verbosity >= 0)
        fprintf(stderr, "Connected to %s's serial console; Ctrl-] detaches.\n", name);
    if (isatty(STDIN_FILENO) && term_raw() < 0)
        fprintf(stderr, "qvisor: warning: cannot put the terminal in raw mode: %s\n", strerror(errno));
    stream st = {.name = name, .console = true, .quiet = cli->verbosity < 0};
    int code = run_stream(&st, fd, rest, rest_len);
    close(fd);
    return code;
}

static const char log_help[] =
    "Usage: qvisor vm log NAME [-n LINES] [-f]\n"
    "\n"
    "Prints the VM's serial console log (serial.log: everything the guest wrote\n"
    "to its serial port since it last started), read by the daemon.\n"
    "\n"
    "  -n, --lines N   the last N lines only (default: all); at most the last\n"
    "                  4 MiB are searched for them\n"
    "  -f, --follow    keep printing what the guest writes, across restarts of\n"
    "                  the VM (each start begins a new serial.log: a line\n"
    "                  \"==> VM NAME started again <==\" on stderr); Ctrl-C ends\n"
    "\n"
    "The previous boot's log is INSTANCES_DIR/NAME/serial.log.1.  Needs root,\n"
    "the daemon's socket group or the VM's owner (vm create --owner): a guest's\n"
    "console can show secrets.\n"
    "\n"
    "Exit: 0 (also after Ctrl-C), 64 bad -n, 66 no such VM, 69 daemon not\n"
    "running, 75 the daemon stopped while following, 77 not root, the socket\n"
    "group or the VM's owner.\n";

int cmd_vm_log(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS,
                                             {"lines", required_argument, NULL, 'n'},
                                             {"follow", no_argument, NULL, 'f'},
                                             {NULL, 0, NULL, 0}};
    int64_t lines = -1;
    bool follow = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "hn:f", longopts, log_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c == 'f') {
            follow = true;
        } else if (c == 'n') {
            uint64_t v;
            if (qv_parse_uint(optarg, 0, INT64_MAX, &v) < 0)
                return qv_cli_usage_error("vm log ", "-n needs a number of lines, not '%s'", optarg);
            lines = (int64_t)v;
        } else {
            return qv_cli_usage_error("vm log ", "bad option");
        }
    }
    if (optind != argc - 1)
        return qv_cli_usage_error("vm log ", "needs exactly one NAME");
    const char *name = argv[optind];
    qv_error err = {0};
    if (signals_catch() < 0)
        return QV_EXIT_FAILED;
    json_t *params = json_pack("{s:s, s:b}", "name", name, "follow", follow);
    if (lines >= 0)
        json_object_set_new(params, "lines", json_integer(lines));
    int fd = -1;
    _cleanup_free_ char *rest = NULL;
    size_t rest_len = 0;
    if (open_stream(cli, "vm.log", params, &fd, &rest, &rest_len, &err) < 0)
        return qv_cli_fail(cli, &err);
    stream st = {.name = name, .quiet = cli->verbosity < 0};
    int code = run_stream(&st, fd, rest, rest_len);
    close(fd);
    return code;
}
