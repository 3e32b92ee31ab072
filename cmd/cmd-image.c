/* qvisor image list | import | rm */
#include "cli.h"
#include "output.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static const char list_help[] =
    "Usage: qvisor image list [--json | --names]\n"
    "\n"
    "Lists the base images (IMAGES_DIR/NAME.qcow2): name, format, virtual size,\n"
    "space used, backing file, last modified.\n"
    "\n"
    "  --names   only the names, one a line (for scripts and completion)\n"
    "\n"
    "Exit: 0, 69 daemon not running.\n";

int cmd_image_list(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {"names", no_argument, NULL, 'N'},
                                             {NULL, 0, NULL, 0}};
    bool names = false;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, list_help)) != -1) {
        if (c != 'N')
            return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("image list ", "bad option");
        names = true;
    }
    if (optind < argc)
        return qv_cli_usage_error("image list ", "takes no arguments");
    if (names && cli->json)
        return qv_cli_usage_error("image list ", "--names and --json exclude each other");
    qv_error err = {0};
    json_t *list = NULL;
    if (qv_cli_call(cli, "image.list", NULL, &list, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (names) {
        size_t i;
        json_t *img;
        json_array_foreach(list, i, img)
            qv_printf("%s\n", json_string_value(json_object_get(img, "name")));
        json_decref(list);
        return QV_EXIT_OK;
    }
    if (cli->json) {
        qv_print_json(json_pack("{s:o}", "images", list), stdout);
        return QV_EXIT_OK;
    }
    static const char *const headers[] = {"NAME", "FORMAT", "VIRTUAL", "USED", "BACKING", "MODIFIED", NULL};
    qv_table *t = qv_table_new(headers);
    size_t i;
    json_t *img;
    json_array_foreach(list, i, img) {
        char vsize[32], used[32], mod[32];
        qv_format_size_human((uint64_t)json_integer_value(json_object_get(img, "virtual_size")), vsize, sizeof vsize);
        qv_format_size_human((uint64_t)json_integer_value(json_object_get(img, "actual_size")), used, sizeof used);
        time_t m = (time_t)json_integer_value(json_object_get(img, "modified"));
        strftime(mod, sizeof mod, "%Y-%m-%d %H:%M", localtime(&m));
        const char *cells[] = {json_string_value(json_object_get(img, "name")),
                               json_string_value(json_object_get(img, "format")),
                               vsize,
                               used,
                               json_string_value(json_object_get(img, "backing")),
                               mod,
                               NULL};
        qv_table_add(t, cells);
    }
    qv_table_print(t, stdout);
    qv_table_free(t);
    json_decref(list);
    return QV_EXIT_OK;
}

typedef qv_cli_bar import_bar;

#define BAR_MAX 40
#define BAR_MIN 10

void qv_cli_bar_draw(qv_cli_bar *b, int pct) {
    if (!b->draw || pct == b->shown)
        return;
    int cols = 80;
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        cols = ws.ws_col;
    /* VERB " " NAME "  100%  [" BAR "]", one column spare so it never wraps */
    const char *verb = b->verb ? b->verb : "importing";
    int fixed = (int)strlen(verb) + 1 + (int)strlen("  100%  [") + 1 + 1;
    int name_len = (int)strlen(b->name);
    int cells = cols - fixed - name_len;
    if (cells > BAR_MAX)
        cells = BAR_MAX;
    if (cells < BAR_MIN) {
        cells = BAR_MIN;
        if (name_len > cols - fixed - cells)
            name_len = cols - fixed - cells > 8 ? cols - fixed - cells : 8;
    }
    char bar[BAR_MAX + 1];
    int full = pct * cells / 100;
    memset(bar, '#', (size_t)full);
    memset(bar + full, ' ', (size_t)(cells - full));
    bar[cells] = '\0';
    int n = fprintf(stderr, "\r%s %.*s  %3d%%  [%s]", verb, name_len, b->name, pct, bar);
    b->width = n > 1 ? n - 1 : 0;
    fflush(stderr);
    b->shown = pct;
}

void qv_cli_bar_progress(json_t *progress, void *userdata) {
    json_t *pct = json_object_get(progress, "percent");
    if (!json_is_number(pct))
        return;
    double v = json_number_value(pct);
    qv_cli_bar_draw(userdata, v >= 100 ? 100 : v > 0 ? (int)v : 0); /* clamped before the cast */
}

/* Success leaves the full bar on its own line; failure wipes it for the error. */
void qv_cli_bar_finish(qv_cli_bar *b, bool ok) {
    if (b->shown < 0)
        return;
    if (ok) {
        qv_cli_bar_draw(b, 100);
        fputc('\n', stderr);
    } else {
        fprintf(stderr, "\r%*s\r", b->width, "");
    }
    b->shown = -1;
}

static const char import_help[] =
    "Usage: qvisor image import PATH [NAME] [--format FORMAT] [--json]\n"
    "\n"
    "Copies the disk image at PATH into the images directory as NAME.qcow2,\n"
    "verifies it with qemu-img, and makes it read-only so VM disks built on it\n"
    "never see it change.  NAME defaults to the file name without its extension\n"
    "(it must be a valid name: lowercase letters, digits and '-').\n"
    "\n"
    "PATH is opened here, with your rights, and handed to the daemon: you can\n"
    "import only what you can read.  It must be a qcow2, vdi, vhdx or vpc image\n"
    "without a backing file; a raw image needs --format raw (any file is a raw\n"
    "image, so it is never assumed).\n"
    "\n"
    "      --format FORMAT      the format PATH is in: qcow2, vdi, vhdx, vpc or raw\n"
    "                           (default: whichever of the first four it is)\n"
    "\n"
    "On a terminal a progress bar shows on stderr while the data is copied\n"
    "(not with --json or --quiet, nor when stderr is not a terminal).  The\n"
    "import may run longer than --request-timeout as long as the daemon keeps\n"
    "reporting progress; the timeout then bounds the silence between reports.\n"
    "\n"
    "Exit: 0, 65 invalid name, PATH is not a regular file or not an image in\n"
    "those formats, 66 PATH does not exist, 69 daemon not running, 73 NAME\n"
    "exists already, 77 you may not read PATH.\n";

int cmd_image_import(qv_cli *cli, int argc, char **argv) {
    enum { OPT_FORMAT = 0x200 };
    static const struct option longopts[] = {
        QV_CLI_COMMON_LONGOPTS, {"format", required_argument, NULL, OPT_FORMAT}, {NULL, 0, NULL, 0}};
    const char *format = NULL;
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, import_help)) != -1) {
        if (c == OPT_FORMAT) {
            format = optarg;
            continue;
        }
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("image import ", "bad option");
    }
    if (argc - optind < 1 || argc - optind > 2)
        return qv_cli_usage_error("image import ", "needs PATH and optionally NAME");
    const char *path = argv[optind];
    qv_error err = {0};
    _cleanup_close_ int fd = -1;
    _cleanup_free_ char *abs = NULL;
    if (qv_cli_open_input("source", path, &fd, &abs, &err) < 0)
        return qv_cli_fail(cli, &err);
    char name[QV_NAME_MAX + 8];
    if (argc - optind == 2) {
        snprintf(name, sizeof name, "%s", argv[optind + 1]);
    } else {
        const char *base = strrchr(abs, '/') ? strrchr(abs, '/') + 1 : abs;
        snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
    }
    if (!qv_name_valid(name)) {
        qv_fprintf(stderr, "qvisor: error: '%s' is not a valid image name; give one: qvisor image import %s NAME\n", name,
                path);
        return QV_EXIT_DATAERR;
    }
    json_t *img = NULL;
    import_bar bar = {.name = name, .shown = -1,
                      .draw = cli->verbosity >= 0 && !cli->json && isatty(STDERR_FILENO)};
    if (bar.draw)
        qv_cli_bar_draw(&bar, 0);
    else if (cli->verbosity >= 0 && !cli->json)
        qv_fprintf(stderr, "importing %s as image '%s'...\n", abs, name);
    /* progress is asked for even when not drawn: it keeps a long import
     * within --request-timeout */
    json_t *params = json_pack("{s:i, s:s, s:s, s:s?}", "source_fd", 0, "name", name, "source", abs, "format", format);
    if (!params) { /* a name that is not UTF-8 */
        qv_cli_bar_finish(&bar, false);
        qv_fprintf(stderr, "qvisor: error: %s: the name is not valid UTF-8\n", path);
        return QV_EXIT_DATAERR;
    }
    int r = qv_cli_call_fds(cli, "image.import", params, &fd, 1, qv_cli_bar_progress, &bar, &img, &err);
    qv_cli_bar_finish(&bar, r >= 0);
    if (r < 0)
        return qv_cli_fail(cli, &err);
    if (cli->json) {
        qv_print_json(img, stdout);
    } else {
        char vsize[32];
        qv_format_size_human((uint64_t)json_integer_value(json_object_get(img, "virtual_size")), vsize, sizeof vsize);
        qv_printf("imported %s (%s virtual) as %s\n", name, vsize, json_string_value(json_object_get(img, "path")));
        json_decref(img);
    }
    return QV_EXIT_OK;
}

static const char rm_help[] =
    "Usage: qvisor image rm NAME\n"
    "\n"
    "Deletes a base image.  Refused while any VM disk is built on it.\n"
    "\n"
    "Exit: 0, 66 no such image, 69 daemon not running, 75 VMs still use it.\n";

int cmd_image_rm(qv_cli *cli, int argc, char **argv) {
    static const struct option longopts[] = {QV_CLI_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    int c;
    while ((c = qv_cli_getopt(cli, argc, argv, "h", longopts, rm_help)) != -1)
        return c == -2 ? QV_EXIT_OK : qv_cli_usage_error("image rm ", "bad option");
    if (argc - optind != 1)
        return qv_cli_usage_error("image rm ", "needs exactly one NAME");
    qv_error err = {0};
    if (qv_cli_call(cli, "image.remove", json_pack("{s:s}", "name", argv[optind]), NULL, &err) < 0)
        return qv_cli_fail(cli, &err);
    if (cli->verbosity >= 0)
        qv_printf("removed image %s\n", argv[optind]);
    return QV_EXIT_OK;
}
