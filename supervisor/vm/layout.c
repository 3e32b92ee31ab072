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

#define GUEST_TMP_TAG ".qvisor-"
#define ID_DIGITS 16

static bool hex_id(const char *s) {
    for (size_t i = 0; i < ID_DIGITS; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[ID_DIGITS] == '\0';
}

int sv_layout_copy_mark(uint64_t id, char *buf, size_t len) {
    return fit(snprintf(buf, len, "%s%016llx", SV_VM_COPY_MARK_PREFIX, (unsigned long long)id), len);
}

bool sv_layout_copy_mark_entry(const char *entry) {
    size_t p = strlen(SV_VM_COPY_MARK_PREFIX);
    return strncmp(entry, SV_VM_COPY_MARK_PREFIX, p) == 0 && hex_id(entry + p);
}

int sv_layout_guest_tmp(const char *target, uint64_t id, char *buf, size_t len) {
    const char *slash = strrchr(target, '/');
    if (target[0] != '/' || !slash || !slash[1])
        return -EINVAL;
    int dir_len = slash == target ? 0 : (int)(slash - target);
    return fit(snprintf(buf, len, "%.*s/.%s" GUEST_TMP_TAG "%016llx", dir_len, target, slash + 1,
                        (unsigned long long)id),
               len);
}

int sv_layout_copy_mark_parse(const char *text, size_t len, char *ret, size_t ret_len) {
    if (len > 0 && text[len - 1] == '\n')
        len--;
    if (len < 2 || len > SV_GUEST_PATH_MAX || text[0] != '/')
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
            return -EINVAL; /* NUL, newline and every other control byte */
    const char *base = text;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '/')
            base = text + i + 1;
    size_t blen = len - (size_t)(base - text), tag = strlen(GUEST_TMP_TAG);
    /* ".X" + ".qvisor-" + 16 hex digits, X at least one byte */
    if (blen < 2 + tag + ID_DIGITS || base[0] != '.')
        return -EINVAL;
    const char *t = base + blen - ID_DIGITS - tag;
    char id[ID_DIGITS + 1];
    memcpy(id, t + tag, ID_DIGITS);
    id[ID_DIGITS] = '\0';
    if (memcmp(t, GUEST_TMP_TAG, tag) != 0 || !hex_id(id))
        return -EINVAL;
    if (len + 1 > ret_len)
        return -ENAMETOOLONG;
    memcpy(ret, text, len);
    ret[len] = '\0';
    return 0;
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
