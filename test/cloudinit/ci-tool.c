/* Test driver for the cloudinit library, independent of cmd/main.c:
 *
 *   ci-tool mkiso -o OUT [-l LABEL] [-t EPOCH] [-m buf|fd|atomic|durable] [NAME=]PATH...
 *       writes an ISO holding each PATH under NAME (default: its basename),
 *       with the file's permission bits as the Rock Ridge mode
 *   ci-tool seed -o OUT -H HOSTNAME [-k KEY]... [--nic MAC,ADDR/PFX,GW | --nic MAC,dhcp]...
 *       [--dns IP]... [-t EPOCH]
 *       generates and writes a NoCloud seed through ci_seed_write
 *   ci-tool cidata ARGS...
 *       runs the `qvisor cidata` verb (cmd/cidata.c)
 *
 * Exit status: 0 on success, 1 on a library error (message on stderr),
 * 64 on bad usage; `cidata` returns the verb's own status. */
#include "cleanup.h"
#include "cmd/cli.h"
#include "cloudinit/iso9660.h"
#include "cloudinit/nocloud.h"
#include "fileio.h"

#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int cmd_cidata(qv_cli *cli, int argc, char **argv);

static int usage(void) {
    fputs("usage: ci-tool mkiso -o OUT [-l LABEL] [-t EPOCH] [-m buf|fd|atomic|durable] [NAME=]PATH...\n"
          "       ci-tool seed -o OUT -H HOST [-k KEY]... [--nic MAC,ADDR|dhcp[,GW]]... [--dns IP]...\n"
          "       ci-tool cidata ARGS...\n",
          stderr);
    return 64;
}

static int get_ts(const char *t, int64_t *ts) {
    qv_error err = {0};
    if (t) {
        *ts = strtoll(t, NULL, 10);
        return 0;
    }
    if (ci_iso_timestamp(ts, &err) < 0) {
        fprintf(stderr, "ci-tool: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int do_mkiso(int argc, char **argv) {
    const char *out = NULL, *label = "cidata", *t = NULL, *mode = "atomic";
    int c;
    while ((c = getopt(argc, argv, "o:l:t:m:")) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'l':
            label = optarg;
            break;
        case 't':
            t = optarg;
            break;
        case 'm':
            mode = optarg;
            break;
        default:
            return usage();
        }
    }
    if (!out)
        return usage();
    int64_t ts;
    if (get_ts(t, &ts) < 0)
        return 1;
    size_t n = (size_t)(argc - optind);
    ci_iso_file *files = calloc(n ? n : 1, sizeof *files);
    size_t *maplen = calloc(n ? n : 1, sizeof *maplen);
    if (!files || !maplen)
        return 1;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char *arg = argv[optind + (int)i];
        char *eq = strchr(arg, '=');
        const char *path = arg;
        if (eq) {
            *eq = '\0';
            files[i].name = arg;
            path = eq + 1;
        } else {
            files[i].name = basename(arg);
        }
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            perror(path);
            return 66;
        }
        files[i].size = (uint64_t)st.st_size;
        files[i].mode = st.st_mode & 07777;
        if (st.st_size > 0) {
            void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                perror(path);
                return 66;
            }
            files[i].data = m;
            maplen[i] = (size_t)st.st_size;
        }
    }
    qv_error err = {0};
    int r;
    if (strcmp(mode, "buf") == 0) {
        uint8_t *img;
        size_t len;
        r = ci_iso_write_buf(label, files, n, ts, &img, &len, &err);
        if (r == 0) {
            r = qv_write_file_atomic(out, img, len, 0644);
            if (r < 0)
                qv_error_set(&err, r, "writing %s", out);
            free(img);
        }
    } else if (strcmp(mode, "fd") == 0) {
        _cleanup_close_ int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            perror(out);
            return 1;
        }
        r = ci_iso_write_fd(fd, label, files, n, ts, &err);
    } else {
        unsigned flags = strcmp(mode, "durable") == 0 ? CI_ISO_DURABLE : 0;
        r = ci_iso_write_file_atomic(out, 0644, flags, label, files, n, ts, &err);
    }
    if (r < 0) {
        fprintf(stderr, "ci-tool: %s\n", err.msg);
        rc = 1;
    }
    for (size_t i = 0; i < n; i++)
        if (maplen[i])
            munmap((void *)files[i].data, maplen[i]);
    free(files);
    free(maplen);
    return rc;
}

static int do_seed(int argc, char **argv) {
    static const struct option opts[] = {
        {"nic", required_argument, NULL, 'n'},
        {"dns", required_argument, NULL, 'D'},
        {0},
    };
    const char *out = NULL, *t = NULL;
    ci_seed_spec spec = {0};
    const char *keys[16], *dns[8];
    ci_nic nics[8];
    char *nicbuf[8];
    size_t nk = 0, nd = 0, nn = 0;
    int c;
    while ((c = getopt_long(argc, argv, "o:H:k:t:u:", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'H':
            spec.hostname = optarg;
            break;
        case 'u':
            spec.user = optarg;
            break;
        case 'k':
            if (nk < 16)
                keys[nk++] = optarg;
            break;
        case 't':
            t = optarg;
            break;
        case 'D':
            if (nd < 8)
                dns[nd++] = optarg;
            break;
        case 'n': {
            if (nn >= 8)
                return usage();
            char *s = nicbuf[nn] = strdup(optarg);
            ci_nic *n = &nics[nn++];
            *n = (ci_nic){0};
            n->mac = strsep(&s, ",");
            char *a = strsep(&s, ",");
            if (a && strcmp(a, "dhcp") == 0)
                n->dhcp4 = true;
            else
                n->address = a;
            n->gateway = strsep(&s, ",");
            break;
        }
        default:
            return usage();
        }
    }
    if (!out)
        return usage();
    int64_t ts;
    if (get_ts(t, &ts) < 0)
        return 1;
    spec.ssh_keys = keys;
    spec.n_ssh_keys = nk;
    spec.dns_servers = dns;
    spec.n_dns_servers = nd;
    spec.nics = nics;
    spec.n_nics = nn;
    qv_error err = {0};
    int r = ci_seed_write(out, &spec, NULL, ts, &err);
    for (size_t i = 0; i < nn; i++)
        free(nicbuf[i]);
    if (r < 0) {
        fprintf(stderr, "ci-tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "mkiso") == 0)
        return do_mkiso(argc - 1, argv + 1);
    if (strcmp(argv[1], "seed") == 0)
        return do_seed(argc - 1, argv + 1);
    if (strcmp(argv[1], "cidata") == 0) {
        qv_cli cli = {0};
        return cmd_cidata(&cli, argc - 1, argv + 1);
    }
    return usage();
}
