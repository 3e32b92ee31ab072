/* vm console and vm log, the daemon's side: stream frames, the bounded tail
 * of a serial log, and the console relay's buffers (a client that does not
 * read loses output, counted and reported, while QEMU is always read; a
 * guest that does not read holds the client's input back). */
#include "testlib.h"

#include "supervisor/vm/console.h"
#include "supervisor/vm/serlog.h"
#include "frame.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- frames ---- */

typedef struct {
    char types[16];
    char payload[16][64];
    size_t len[16];
    int n;
} frames;

static int collect(char type, const char *payload, size_t len, void *userdata) {
    frames *f = userdata;
    assert_true(f->n < 16 && len < 64);
    f->types[f->n] = type;
    memcpy(f->payload[f->n], payload, len);
    f->len[f->n++] = len;
    return type == QV_FRAME_END ? 7 : 0;
}

static size_t put(char *buf, char type, const char *payload, size_t len) {
    qv_frame_header(buf, type, (uint32_t)len);
    memcpy(buf + QV_FRAME_HEADER, payload, len);
    return QV_FRAME_HEADER + len;
}

static void test_frames_any_split(void **state) {
    (void)state;
    char buf[256];
    size_t n = 0;
    n += put(buf + n, 'D', "ab\0c", 4);
    n += put(buf + n, 'D', "", 0);
    n += put(buf + n, 'N', "{\"dropped\":3}", 13);
    n += put(buf + n, 'E', "{}", 2);
    n += put(buf + n, 'D', "after", 5);
    for (size_t step = 1; step <= n; step++) {
        qv_frame_dec d;
        qv_frame_dec_init(&d);
        frames f = {0};
        int r = 0;
        for (size_t at = 0; at < n && r == 0; at += step)
            r = qv_frame_feed(&d, buf + at, at + step > n ? n - at : step, collect, &f);
        assert_int_equal(r, 7); /* the end frame stops the feed */
        assert_int_equal(f.n, 4);
        assert_memory_equal(f.types, "DDNE", 4);
        assert_int_equal(f.len[0], 4);
        assert_memory_equal(f.payload[0], "ab\0c", 4);
        assert_int_equal(f.len[1], 0);
        assert_memory_equal(f.payload[2], "{\"dropped\":3}", 13);
        qv_frame_dec_free(&d);
    }
}

static void test_frames_bad(void **state) {
    (void)state;
    qv_frame_dec d;
    qv_frame_dec_init(&d);
    frames f = {0};
    char hdr[QV_FRAME_HEADER];
    qv_frame_header(hdr, 'X', 1);
    assert_int_equal(qv_frame_feed(&d, hdr, sizeof hdr, collect, &f), -EPROTO);
    qv_frame_dec_free(&d);
    qv_frame_dec_init(&d);
    qv_frame_header(hdr, 'D', QV_FRAME_MAX + 1);
    assert_int_equal(qv_frame_feed(&d, hdr, sizeof hdr, collect, &f), -EPROTO);
    qv_frame_dec_free(&d);
}

/* ---- tail ---- */

static int file_with(const char *text) {
    char path[] = "/tmp/qv-tail-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    return fd;
}

static void tail_is(const char *text, uint64_t lines, const char *want) {
    int fd = file_with(text);
    uint64_t off, scanned;
    bool cut;
    assert_int_equal(sv_log_tail_offset(fd, strlen(text), lines, 1 << 20, &off, &cut, &scanned), 0);
    assert_string_equal(text + off, want);
    assert_false(cut);
    close(fd);
}

static void test_tail_lines(void **state) {
    (void)state;
    tail_is("a\nb\nc\n", 1, "c\n");
    tail_is("a\nb\nc\n", 2, "b\nc\n");
    tail_is("a\nb\nc\n", 3, "a\nb\nc\n");
    tail_is("a\nb\nc\n", 10, "a\nb\nc\n");
    tail_is("a\nb\nc", 1, "c"); /* a last line without its newline */
    tail_is("a\nb\nc", 2, "b\nc");
    tail_is("a\n\n\n", 2, "\n\n");
    tail_is("", 5, "");
    tail_is("a\nb\n", 0, "");
}

/* A log of 1 GiB without a newline (sparse: zeros): -n 10 reads only the
 * scan limit, and says that it cut. */
static void test_tail_is_bounded(void **state) {
    (void)state;
    int fd = file_with("");
    uint64_t size = 1ull << 30;
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    uint64_t off, scanned;
    bool cut;
    assert_int_equal(sv_log_tail_offset(fd, size, 10, SV_LOG_TAIL_SCAN, &off, &cut, &scanned), 0);
    assert_true(cut);
    assert_int_equal(scanned, SV_LOG_TAIL_SCAN);
    assert_int_equal(off, size - SV_LOG_TAIL_SCAN);
    /* with a newline inside the window: found, no cut */
    assert_int_equal(pwrite(fd, "x\n", 2, (off_t)(size - 100)), 2);
    assert_int_equal(sv_log_tail_offset(fd, size, 1, SV_LOG_TAIL_SCAN, &off, &cut, &scanned), 0);
    assert_false(cut);
    assert_int_equal(off, size - 98);
    assert_true(scanned <= 65536);
    close(fd);
}

/* ---- relay ---- */

typedef struct {
    bool ended;
} relay_state;

static void on_end(void *userdata) {
    ((relay_state *)userdata)->ended = true;
}

static void run_a_while(uv_loop_t *loop, int ms) {
    uint64_t until = uv_now(loop) + (uint64_t)ms;
    while (uv_now(loop) < until) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
        uv_update_time(loop);
    }
}

typedef struct {
    uint64_t data;
    uint64_t dropped;
    int ends;
} client_view;

static int count_frames(char type, const char *payload, size_t len, void *userdata) {
    client_view *v = userdata;
    if (type == QV_FRAME_DATA)
        v->data += len;
    else if (type == QV_FRAME_NOTICE && strstr(payload, "dropped"))
        v->dropped += strtoull(strchr(payload, ':') + 1, NULL, 10);
    else if (type == QV_FRAME_END)
        v->ends++;
    return 0;
}

/* The client reads nothing while the guest writes 8 MiB: QEMU's side is
 * read all along (its writes never block for long), the client gets at most
 * out_max, and what it lost is reported once it reads again. */
static void test_relay_slow_client_drops_and_says_so(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int cl[2], qe[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cl), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qe), 0);
    int small = 16384;
    setsockopt(cl[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    fcntl(qe[1], F_SETFL, O_NONBLOCK);
    relay_state rs = {0};
    sv_relay_limits lim = SV_RELAY_LIMITS_DEFAULT;
    lim.out_max = 256 << 10;
    lim.out_resume = 64 << 10;
    sv_relay *r;
    assert_int_equal(sv_relay_new(&loop, cl[0], qe[0], &lim, on_end, &rs, &r), 0);

    static char chunk[65536];
    memset(chunk, 'g', sizeof chunk);
    uint64_t written = 0;
    while (written < (8u << 20)) {
        ssize_t n = write(qe[1], chunk, sizeof chunk);
        if (n > 0)
            written += (uint64_t)n;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    run_a_while(&loop, 50);
    assert_true(sv_relay_dropped(r) > 0);
    assert_true(sv_relay_dropped(r) >= written - (lim.out_max + (1u << 20))); /* queue + socket buffers */

    /* now the client reads everything */
    fcntl(cl[1], F_SETFL, O_NONBLOCK);
    qv_frame_dec d;
    qv_frame_dec_init(&d);
    client_view v = {0};
    for (int i = 0; i < 2000 && v.data + v.dropped < written; i++) {
        char buf[65536];
        ssize_t n;
        while ((n = read(cl[1], buf, sizeof buf)) > 0)
            assert_int_equal(qv_frame_feed(&d, buf, (size_t)n, count_frames, &v), 0);
        run_a_while(&loop, 1);
    }
    assert_int_equal(v.data + v.dropped, written); /* every byte delivered or reported */
    assert_int_equal(v.dropped, sv_relay_dropped(r));

    /* the client detaches: the relay ends, both sides are closed */
    close(cl[1]);
    run_a_while(&loop, 100);
    assert_true(rs.ended);
    char b;
    assert_int_equal(read(qe[1], &b, 1), 0); /* QEMU sees the hang-up */
    close(qe[1]);
    qv_frame_dec_free(&d);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A guest that reads nothing: the client's input waits (not read past
 * in_max), none is lost once the guest reads; the end frame arrives last. */
static void test_relay_input_backpressure(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int cl[2], qe[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cl), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qe), 0);
    fcntl(cl[1], F_SETFL, O_NONBLOCK);
    fcntl(qe[1], F_SETFL, O_NONBLOCK);
    relay_state rs = {0};
    sv_relay_limits lim = SV_RELAY_LIMITS_DEFAULT;
    sv_relay *r;
    assert_int_equal(sv_relay_new(&loop, cl[0], qe[0], &lim, on_end, &rs, &r), 0);
    static char chunk[65536];
    uint64_t sent = 0;
    for (int i = 0; i < 200; i++) { /* the client types 8 MiB, as fast as it may */
        ssize_t n = write(cl[1], chunk, sizeof chunk);
        if (n > 0)
            sent += (uint64_t)n;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    assert_true(sent < (8u << 20)); /* held back: the client's writes would block */
    uint64_t got = 0;
    for (int i = 0; i < 5000 && got < sent; i++) {
        char buf[65536];
        ssize_t n;
        while ((n = read(qe[1], buf, sizeof buf)) > 0)
            got += (uint64_t)n;
        run_a_while(&loop, 1);
    }
    assert_int_equal(got, sent);
    sv_relay_end(r, json_pack("{s:s}", "reason", "stopped"));
    run_a_while(&loop, 100);
    assert_true(rs.ended);
    qv_frame_dec d;
    qv_frame_dec_init(&d);
    client_view v = {0};
    char buf[4096];
    ssize_t n;
    while ((n = read(cl[1], buf, sizeof buf)) > 0)
        qv_frame_feed(&d, buf, (size_t)n, count_frames, &v);
    assert_int_equal(n, 0); /* closed after the end frame */
    assert_int_equal(v.ends, 1);
    qv_frame_dec_free(&d);
    close(cl[1]);
    close(qe[1]);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* as the daemon: a client that hung up is an EPIPE */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames_any_split),
        cmocka_unit_test(test_frames_bad),
        cmocka_unit_test(test_tail_lines),
        cmocka_unit_test(test_tail_is_bounded),
        cmocka_unit_test(test_relay_slow_client_drops_and_says_so),
        cmocka_unit_test(test_relay_input_backpressure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
