/* libFuzzer target for the control socket's request side: framing of
 * newline-delimited requests (common/linebuf.c), JSON parsing and request
 * validation (ctl/protocol.c, ctl/server.c), the size limit, progress, streaming
 * hand-over, and the spec validation behind vm.create (the method most
 * exposed to outside input).
 *
 * One server listens on a socket in a private directory for the whole run;
 * each input is written by a fresh client, which then closes its sending
 * side and reads until the server hangs up.  Every reply line must be a
 * JSON object with an "id" and either "result", "error" or "progress".
 *
 * Input: the bytes a client sends. */
#include "ctl/server.h"
#include "spec/vmspec.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static sv_ctl_server *server;
static char sock_path[108];

static void on_stream(int fd, const sv_ctl_peer *peer, void *userdata) {
    (void)peer;
    (void)userdata;
    if (fd >= 0)
        close(fd);
}

static void handler(sv_ctl_req *req, const char *method, json_t *params, void *userdata) {
    (void)userdata;
    if (strcmp(method, "vm.create") == 0) {
        sv_vmspec *s = NULL;
        qv_error err = {0};
        if (sv_vmspec_from_json(json_object_get(params, "spec"), &s, &err) < 0) {
            sv_ctl_reply_qv_error(req, &err);
            return;
        }
        sv_ctl_reply(req, sv_vmspec_to_json(s));
        sv_vmspec_free(s);
    } else if (strcmp(method, "progress") == 0) {
        sv_ctl_progress(req, json_pack("{s:f}", "percent", 50.0));
        sv_ctl_reply(req, json_incref(params));
    } else if (strcmp(method, "stream") == 0) {
        sv_ctl_reply_stream(req, NULL, on_stream, NULL);
    } else if (strcmp(method, "ping") == 0) {
        sv_ctl_reply(req, NULL);
    } else {
        sv_ctl_reply_error(req, ENOENT, "no method '%s'", method);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char dir[] = "/tmp/qvisor-fuzz-ctl.XXXXXX";
    if (!mkdtemp(dir) || uv_loop_init(&loop) != 0)
        abort();
    snprintf(sock_path, sizeof sock_path, "%s/ctl.sock", dir);
    sv_ctl_options o = {
        .path = sock_path, .mode = 0600, .group = (gid_t)-1, .max_request = 4096, .max_clients = 4,
        .handler = handler, .progress_interval_ms = 1, .progress_repeat_ms = 1,
    };
    qv_error err = {0};
    if (sv_ctl_server_new(&loop, &o, &server, &err) < 0) {
        fprintf(stderr, "fuzz-ctl: %s\n", err.msg);
        abort();
    }
    return 0;
}

static void check_reply(const char *line, size_t len) {
    json_t *j = json_loadb(line, len, 0, NULL);
    if (!json_is_object(j) || !json_object_get(j, "id") ||
        !(json_object_get(j, "result") || json_object_get(j, "error") || json_object_get(j, "progress"))) {
        fprintf(stderr, "bad reply: %.*s\n", (int)len, line);
        abort();
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        abort();
    size_t sent = 0;
    bool shut = false;
    static char in[1 << 16];
    size_t have = 0;
    for (int rounds = 0;; rounds++) {
        if (rounds > 100000) {
            fprintf(stderr, "the server never hung up\n");
            abort();
        }
        if (sent < size) {
            ssize_t n = write(fd, data + sent, size - sent);
            if (n > 0)
                sent += (size_t)n;
            else if (n < 0 && errno != EAGAIN)
                sent = size; /* the server hung up first */
        }
        if (sent == size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t n = read(fd, in + have, sizeof in - have);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            break;
        if (n > 0) {
            have += (size_t)n;
            char *nl;
            while ((nl = memchr(in, '\n', have))) {
                check_reply(in, (size_t)(nl - in));
                have -= (size_t)(nl - in) + 1;
                memmove(in, nl + 1, have);
            }
            if (have == sizeof in)
                abort(); /* a reply line longer than 64 KiB */
            continue;
        }
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN | (sent < size ? POLLOUT : 0)},
                              {.fd = uv_backend_fd(&loop), .events = POLLIN}};
        /* 0 while libuv has work pending (closing handles, idle writes) */
        int t = uv_backend_timeout(&loop);
        poll(p, 2, t < 0 || t > 100 ? 100 : t);
    }
    close(fd);
    /* let the server finish with this client before the next one */
    for (int i = 0; sv_ctl_server_clients(server) > 0; i++) {
        if (i > 100000)
            abort();
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    return 0;
}
