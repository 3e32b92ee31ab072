/* VM spec: its table of keys and the checks that need more than one key. */
#include "vmspec.h"

#include "cleanup.h"
#include "schema.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

static const char *const restart_names[] = {"never", "on-failure", "always", NULL};

#define F(field) offsetof(sv_vmspec, field)

/* section, name, kind, field, default, min, max, enum names, allow empty */
static const sv_key keys[] = {
    {NULL, "name", SV_K_NAME, F(name), NULL, 0, 0, NULL, false, false},
    {NULL, "image", SV_K_NAME, F(image), NULL, 0, 0, NULL, false, false},
    {NULL, "cpus", SV_K_UINT, F(cpus), NULL, 1, 1024, NULL, false, false},
    {NULL, "memory", SV_K_SIZE, F(memory), NULL, 16ull << 20, 16ull << 40, NULL, false, false},
    {NULL, "disk", SV_K_SIZE, F(disk), NULL, 1ull << 20, 64ull << 40, NULL, false, false},
    {NULL, "stop_timeout", SV_K_DURATION, F(stop_timeout_ms), NULL, 1000, 24ull * 3600 * 1000, NULL, false, false},
    {NULL, "restart", SV_K_ENUM, F(restart), "never", 0, 0, restart_names, false, false},
    {NULL, "restart_limit", SV_K_UINT, F(restart_limit), "5", 0, 1000, NULL, false, false},
    {NULL, "kernel", SV_K_PATH, F(kernel), NULL, 0, 0, NULL, false, false},
    {NULL, "initrd", SV_K_PATH, F(initrd), NULL, 0, 0, NULL, false, false},
    {NULL, "append", SV_K_STRING, F(append), NULL, 0, 0, NULL, true, false},
    {NULL, "agent", SV_K_BOOL, F(agent), "true", 0, 0, NULL, false, false},
};

static const sv_schema schema = SV_SCHEMA(keys);

const char *sv_restart_to_string(int r) {
    return r >= 0 && r <= SV_RESTART_ALWAYS ? restart_names[r] : "never";
}

sv_vmspec *sv_vmspec_new(void) {
    sv_vmspec *s = calloc(1, sizeof *s);
    if (s && sv_schema_apply_defaults(&schema, s) < 0) {
        sv_vmspec_free(s);
        return NULL;
    }
    return s;
}

void sv_vmspec_free(sv_vmspec *s) {
    if (!s)
        return;
    sv_schema_free_fields(&schema, s);
    free(s);
}

int sv_vmspec_from_yaml(const char *name, const char *data, size_t len, sv_vmspec **ret, qv_error *err) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = sv_vmspec_new();
    if (!s)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = sv_schema_load_yaml(&schema, s, name, data, len, EINVAL, err);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(s);
    return 0;
}

int sv_vmspec_from_json(json_t *j, sv_vmspec **ret, qv_error *err) {
    _cleanup_(sv_vmspec_freep) sv_vmspec *s = sv_vmspec_new();
    if (!s)
        return qv_error_set(err, ENOMEM, "out of memory");
    int r = sv_schema_load_json(&schema, s, j, "spec", EINVAL, err);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(s);
    return 0;
}

json_t *sv_vmspec_to_json(const sv_vmspec *s) {
    json_t *j = sv_schema_to_json(&schema, s);
    /* Unset values are absent (not "" or 0), so a partial spec stays partial. */
    struct {
        const char *key;
        bool unset;
    } opt[] = {
        {"name", !s->name},     {"image", !s->image},   {"kernel", !s->kernel},
        {"initrd", !s->initrd}, {"append", !s->append}, {"cpus", !s->cpus},
        {"memory", !s->memory}, {"disk", !s->disk},     {"stop_timeout", !s->stop_timeout_ms},
    };
    for (size_t i = 0; j && i < QV_ARRAY_SIZE(opt); i++)
        if (opt[i].unset)
            json_object_del(j, opt[i].key);
    return j;
}

int sv_vmspec_complete(sv_vmspec *s, const sv_config *node, qv_error *err) {
    if (!s->name)
        return qv_error_set(err, EINVAL, "spec: name: missing (every VM needs a name)");
    if (!s->image)
        return qv_error_set(err, EINVAL, "spec: image: missing (name a base image from `qvisor image list`)");
    if ((s->initrd || s->append) && !s->kernel)
        return qv_error_set(err, EINVAL, "spec: initrd and append need kernel");
    if (!s->cpus)
        s->cpus = node->vm_cpus;
    if (!s->memory)
        s->memory = node->vm_memory;
    if (!s->disk)
        s->disk = node->vm_disk;
    if (!s->stop_timeout_ms)
        s->stop_timeout_ms = node->stop_timeout_ms;
    return 0;
}
