/* `qvisor cidata`: writes a NoCloud seed ISO from files, a drop-in for
 * cloud-localds (which needs genisoimage; this does not).
 *
 * Exit codes: 0 written, 64 usage, 65 invalid content, 66 unreadable input,
 * 73 the output exists and is not a regular file, 1 the image could not be
 * written. */
#include "cli.h"

#include "cleanup.h"
#include "cloudinit/iso9660.h"
#include "cloudinit/nocloud.h"
#include "error.h"
#include "fileio.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char cidata_usage[] =
    "Usage: qvisor cidata -o SEED.ISO [OPTIONS]\n"
    "       qvisor cidata [OPTIONS] SEED.ISO USER-DATA [META-DATA]   (cloud-localds form)\n"
    "\n"
    "Writes a cloud-init NoCloud seed (ISO9660, label 'cidata', Rock Ridge and\n"
    "Joliet) atomically: a temporary file renamed over the output, so a reader\n"
    "never sees a partial image.  No genisoimage, xorriso or mkisofs is needed.\n"
    "\n"
    "  -o, --output FILE          the image to write (replaced atomically; only a\n"
    "                             regular file is replaced, never a symlink,\n"
    "                             device node or FIFO)\n"
    "  -u, --user-data FILE       user-data: #cloud-config YAML, a #! script or a\n"
    "                             MIME multipart message (default: empty)\n"
    "      --meta-data FILE       meta-data (default: generated, with an instance-id\n"
    "                             derived from the content and -H's local-hostname)\n"
    "  -N, --network-config FILE  network-config (YAML)\n"
    "  -V, --vendor-data FILE     vendor-data (same forms as user-data)\n"
    "  -H, --hostname NAME        local-hostname in the generated meta-data\n"
    "  -L, --label LABEL          volume label (default: cidata)\n"
    "  -f, --filesystem iso9660   accepted for cloud-localds compatibility\n"
    "  -d, --disk-format raw      accepted for cloud-localds compatibility\n"
    "      --sync                 fsync the image and its directory, so that it\n"
    "                             survives a host crash whole\n"
    "  -h, --help                 this text\n"
    "\n"
    "The image timestamp is SOURCE_DATE_EPOCH when set, so equal inputs give\n"
    "byte-identical images.\n"
    "\n"
    "Exit status: 0 written, 64 usage error, 65 invalid content or label, 66 an\n"
    "input file cannot be read, 73 the output exists and is not a regular file,\n"
    "1 the image cannot be written.\n";

static int cidata_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cidata_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("qvisor: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\nTry 'qvisor cidata --help'.\n", stderr);
    va_end(ap);
    return QV_EXIT_USAGE;
}

static int cidata_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cidata_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("qvisor: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

typedef struct cidata_input {
    const char *path; /* NULL: not given */
    char *data;
    size_t len;
} cidata_input;

static int cidata_read(const char *what, cidata_input *in) {
    if (!in->path)
        return 0;
    int r = qv_read_file(in->path, CI_INPUT_MAX, &in->data, &in->len);
    if (r == -EFBIG)
        return cidata_fail(QV_EXIT_DATAERR, "%s file '%s' is larger than %u MiB", what, in->path,
                           CI_INPUT_MAX >> 20);
    if (r < 0)
        return cidata_fail(QV_EXIT_NOINPUT, "cannot read %s file '%s': %s", what, in->path, strerror(-r));
    return 0;
}

int cmd_cidata(qv_cli *cli, int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"user-data", required_argument, NULL, 'u'},
        {"meta-data", required_argument, NULL, 'M'},
        {"network-config", required_argument, NULL, 'N'},
        {"vendor-data", required_argument, NULL, 'V'},
        {"hostname", required_argument, NULL, 'H'},
        {"label", required_argument, NULL, 'L'},
        {"filesystem", required_argument, NULL, 'f'},
        {"disk-format", required_argument, NULL, 'd'},
        {"sync", no_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *output = NULL, *hostname = NULL, *label = CI_DEFAULT_LABEL;
    cidata_input user = {0}, meta = {0}, net = {0}, vendor = {0};
    int c, rc;
    unsigned flags = CI_ISO_REGULAR;

    optind = 0; /* the caller may have run getopt already */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:u:N:V:H:L:f:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            output = optarg;
            break;
        case 'u':
            user.path = optarg;
            break;
        case 'M':
            meta.path = optarg;
            break;
        case 'N':
            net.path = optarg;
            break;
        case 'V':
            vendor.path = optarg;
            break;
        case 'H':
            hostname = optarg;
            break;
        case 'L':
            label = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "iso9660") != 0 && strcmp(optarg, "iso") != 0)
                return cidata_usage_error("filesystem '%s' is not supported; only iso9660", optarg);
            break;
        case 'd':
            if (strcmp(optarg, "raw") != 0)
                return cidata_usage_error("disk format '%s' is not supported; only raw", optarg);
            break;
        case 'S':
            flags |= CI_ISO_DURABLE;
            break;
        case 'h':
            fputs(cidata_usage, stdout);
            return QV_EXIT_OK;
        case ':':
            return cidata_usage_error("option '%s' needs an argument", argv[optind - 1]);
        default:
            if (optopt)
                return cidata_usage_error("unknown option '-%c'", optopt);
            return cidata_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    int npos = argc - optind;
    if (!output) {
        /* cloud-localds: OUTPUT USER-DATA [META-DATA] */
        if (npos < 1)
            return cidata_usage_error("no output file: give -o SEED.ISO");
        if (npos > 3)
            return cidata_usage_error("too many arguments");
        output = argv[optind];
        if (npos >= 2) {
            if (user.path)
                return cidata_usage_error("user-data given twice");
            user.path = argv[optind + 1];
        }
        if (npos == 3) {
            if (meta.path)
                return cidata_usage_error("meta-data given twice");
            meta.path = argv[optind + 2];
        }
    } else if (npos > 0) {
        return cidata_usage_error("unexpected argument '%s'", argv[optind]);
    }
    if (!*output)
        return cidata_usage_error("the output file name is empty");
    if (hostname && meta.path)
        return cidata_usage_error("--hostname only applies to generated meta-data, not with --meta-data");

    qv_error err = {0};
    if (ci_iso_validate_label(label, &err) < 0) /* the option is there, its value is bad: 65 */
        return cidata_fail(QV_EXIT_DATAERR, "%s", err.msg);
    int64_t ts;
    if (ci_iso_timestamp(&ts, &err) < 0)
        return cidata_fail(QV_EXIT_DATAERR, "%s", err.msg);

    if ((rc = cidata_read("user-data", &user)) != 0 || (rc = cidata_read("meta-data", &meta)) != 0 ||
        (rc = cidata_read("network-config", &net)) != 0 || (rc = cidata_read("vendor-data", &vendor)) != 0)
        goto out;

    if ((user.path && ci_user_data_check("user-data", user.data, user.len, &err) < 0) ||
        (meta.path && ci_yaml_mapping_check("meta-data", meta.data, meta.len, &err) < 0) ||
        (net.path && ci_yaml_mapping_check("network-config", net.data, net.len, &err) < 0) ||
        (vendor.path && ci_user_data_check("vendor-data", vendor.data, vendor.len, &err) < 0)) {
        rc = cidata_fail(QV_EXIT_DATAERR, "%s", err.msg);
        goto out;
    }

    ci_iso_file files[CI_SEED_FILES_MAX];
    size_t n = 0;
    files[n++] = (ci_iso_file){.name = "user-data", .data = user.data, .size = user.len};
    if (net.path)
        files[n++] = (ci_iso_file){.name = "network-config", .data = net.data, .size = net.len};
    if (vendor.path)
        files[n++] = (ci_iso_file){.name = "vendor-data", .data = vendor.data, .size = vendor.len};
    if (!meta.path) {
        /* the instance-id covers all the content, the host name included */
        ci_iso_file h[CI_SEED_FILES_MAX + 1];
        size_t hn = 0;
        if (hostname)
            h[hn++] = (ci_iso_file){.name = "local-hostname", .data = hostname, .size = strlen(hostname)};
        memcpy(h + hn, files, n * sizeof *files);
        char iid[CI_INSTANCE_ID_SIZE];
        ci_instance_id(h, hn + n, iid);
        if (ci_meta_data_make(iid, hostname, &meta.data, &meta.len, &err) < 0) {
            rc = cidata_fail(QV_EXIT_DATAERR, "%s", err.msg);
            goto out;
        }
    }
    files[n++] = (ci_iso_file){.name = "meta-data", .data = meta.data, .size = meta.len};

    if (ci_iso_write_file_atomic(output, 0644, flags, label, files, n, ts, &err) < 0) {
        rc = cidata_fail(err.code == EEXIST ? QV_EXIT_CANTCREAT : QV_EXIT_FAILED, "%s", err.msg);
        goto out;
    }
    if (cli && cli->verbosity > 0)
        printf("wrote %s\n", output);
    rc = QV_EXIT_OK;
out:
    free(user.data);
    free(meta.data);
    free(net.data);
    free(vendor.data);
    return rc;
}
