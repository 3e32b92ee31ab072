/* qvisor events and qvisor vm wait (docs/events.md): the daemon's event
 * stream, followed until interrupted, and a wait for one VM's condition,
 * answered by the daemon when the event that brings it about happens. */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "ctl/client.h"
#include "fileio.h"
#include "frame.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EVENTS_MAX_VMS 64

static const char events_help[] =
    "Usage: qvisor events [--vm NAME]… [--after SEQ] [--json]\n"
    "\n"
    "Prints the node's events as they happen, one line each, until interrupted\n"
    "(Ctrl-C): state changes (with the old and new state and why), start and\n"
    "stop results, restarts by the restart policy, the guest agent coming up or\n"
    "going down, guest IP changes, GPU binds and give-backs, admission refusals,\n"
    "config reloads, and QEMU's own events (guest panics, I/O errors, watchdog,\n"
    "resets, power button).  Every event has a sequence number.\n"
    "\n"
    "      --vm NAME    only this VM's events (repeatable; default: all, also the\n"
    "                   node's own)\n"
    "      --after SEQ  first the events after sequence number SEQ that the\n"
    "                   daemon still keeps (the last 1024), then the new ones:\n"
    "                   resume where a previous run stopped; a gap is reported\n"
    "      --json       one JSON object per line, as the daemon sends them\n"
    "\n"
    "A line \"lost N events\" (JSON: {\"lost\": N, \"next\": SEQ}) says that events\n"
    "were missed: this reader fell further behind than the daemon keeps.\n"
    "\n"
    "Exit: 0 interrupted, 64 bad option, 69 daemon not running, 75 the daemon\n"
    "stopped (run it again to resume with --after).\n";

/* The fields every event has, not repeated in the human form. */
static bool common_key(const char *k) {
    return !strcmp(k, "seq") || !strcmp(k, "time") || !strcmp(k, "type") || !strcmp(k, "vm");
}

static void print_human(json_t *ev) {
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *vm = json_string_value(json_object_get(ev, "vm"));
    qv_printf("%s %6lld %-10s %-8s ", json_string_value(json_object_get(ev, "time")) ?: "?",
              (long long)json_integer_value(json_object_get(ev, "seq")), vm ? vm : "-", type ? type : "?");
    if (type && strcmp(type, "state") == 0) {
        const char *reason = json_string_value(json_object_get(ev, "reason"));
        qv_printf("%s -> %s (%s%s%s)\n", json_string_value(json_object_get(ev, "from")) ?: "?",
                  json_string_value(json_object_get(ev, "to")) ?: "?",
                  json_string_value(json_object_get(ev, "event")) ?: "?", reason ? ": " : "", reason ? reason : "");
        return;
    }
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach(ev, k, v) {
        if (common_key(k))
            continue;
        _cleanup_free_ char *text = json_is_string(v) ? strdup(json_string_value(v))
                                                      : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        qv_printf("%s%s=%s", first ? "" : " ", k, text ? text : "?");
        first = false;
    }
    qv_printf("\n");
}

typedef struct events_out {
    bool json;
    json_t *end;
    bool out_gone;
} events_out;

static int on_event_frame(char type, const char *payload, size_t len, void *userdata) {
    events_out *o = userdata;
    if (type == QV_FRAME_END) {
        o->end = json_loadb(payload, len, 0, NULL);
        if (!o->end)
            o->end = json_object();
        return 1;
    }
    json_t *j = json_loadb(payload, len, 0, NULL);
    if (!j)
        return -EPROTO;
    if (type == QV_FRAME_NOTICE && !o->json) /* JSON: the notice is a line too ({"lost", "next"}) */
        fprintf(stderr, "qvisor: lost %lld events (this reader fell behind); going on from %lld\n",
                (long long)json_integer_value(json_object_get(j, "lost")),
                (long long)json_integer_value(json_object_get(j, "next")));
    else if (o->json)
        qv_printf("%.*s\n", (int)len, payload); /* one line each, as the daemon sent it */
    else
        print_human(j);
    json_decref(j);
    if (fflush(stdout) != 0)
        o->out_gone = true;
    return o->out_gone ? 1 : 0;
}

int cmd_events(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS,
                                             {"vm", required_argument, NULL, 'v'},
                                             {"after", required_argument, NULL, 'a'},
                                             {NULL, 0, NULL, 0}};
    json_t *params = json_object();
    json_t *vms = json_array();
    json_object_set_new(params, "vms", vms);
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, events_help)) != -1) {
        uint64_t seq;
        if (c == -2) {
            json_decref(params);
            return QV_EXIT_OK;
        } else if (c == 'v' && qv_name_valid(optarg) && json_array_size(vms) < EVENTS_MAX_VMS) {
            json_array_append_new(vms, json_string(optarg));
        } else if (c == 'a' && qv_parse_uint(optarg, 0, INT64_MAX, &seq) == 0) {
            json_object_set_new(params, "after", json_integer((json_int_t)seq));
        } else {
            json_decref(params);
            return qv_cli_usage_error("events ", c == 'v' ? "--vm takes a VM name (at most 64 of them), not '%s'"
                                                 : c == 'a' ? "--after takes a sequence number, not '%s'"
                                                            : "bad option%s",
                                      c == 'v' || c == 'a' ? optarg : "");
        }
    }
    if (optind != argc) {
        json_decref(params);
        return qv_cli_usage_error("events ", "takes no arguments");
    }
    const char *path;
    qv_error err = {0};
    if (qv_cli_socket_path(cli, &path, &err) < 0) {
        json_decref(params);
        return qv_cli_fail(cli, &err);
    }
    json_t *res = NULL;
    int fd = -1;
    _cleanup_free_ char *rest = NULL;
    size_t rest_len = 0;
    int r = sv_ctl_call_stream(path, "events.subscribe", params, (int)cli->timeout_ms, &res, &fd, &rest, &rest_len,
                               &err);
    json_decref(params);
    json_decref(res);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    events_out o = {.json = cli->json};
    qv_frame_dec dec;
    qv_frame_dec_init(&dec);
    r = qv_frame_feed(&dec, rest, rest_len, on_event_frame, &o);
    char buf[65536];
    while (r == 0) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r = qv_frame_feed(&dec, buf, (size_t)n, on_event_frame, &o);
    }
    qv_frame_dec_free(&dec);
    close(fd);
    if (o.out_gone) /* qvisor events | head */
        return QV_EXIT_OK;
    if (r < 0) {
        fprintf(stderr, "qvisor: error: malformed stream from the daemon\n");
        json_decref(o.end);
        return QV_EXIT_FAILED;
    }
    const char *msg = json_string_value(json_object_get(o.end, "message"));
    fprintf(stderr, "qvisor: %s; resume with --after and the last sequence number seen\n",
            msg ? msg : "lost the connection to the qvisor daemon");
    json_decref(o.end);
    return QV_EXIT_TEMPFAIL;
}

static const char wait_help[] =
    "Usage: qvisor vm wait NAME [--for running|stopped|crashed|agent] [--timeout T]\n"
    "\n"
    "Returns once the VM is in the condition (at once if it already is):\n"
    "  running   the VM runs (started, or resumed)\n"
    "  stopped   the VM has no QEMU any more: stopped or crashed\n"
    "  crashed   the VM crashed\n"
    "  agent     the VM runs and its guest agent answers\n"
    "The default is running.  The daemon answers when the event that brings the\n"
    "condition about happens (qvisor events); nothing polls.\n"
    "\n"
    "  -t, --timeout T  give up after T (30s, 2m, …; default: wait as long as it\n"
    "                   takes)\n"
    "\n"
    "Exit: 0 the condition holds, 64 bad option, 66 no such VM (or it was removed\n"
    "while waiting), 69 daemon not running, 75 timed out (or the daemon stopped).\n";

int cmd_vm_wait(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS,
                                             {"for", required_argument, NULL, 'f'},
                                             {"timeout", required_argument, NULL, 't'},
                                             {NULL, 0, NULL, 0}};
    const char *cond = "running";
    uint64_t timeout_ms = 0;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "ht:", longopts, wait_help)) != -1) {
        if (c == -2)
            return QV_EXIT_OK;
        if (c == 'f' && (!strcmp(optarg, "running") || !strcmp(optarg, "stopped") || !strcmp(optarg, "crashed") ||
                         !strcmp(optarg, "agent")))
            cond = optarg;
        else if (c == 't' && qv_parse_duration_ms(optarg, &timeout_ms) == 0 && timeout_ms > 0 &&
                 timeout_ms <= 30ull * 24 * 3600 * 1000)
            ;
        else
            return qv_cli_usage_error("vm wait ", c == 'f'   ? "--for takes running, stopped, crashed or agent, not '%s'"
                                                  : c == 't' ? "--timeout takes a duration like 30s or 2m, not '%s'"
                                                             : "bad option%s",
                                      c == 'f' || c == 't' ? optarg : "");
    }
    if (optind != argc - 1)
        return qv_cli_usage_error("vm wait ", "needs exactly one NAME");
    const char *name = argv[optind];
    json_t *params = json_pack("{s:s, s:s}", "name", name, "for", cond);
    if (timeout_ms)
        json_object_set_new(params, "timeout_ms", json_integer((json_int_t)timeout_ms));
    qv_error err = {0};
    json_t *res = NULL;
    /* the daemon answers at the deadline; the connection waits a little longer */
    uint64_t wait_ms = timeout_ms ? timeout_ms + 10000 : (uint64_t)INT32_MAX;
    if (qv_cli_call_long(cli, "vm.wait", params, wait_ms, &res, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json)
        qv_print_json(json_incref(res), stdout);
    else if (cli->verbosity >= 0)
        qv_printf("VM %s is %s (waited %.1f s)\n", name, json_string_value(json_object_get(res, "state")) ?: "?",
                  json_number_value(json_object_get(res, "waited_s")));
    json_decref(res);
    return QV_EXIT_OK;
}
