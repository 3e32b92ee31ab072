/* A VM's launch plan (see launchplan.h). */
#include "supervisor/vm/launchplan.h"

#include "cleanup.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fd_names[] = {
    [SV_PLAN_QMP] = "qmp",         [SV_PLAN_QGA] = "qga",         [SV_PLAN_CONSOLE] = "console",
    [SV_PLAN_TAP] = "tap",         [SV_PLAN_VHOST] = "vhost-net", [SV_PLAN_DISK] = "disk",
    [SV_PLAN_BASE] = "base",       [SV_PLAN_SEED] = "seed",       [SV_PLAN_FW_CODE] = "firmware-code",
    [SV_PLAN_FW_VARS] = "firmware-vars", [SV_PLAN_SERIAL] = "serial-log", [SV_PLAN_KERNEL] = "kernel",
    [SV_PLAN_INITRD] = "initrd",
};

const char *sv_plan_fd_name(sv_plan_fd what) {
    return (unsigned)what < QV_ARRAY_SIZE(fd_names) ? fd_names[what] : "?";
}

int sv_launch_plan_fd(const sv_launch_plan *p, sv_plan_fd what, unsigned nic) {
    for (size_t i = 0; i < p->n_slots; i++)
        if (p->slots[i].what == what && ((what != SV_PLAN_TAP && what != SV_PLAN_VHOST) || p->slots[i].nic == nic))
            return 3 + (int)i;
    return 0;
}

static void add(sv_launch_plan *p, sv_plan_fd what, unsigned nic) {
    p->slots[p->n_slots++] = (sv_plan_slot){what, nic};
}

int sv_launch_plan_make(const sv_launch_input *in, sv_launch_plan *ret, qv_error *err) {
    sv_launch_plan p = {0};
    add(&p, SV_PLAN_QMP, 0);
    if (in->qga)
        add(&p, SV_PLAN_QGA, 0);
    add(&p, SV_PLAN_CONSOLE, 0);
    for (unsigned i = 0; i < ND_NICS_MAX; i++) {
        if (in->tap[i])
            add(&p, SV_PLAN_TAP, i);
        if (in->vhost[i])
            add(&p, SV_PLAN_VHOST, i);
    }
    for (int f = 0; f < SV_PLAN_FILES; f++)
        if (in->file[f])
            add(&p, (sv_plan_fd)(SV_PLAN_DISK + f), 0);
    int tap_fds[ND_NICS_MAX], vhost_fds[ND_NICS_MAX];
    for (unsigned i = 0; i < ND_NICS_MAX; i++) {
        tap_fds[i] = in->tap[i] ? sv_launch_plan_fd(&p, SV_PLAN_TAP, i) : -1;
        vhost_fds[i] = in->vhost[i] ? sv_launch_plan_fd(&p, SV_PLAN_VHOST, i) : -1;
    }
    sv_vm_paths paths = {
        .disk = in->disk,
        .serial_log = in->serial_log,
        .pidfile = in->pidfile,
        .qga_fd = sv_launch_plan_fd(&p, SV_PLAN_QGA, 0),
        .console_fd = sv_launch_plan_fd(&p, SV_PLAN_CONSOLE, 0),
        .seed_iso = in->file[SV_PLAN_SEED - SV_PLAN_DISK] ? in->seed_iso : NULL,
        .disk_fd = sv_launch_plan_fd(&p, SV_PLAN_DISK, 0),
        .base_fd = sv_launch_plan_fd(&p, SV_PLAN_BASE, 0),
        .seed_fd = sv_launch_plan_fd(&p, SV_PLAN_SEED, 0),
        .fw_code_fd = sv_launch_plan_fd(&p, SV_PLAN_FW_CODE, 0),
        .fw_vars_fd = sv_launch_plan_fd(&p, SV_PLAN_FW_VARS, 0),
        .serial_fd = sv_launch_plan_fd(&p, SV_PLAN_SERIAL, 0),
        .kernel_fd = sv_launch_plan_fd(&p, SV_PLAN_KERNEL, 0),
        .initrd_fd = sv_launch_plan_fd(&p, SV_PLAN_INITRD, 0),
        .firmware_vars = in->firmware_vars,
        .qmp_fd = sv_launch_plan_fd(&p, SV_PLAN_QMP, 0),
        .ssh_port = in->ssh_port,
        .tap_fds = tap_fds,
        .vhost_fds = vhost_fds,
        .hostdevs = in->hostdevs,
        .n_hostdevs = in->n_hostdevs,
        .numa_bind = in->numa_bind,
        .numa_node = in->numa_node,
    };
    /* VFIO pins all guest RAM (and a little more for its own mappings) */
    p.memlock = in->n_hostdevs ? in->spec->memory + (1ull << 30) : 0;
    int r = sv_qemu_argv(in->spec, &in->env, &paths, &p.argv, err);
    if (r < 0)
        return r;
    *ret = p;
    return 0;
}

void sv_launch_plan_clear(sv_launch_plan *p) {
    sv_argv_free(p->argv);
    *p = (sv_launch_plan){0};
}

char *sv_launch_plan_log(const sv_launch_plan *p) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    if (p->memlock)
        fprintf(f, "RLIMIT_MEMLOCK %llu (guest RAM + 1 GiB: VFIO pins all guest memory)\n",
                (unsigned long long)p->memlock);
    for (char **a = p->argv; a && *a; a++)
        fprintf(f, "%s%s", *a, a[1] ? " " : "\n");
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}
