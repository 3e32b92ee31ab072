/* Where a VM's files are (see layout.h). */
#include "supervisor/vm/layout.h"

#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int fit(int n, size_t len) {
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int sv_layout_instance_dir(const sv_config *c, const char *vm_name, char *buf, size_t len) {
    return fit(snprintf(buf, len, "%s/%s", c->instances_dir, vm_name), len);
}

int sv_layout_instance_file(const char *dir, const char *file, char *buf, size_t len) {
    return fit(snprintf(buf, len, "%s/%s", dir, file), len);
}

int sv_layout_leftover(const char *vm_name, bool creating, char *buf, size_t len) {
    return fit(snprintf(buf, len, ".%s%s", vm_name, creating ? SV_VM_CREATING_SUFFIX : SV_VM_REMOVING_SUFFIX), len);
}

bool sv_layout_leftover_name(const char *entry, char ret[64], bool *ret_creating) {
    size_t len = strlen(entry);
    if (entry[0] != '.')
        return false;
    bool creating = qv_has_suffix(entry, SV_VM_CREATING_SUFFIX);
    if (!creating && !qv_has_suffix(entry, SV_VM_REMOVING_SUFFIX))
        return false;
    size_t n = len - 1 - strlen(creating ? SV_VM_CREATING_SUFFIX : SV_VM_REMOVING_SUFFIX);
    if (n == 0 || n > QV_NAME_MAX)
        return false;
    char name[QV_NAME_MAX + 1];
    memcpy(name, entry + 1, n);
    name[n] = '\0';
    if (!qv_name_valid(name))
        return false;
    memcpy(ret, name, n + 1);
    *ret_creating = creating;
    return true;
}

int sv_layout_run_root(const sv_config *c, char *buf, size_t len) {
    return fit(snprintf(buf, len, "%s/vm", c->run_dir), len);
}

int sv_layout_run_path(const sv_config *c, const char *vm_name, const char *file, char *buf, size_t len) {
    return fit(snprintf(buf, len, "%s/vm/%s%s%s", c->run_dir, vm_name, file ? "/" : "", file ? file : ""), len);
}

bool sv_layout_pidfile_vm(const sv_config *c, const char *pidfile, char ret[64]) {
    char root[4096];
    if (sv_layout_run_root(c, root, sizeof root) < 0)
        return false;
    size_t rlen = strlen(root);
    if (strncmp(pidfile, root, rlen) != 0 || pidfile[rlen] != '/')
        return false;
    const char *n = pidfile + rlen + 1;
    const char *slash = strchr(n, '/');
    if (!slash || strcmp(slash + 1, SV_VM_PIDFILE) != 0 || (size_t)(slash - n) > QV_NAME_MAX)
        return false;
    char cand[QV_NAME_MAX + 1];
    snprintf(cand, sizeof cand, "%.*s", (int)(slash - n), n);
    if (!qv_name_valid(cand))
        return false;
    memcpy(ret, cand, strlen(cand) + 1);
    return true;
}
