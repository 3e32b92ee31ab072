/* libFuzzer target for what qvisor reads of Slurm (slurm/slurmconf.c):
 * hostlist and bracket expressions, gres.conf, slurm.conf, `scontrol -d
 * show job` and `scontrol show config`.  The files are the
 * administrator's, but `scontrol show job` carries what users chose (job
 * names, comments on the same lines), and the prolog runs as root.
 *
 * Input: byte 0 selects the parser, the rest is its text (cut at the first
 * NUL, as the callers read C strings).  Beyond not crashing, each checks
 * what the callers rely on: an expansion within SLURM_EXPAND_MAX whose
 * names hostlist_has finds again, NULL-terminated lists of the counted
 * length, an allocation within its arrays. */
#include "slurm/slurmconf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_expand(const char *text) {
    char **names = NULL;
    size_t n = 0;
    if (slurm_hostlist_expand(text, &names, &n) < 0)
        return;
    if (n > SLURM_EXPAND_MAX || names[n] != NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (!names[i])
            abort();
        /* a few of them: has() expands again, a full check is quadratic */
        if (i < 4 && !slurm_hostlist_has(text, names[i])) {
            fprintf(stderr, "'%s' expands to '%s', which it does not have\n", text, names[i]);
            abort();
        }
    }
    slurm_strv_free(names);
}

static void check_gres(const char *text) {
    char **files = NULL;
    size_t n = 0;
    qv_error err = {0};
    if (slurm_gres_conf_gpus(text, "node1", &files, &n, &err) < 0) {
        if (!err.msg[0])
            abort();
        return;
    }
    if (n > 0 && !files)
        abort();
    if (files && files[n] != NULL)
        abort();
    slurm_gres_files_free(files, n);
}

static void check_slurm_conf(const char *text) {
    long count = -1;
    bool include = false;
    qv_error err = {0};
    int r = slurm_conf_node_gpus(text, "node1", &count, &include, &err);
    if (r < 0 && !err.msg[0])
        abort();
    if (r == 0 && count < 0)
        abort();
}

static void check_job(const char *text) {
    slurm_alloc a;
    qv_error err = {0};
    int r = slurm_job_alloc(text, "node1", &a, &err);
    if (r < 0 && r != -ENOENT && !err.msg[0])
        abort();
    if (r == 0 && a.n_gpus > SLURM_ALLOC_GPUS_MAX)
        abort();
}

static void check_kill_wait(const char *text) {
    unsigned s = 0;
    (void)slurm_config_kill_wait(text, &s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 5;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    switch (mode) {
    case 0: check_expand(text); break;
    case 1: check_gres(text); break;
    case 2: check_slurm_conf(text); break;
    case 3: check_job(text); break;
    default: check_kill_wait(text); break;
    }
    free(text);
    return 0;
}
