/* Durable records of the devices qvisor took from their drivers
 * (STATE_DIR/vfio/BDF.json), so a crash anywhere can be repaired. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "util.h"
#include "fileio.h"
#include "vfio/vfio.h"

static const char *const state_names[] = {"binding", "bound", "returning", "stuck"};

const char *vfio_rec_state_to_string(int s) {
    if (s < 0 || s >= (int)(sizeof(state_names) / sizeof(state_names[0])))
        return "unknown";
    return state_names[s];
}

static bool bdf_is_file_name(const char *bdf) {
    char norm[VFIO_BDF_MAX];
    return vfio_bdf_normalize(bdf, norm) == 0 && strcmp(norm, bdf) == 0;
}

int vfio_record_save(const char *dir, const vfio_record *r) {
    if (!bdf_is_file_name(r->bdf))
        return -EINVAL;
    int rc = qv_mkdir_p(dir, 0755);
    if (rc < 0)
        return rc;
    json_t *j = json_pack("{s:s, s:s, s:s?, s:b, s:s, s:s?}", "bdf", r->bdf, "vm", r->vm, "driver",
                          r->driver[0] ? r->driver : NULL, "keep", r->keep, "state",
                          vfio_rec_state_to_string(r->state), "reason", r->reason[0] ? r->reason : NULL);
    if (!j)
        return -ENOMEM;
    _cleanup_free_ char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (!text)
        return -ENOMEM;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.json", dir, r->bdf);
    _cleanup_free_ char *line = NULL;
    if (asprintf(&line, "%s\n", text) < 0)
        return -ENOMEM;
    return qv_write_file_atomic(path, line, strlen(line), 0644);
}

static int copy_str(char *dst, size_t size, json_t *v) {
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (strlen(s) >= size)
        return -EBADMSG;
    memcpy(dst, s, strlen(s) + 1);
    return 0;
}

int vfio_record_load(const char *dir, const char *bdf, vfio_record *ret) {
    if (!bdf_is_file_name(bdf))
        return -EINVAL;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.json", dir, bdf);
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    int rc = qv_read_file(path, 64 * 1024, &data, &len);
    if (rc < 0)
        return rc;
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return -EBADMSG;
    }
    vfio_record r = {0};
    rc = 0;
    if (copy_str(r.bdf, sizeof(r.bdf), json_object_get(j, "bdf")) < 0 || strcmp(r.bdf, bdf) != 0 ||
        copy_str(r.vm, sizeof(r.vm), json_object_get(j, "vm")) < 0 ||
        copy_str(r.driver, sizeof(r.driver), json_object_get(j, "driver")) < 0 ||
        copy_str(r.reason, sizeof(r.reason), json_object_get(j, "reason")) < 0)
        rc = -EBADMSG;
    r.keep = json_is_true(json_object_get(j, "keep"));
    const char *st = json_string_value(json_object_get(j, "state"));
    r.state = -1;
    for (size_t i = 0; st && i < sizeof(state_names) / sizeof(state_names[0]); i++)
        if (strcmp(st, state_names[i]) == 0)
            r.state = (int)i;
    if (r.state < 0)
        rc = -EBADMSG;
    json_decref(j);
    if (rc == 0)
        *ret = r;
    return rc;
}

int vfio_record_remove(const char *dir, const char *bdf) {
    if (!bdf_is_file_name(bdf))
        return -EINVAL;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.json", dir, bdf);
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0)
        (void)fsync(dfd);
    return 0;
}

static int record_cmp(const void *a, const void *b) {
    return strcmp(((const vfio_record *)a)->bdf, ((const vfio_record *)b)->bdf);
}

int vfio_record_list(const char *dir, vfio_record **ret, size_t *ret_n) {
    *ret = NULL;
    *ret_n = 0;
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    vfio_record *list = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0 || len - 5 >= VFIO_BDF_MAX)
            continue;
        char bdf[VFIO_BDF_MAX];
        memcpy(bdf, de->d_name, len - 5);
        bdf[len - 5] = '\0';
        vfio_record r;
        if (vfio_record_load(dir, bdf, &r) < 0)
            continue;
        vfio_record *grown = realloc(list, (n + 1) * sizeof(*list));
        if (!grown) {
            free(list);
            return -ENOMEM;
        }
        list = grown;
        list[n++] = r;
    }
    if (n)
        qv_qsort(list, n, sizeof(*list), record_cmp);
    *ret = list;
    *ret_n = n;
    return 0;
}
