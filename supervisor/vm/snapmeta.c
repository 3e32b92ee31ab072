/* The pure parts of disk snapshots (snapshot.h): names, QEMU's snapshot
 * lists read as hostile input, qvisor's records and their reconciliation
 * with the image. */
#include "supervisor/vm/snapshot.h"

#include <errno.h>
#include <string.h>

bool sv_snapshot_name_valid(const char *name) {
    if (!name)
        return false;
    size_t n = strlen(name);
    if (n == 0 || n > SV_SNAPSHOT_NAME_MAX)
        return false;
    bool digits = true;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '-' && ch != '_' && ch != '.')))
            return false;
        if (ch < '0' || ch > '9')
            digits = false;
    }
    return !digits;
}

int sv_snapshot_name_check(const char *name, qv_error *err) {
    if (sv_snapshot_name_valid(name))
        return 0;
    return qv_error_set(err, EINVAL,
                        "'%.80s' is not a valid snapshot name (1 to %d letters, digits, '.', '_' and '-', starting "
                        "with a letter or digit, not only digits)",
                        name ? name : "", SV_SNAPSHOT_NAME_MAX);
}

/* A string member of 1..max bytes without NUL, or NULL. */
static const char *str_member(json_t *o, const char *key, size_t max) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return NULL;
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    if (len == 0 || len > max || strlen(s) != len)
        return NULL;
    return s;
}

/* A non-negative integer member: 0 and *ret, or -1. */
static int uint_member(json_t *o, const char *key, json_int_t *ret) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *ret = json_integer_value(v);
    return 0;
}

int sv_snapshot_parse_image(json_t *image, json_t **ret, qv_error *err) {
    if (!json_is_object(image))
        return qv_error_set(err, EBADMSG, "the image information is not an object");
    json_t *snaps = json_object_get(image, "snapshots");
    json_t *out = json_array();
    if (!out)
        return qv_error_set(err, ENOMEM, "out of memory");
    if (!snaps) {
        *ret = out;
        return 0;
    }
    if (!json_is_array(snaps) || json_array_size(snaps) > SV_SNAPSHOT_MAX) {
        json_decref(out);
        return qv_error_set(err, EBADMSG, "the image's snapshot list is not an array of at most %d entries",
                            SV_SNAPSHOT_MAX);
    }
    size_t i;
    json_t *s;
    json_array_foreach(snaps, i, s) {
        const char *id = json_is_object(s) ? str_member(s, "id", 64) : NULL;
        const char *name = id ? str_member(s, "name", SV_SNAPSHOT_IMAGE_NAME_MAX) : NULL;
        json_int_t secs = 0, vmstate = 0;
        if (!name || uint_member(s, "date-sec", &secs) < 0 || uint_member(s, "vm-state-size", &vmstate) < 0) {
            json_decref(out);
            return qv_error_set(err, EBADMSG, "the image's snapshot #%zu is malformed (id, name, date-sec, "
                                              "vm-state-size)", i + 1);
        }
        json_t *e = json_pack("{s:s, s:s, s:I, s:I}", "id", id, "name", name, "time", secs, "vm_state_size", vmstate);
        if (!e || json_array_append_new(out, e) < 0) {
            json_decref(out);
            return qv_error_set(err, ENOMEM, "out of memory");
        }
    }
    *ret = out;
    return 0;
}

json_t *sv_snapshot_find_node(json_t *query_block, const char *node) {
    size_t i;
    json_t *b;
    if (!json_is_array(query_block))
        return NULL;
    json_array_foreach(query_block, i, b) {
        json_t *ins = json_object_get(b, "inserted");
        const char *n = json_string_value(json_object_get(ins, "node-name"));
        if (n && strcmp(n, node) == 0)
            return json_object_get(ins, "image");
    }
    return NULL;
}

json_t *sv_snapmeta_parse(const char *text) {
    json_t *out = json_array();
    if (!text || !out)
        return out;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    json_t *recs = json_object_get(root, "snapshots");
    size_t i;
    json_t *r;
    json_array_foreach(recs, i, r) {
        const char *name = str_member(r, "name", SV_SNAPSHOT_IMAGE_NAME_MAX);
        json_int_t started, finished, disk = 0;
        json_t *frozen = json_object_get(r, "frozen");
        const char *state = str_member(r, "state", 16);
        if (!name || uint_member(r, "started", &started) < 0 || uint_member(r, "finished", &finished) < 0 ||
            !json_is_boolean(frozen) || !state)
            continue;
        uint_member(r, "disk_size", &disk);
        json_array_append_new(out, json_pack("{s:s, s:I, s:I, s:b, s:s, s:I}", "name", name, "started", started,
                                             "finished", finished, "frozen", json_is_true(frozen), "state", state,
                                             "disk_size", disk));
    }
    json_decref(root);
    return out;
}

char *sv_snapmeta_dump(json_t *records) {
    json_t *root = json_pack("{s:O}", "snapshots", records);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    return text;
}

json_t *sv_snapmeta_find(json_t *records, json_t *s) {
    const char *name = json_string_value(json_object_get(s, "name"));
    json_int_t t = json_integer_value(json_object_get(s, "time"));
    size_t i;
    json_t *r;
    if (!name)
        return NULL;
    json_array_foreach(records, i, r) {
        json_int_t from = json_integer_value(json_object_get(r, "started")) - 2,
                   to = json_integer_value(json_object_get(r, "finished")) + 2;
        if (strcmp(json_string_value(json_object_get(r, "name")) ?: "", name) == 0 && t >= from && t <= to)
            return r;
    }
    return NULL;
}

json_t *sv_snapshot_reconcile(json_t *image_snaps, json_t *records, json_t **ret_pruned) {
    json_t *list = json_array(), *pruned = json_array();
    size_t i;
    json_t *s;
    json_array_foreach(image_snaps, i, s) {
        json_t *e = json_deep_copy(s);
        json_t *r = sv_snapmeta_find(records, s);
        if (!e)
            continue;
        if (r) {
            json_object_set(e, "frozen", json_object_get(r, "frozen"));
            json_object_set(e, "state", json_object_get(r, "state"));
            json_int_t disk = json_integer_value(json_object_get(r, "disk_size"));
            json_object_set_new(e, "disk_size", disk > 0 ? json_integer(disk) : json_null());
            /* a record matches one snapshot: the image's names are unique */
            bool have = false;
            size_t k;
            json_t *p;
            json_array_foreach(pruned, k, p) have |= p == r;
            if (!have)
                json_array_append(pruned, r);
        } else {
            json_object_set_new(e, "frozen", json_null());
            json_object_set_new(e, "state", json_null());
            json_object_set_new(e, "disk_size", json_null());
        }
        json_array_append_new(list, e);
    }
    if (ret_pruned)
        *ret_pruned = pruned;
    else
        json_decref(pruned);
    return list;
}

bool sv_snapshot_listed(json_t *image_snaps, const char *name) {
    size_t i;
    json_t *s;
    json_array_foreach(image_snaps, i, s)
        if (strcmp(json_string_value(json_object_get(s, "name")) ?: "", name) == 0)
            return true;
    return false;
}
