#include "testlib.h"

#include "fileio.h"
#include "spec/vmspec.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t qv_test_timeout_ms(uint64_t base_ms) {
    const char *m = getenv("QVISOR_TEST_TIMEOUT_MULTIPLIER");
    long mul = m ? strtol(m, NULL, 10) : 1;
    if (mul < 1)
        mul = 1;
    return base_ms * (uint64_t)mul;
}

char *qv_test_mkdtemp(const char *prefix) {
    const char *tmp = getenv("TMPDIR");
    char *path;
    if (asprintf(&path, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix) < 0)
        abort();
    if (!mkdtemp(path))
        abort();
    return path;
}

void qv_test_rm_rf(const char *path) {
    if (path)
        qv_rm_rf(path);
}

void qv_test_write(const char *dir, const char *rel, const char *content) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash) {
        *slash = '\0';
        assert_int_equal(qv_mkdir_p(parent, 0755), 0);
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

sv_vmspec *qv_test_spec(const char *json) {
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    if (!j)
        fail_msg("%s: %s", json, je.text);
    sv_vmspec *s = NULL;
    qv_error err = {0};
    if (sv_vmspec_from_json(j, &s, &err) < 0)
        fail_msg("%s", err.msg);
    json_decref(j);
    sv_config *c = sv_config_new_default();
    assert_non_null(c);
    int r = sv_vmspec_complete(s, c, &err);
    sv_config_free(c);
    if (r < 0)
        fail_msg("%s", err.msg);
    return s;
}
