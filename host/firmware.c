/* UEFI firmware for VMs (see firmware.h, docs/firmware.md). */
#include "host/firmware.h"

#include "cleanup.h"
#include "fileio.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int bad(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int unfit(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int unfit(char *why, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return 0;
}

/* An array of strings at key, or NULL (why set) when absent or mistyped. */
static json_t *string_array(json_t *obj, const char *key, char *why, size_t size) {
    json_t *a = json_object_get(obj, key);
    if (!json_is_array(a)) {
        bad(why, size, "\"%s\": expected an array of strings", key);
        return NULL;
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!json_is_string(v)) {
        bad(why, size, "\"%s\"[%zu]: expected a string", key, i);
        return NULL;
    }
    return a;
}

static bool array_has(json_t *a, const char *s) {
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

/* A file a descriptor names: absolute, no comma (QEMU options), no control
 * characters (they go into logs and argv), short enough. */
static int check_filename(const char *what, const char *f, char *why, size_t size) {
    if (f[0] != '/')
        return bad(why, size, "%s: '%s' is not an absolute path", what, f);
    if (strlen(f) >= PATH_MAX)
        return bad(why, size, "%s: path too long", what);
    if (strchr(f, ','))
        return bad(why, size, "%s: '%s' contains a comma, which QEMU cannot take in an option", what, f);
    for (const char *p = f; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return bad(why, size, "%s: the path contains a control character", what);
    return 0;
}

/* mapping.executable / mapping.nvram-template: {"filename", "format"}.
 * 1 usable, 0 another format, -EINVAL malformed. */
static int flash_file(json_t *mapping, const char *key, char *buf, size_t bufsize, char *why, size_t size) {
    json_t *o = json_object_get(mapping, key);
    if (!o)
        return unfit(why, size, "no \"%s\"", key);
    if (!json_is_object(o))
        return bad(why, size, "\"mapping\".\"%s\": expected an object", key);
    json_t *fn = json_object_get(o, "filename"), *fmt = json_object_get(o, "format");
    if (!json_is_string(fn))
        return bad(why, size, "\"mapping\".\"%s\".\"filename\": expected a string", key);
    if (fmt && !json_is_string(fmt))
        return bad(why, size, "\"mapping\".\"%s\".\"format\": expected a string", key);
    int r = check_filename(key, json_string_value(fn), why, size);
    if (r < 0)
        return r;
    if (fmt && strcmp(json_string_value(fmt), "raw") != 0)
        return unfit(why, size, "%s: format %s (only raw is used)", key, json_string_value(fmt));
    snprintf(buf, bufsize, "%s", json_string_value(fn));
    return 1;
}

/* A machine pattern that covers every q35 version: qvisor runs `-machine
 * q35`, the newest.  A pattern naming one version does not match "pc-q35-x". */
static bool covers_q35(const char *pattern) {
    return fnmatch(pattern, "pc-q35-x", 0) == 0 || fnmatch(pattern, "q35", 0) == 0;
}

/* targets: [{"architecture", "machines": [...]}]; 1 when one is x86_64 q35. */
static int check_targets(json_t *d, char *why, size_t size) {
    json_t *targets = json_object_get(d, "targets");
    if (!json_is_array(targets))
        return bad(why, size, "\"targets\": expected an array");
    bool fits = false;
    size_t i;
    json_t *t;
    json_array_foreach(targets, i, t) {
        if (!json_is_object(t))
            return bad(why, size, "\"targets\"[%zu]: expected an object", i);
        json_t *arch = json_object_get(t, "architecture");
        if (!json_is_string(arch))
            return bad(why, size, "\"targets\"[%zu].\"architecture\": expected a string", i);
        json_t *machines = string_array(t, "machines", why, size);
        if (!machines)
            return -EINVAL;
        if (strcmp(json_string_value(arch), "x86_64") != 0)
            continue;
        size_t j;
        json_t *m;
        json_array_foreach(machines, j, m) fits = fits || covers_q35(json_string_value(m));
    }
    return fits ? 1 : unfit(why, size, "not for x86_64 q35 machines");
}

int sv_fw_descriptor_parse(const char *text, size_t len, int want, sv_fw_choice *ret, char *why, size_t why_size) {
    if (len > SV_FW_DESCRIPTOR_MAX)
        return bad(why, why_size, "larger than %d bytes", SV_FW_DESCRIPTOR_MAX);
    json_error_t je;
    _cleanup_(json_decrefp) json_t *d = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!d)
        return bad(why, why_size, "not JSON: line %d: %s", je.line, je.text);
    if (!json_is_object(d))
        return bad(why, why_size, "expected an object");

    json_t *interfaces = string_array(d, "interface-types", why, why_size);
    if (!interfaces)
        return -EINVAL;
    json_t *features = string_array(d, "features", why, why_size);
    if (!features)
        return -EINVAL;
    json_t *mapping = json_object_get(d, "mapping");
    if (!json_is_object(mapping))
        return bad(why, why_size, "\"mapping\": expected an object");
    json_t *device = json_object_get(mapping, "device"), *mode = json_object_get(mapping, "mode");
    if (!json_is_string(device))
        return bad(why, why_size, "\"mapping\".\"device\": expected a string");
    if (mode && !json_is_string(mode))
        return bad(why, why_size, "\"mapping\".\"mode\": expected a string");
    int r = check_targets(d, why, why_size);
    if (r <= 0)
        return r;

    if (!array_has(interfaces, "uefi"))
        return unfit(why, why_size, "not UEFI");
    if (strcmp(json_string_value(device), "flash") != 0)
        return unfit(why, why_size, "mapping device %s (only flash is used)", json_string_value(device));
    if (mode && strcmp(json_string_value(mode), "split") != 0)
        return unfit(why, why_size, "flash mode %s (only split is used)", json_string_value(mode));

    bool sb = array_has(features, "secure-boot"), keys = array_has(features, "enrolled-keys"),
         smm = array_has(features, "requires-smm");
    if (want == SV_FIRMWARE_UEFI && (sb || smm))
        return unfit(why, why_size, "a Secure Boot or SMM build (uefi takes the plain one)");
    if (want == SV_FIRMWARE_UEFI_SECURE && !(sb && keys && smm))
        return unfit(why, why_size, "not Secure Boot with enrolled keys and SMM");
    if (want != SV_FIRMWARE_UEFI && want != SV_FIRMWARE_UEFI_SECURE)
        return unfit(why, why_size, "not asked for");

    sv_fw_choice c = {0};
    if ((r = flash_file(mapping, "executable", c.code, sizeof c.code, why, why_size)) <= 0)
        return r;
    if ((r = flash_file(mapping, "nvram-template", c.vars, sizeof c.vars, why, why_size)) <= 0)
        return r;
    memcpy(ret->code, c.code, sizeof c.code);
    memcpy(ret->vars, c.vars, sizeof c.vars);
    return 1;
}

/* ---- finding it on the node --------------------------------------------------- */

typedef struct descriptor {
    char name[256];
    char path[PATH_MAX];
} descriptor;

static int cmp_descriptor(const void *a, const void *b) {
    return strcmp(((const descriptor *)a)->name, ((const descriptor *)b)->name);
}

/* Adds dir's *.json files to list, unless a file of that name is there
 * already (an earlier directory overrides a later one). */
static void scan_dir(const char *dir, descriptor *list, size_t *n) {
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d)) && *n < SV_FW_DESCRIPTORS_MAX;) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 6 || len >= sizeof list->name || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        bool seen = false;
        for (size_t i = 0; i < *n && !seen; i++)
            seen = strcmp(list[i].name, e->d_name) == 0;
        if (seen)
            continue;
        descriptor *x = &list[(*n)++];
        snprintf(x->name, sizeof x->name, "%s", e->d_name);
        if ((size_t)snprintf(x->path, sizeof x->path, "%s/%s", dir, e->d_name) >= sizeof x->path)
            (*n)--;
    }
}

/* A regular file we can read (symlinks followed: Debian's .ms.fd is one). */
static bool usable_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, R_OK) == 0;
}

static const char *what_of(int want) {
    return want == SV_FIRMWARE_UEFI_SECURE ? "OVMF's Secure Boot build with Microsoft keys enrolled" : "OVMF";
}

static bool same_files(const sv_fw_choice *a, const sv_fw_choice *only) {
    return !only || (strcmp(a->code, only->code) == 0 && strcmp(a->vars, only->vars) == 0);
}

/* sv_fw_resolve, or (only != NULL) the offer whose files are exactly only's. */
static int resolve(const char *dir, int want, const sv_fw_choice *only, sv_fw_choice *ret, qv_error *err) {
    bool system = !dir || !*dir;
    const char *ovmf = system ? SV_FW_OVMF_DIR : dir;
    _cleanup_free_ descriptor *list = calloc(SV_FW_DESCRIPTORS_MAX, sizeof *list);
    if (!list)
        return qv_error_set(err, ENOMEM, "out of memory");
    size_t n = 0;
    if (system) {
        scan_dir(SV_FW_ETC_DIR, list, &n);
        scan_dir(SV_FW_SHARE_DIR, list, &n);
    } else {
        scan_dir(dir, list, &n);
    }
    qsort(list, n, sizeof *list, cmp_descriptor);

    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = qv_read_file(list[i].path, SV_FW_DESCRIPTOR_MAX, &text, &len);
        if (r < 0) {
            log_debug("firmware descriptor %s skipped: %s", list[i].path,
                      r == -EFBIG ? "larger than 64 KiB" : strerror(-r));
            continue;
        }
        if (len == 0)
            continue; /* an empty file masks the one of that name in a later directory */
        char why[512] = "";
        sv_fw_choice c;
        r = sv_fw_descriptor_parse(text, len, want, &c, why, sizeof why);
        if (r <= 0) {
            log_debug("firmware descriptor %s %s: %s", list[i].path, r < 0 ? "is malformed" : "does not fit", why);
            continue;
        }
        if (!usable_file(c.code) || !usable_file(c.vars)) {
            log_debug("firmware descriptor %s skipped: %s is missing", list[i].path,
                      usable_file(c.code) ? c.vars : c.code);
            continue;
        }
        if (!same_files(&c, only))
            continue;
        snprintf(c.source, sizeof c.source, "%s", list[i].path);
        *ret = c;
        return 0;
    }

    /* Debian's ovmf package, should no descriptor name it */
    const char *codes[2] = {"OVMF_CODE_4M.fd", NULL}, *vars = "OVMF_VARS_4M.fd";
    if (want == SV_FIRMWARE_UEFI_SECURE) {
        codes[0] = "OVMF_CODE_4M.secboot.fd";
        codes[1] = "OVMF_CODE_4M.ms.fd";
        vars = "OVMF_VARS_4M.ms.fd";
    }
    sv_fw_choice c = {0};
    snprintf(c.vars, sizeof c.vars, "%s/%s", ovmf, vars);
    snprintf(c.code, sizeof c.code, "%s/%s", ovmf, codes[0]);
    if (!usable_file(c.code) && codes[1]) {
        char alt[PATH_MAX];
        snprintf(alt, sizeof alt, "%s/%s", ovmf, codes[1]);
        if (usable_file(alt))
            memcpy(c.code, alt, sizeof alt);
    }
    const char *missing = !usable_file(c.code) ? c.code : !usable_file(c.vars) ? c.vars : NULL;
    if (only && (missing || !same_files(&c, only)))
        return -ENOENT;
    if (!missing) {
        char why[512];
        if (check_filename("OVMF", c.code, why, sizeof why) < 0 || check_filename("OVMF", c.vars, why, sizeof why) < 0)
            return qv_error_set(err, EOPNOTSUPP, "firmware %s: %s", sv_firmware_to_string(want), why);
        snprintf(c.source, sizeof c.source, "%s", ovmf);
        *ret = c;
        return 0;
    }
    if (system)
        return qv_error_set(err, EOPNOTSUPP,
                            "firmware %s needs %s, which this node does not have: no firmware descriptor in "
                            SV_FW_ETC_DIR " or " SV_FW_SHARE_DIR " offers it and %s is missing (apt-get install ovmf)",
                            sv_firmware_to_string(want), what_of(want), missing);
    return qv_error_set(err, EOPNOTSUPP,
                        "firmware %s needs %s, which this node does not have: no firmware descriptor in %s "
                        "(paths.firmware_dir) offers it and %s is missing (apt-get install ovmf, or fix "
                        "paths.firmware_dir)",
                        sv_firmware_to_string(want), what_of(want), dir, missing);
}

int sv_fw_resolve(const char *dir, int want, sv_fw_choice *ret, qv_error *err) {
    return resolve(dir, want, NULL, ret, err);
}

int sv_fw_prepare_spec(const sv_config *c, sv_vmspec *spec, qv_error *err) {
    if (spec->firmware == SV_FIRMWARE_BIOS)
        return 0;
    if (spec->firmware_code) {
        /* named by the user (or kept from an older create): check them */
        const char *files[][2] = {{"firmware_code", spec->firmware_code}, {"firmware_vars", spec->firmware_vars}};
        for (size_t i = 0; i < 2; i++) {
            char why[512];
            if (check_filename(files[i][0], files[i][1], why, sizeof why) < 0)
                return qv_error_set(err, EINVAL, "spec: %s", why);
            if (!usable_file(files[i][1]))
                return qv_error_set(err, ENOENT, "spec: %s: %s is not a readable file", files[i][0], files[i][1]);
        }
        /* Only a build this node offers: the daemon (root) copies the
         * template and QEMU opens both before it drops privileges, and the
         * guest reads its flash, so any other file would be read for the
         * client (/etc/shadow as "firmware_vars").  A custom build gets a
         * descriptor in /etc/qemu/firmware. */
        sv_fw_choice named = {0}, offered;
        snprintf(named.code, sizeof named.code, "%s", spec->firmware_code);
        snprintf(named.vars, sizeof named.vars, "%s", spec->firmware_vars);
        if (resolve(c->firmware_dir, spec->firmware, &named, &offered, NULL) < 0)
            return qv_error_set(err, EINVAL,
                                "spec: firmware_code %s with firmware_vars %s is no %s build this node offers: "
                                "name a pair a firmware descriptor lists (" SV_FW_ETC_DIR ", " SV_FW_SHARE_DIR
                                "), or leave both out",
                                spec->firmware_code, spec->firmware_vars, sv_firmware_to_string(spec->firmware));
        return 0;
    }
    sv_fw_choice fw;
    int r = sv_fw_resolve(c->firmware_dir, spec->firmware, &fw, err);
    if (r < 0)
        return r;
    char *code = strdup(fw.code), *vars = strdup(fw.vars);
    if (!code || !vars) {
        free(code);
        free(vars);
        return qv_error_set(err, ENOMEM, "out of memory");
    }
    spec->firmware_code = code;
    spec->firmware_vars = vars;
    log_debug("VM %s: firmware %s from %s: %s, variables from %s", spec->name, sv_firmware_to_string(spec->firmware),
              fw.source, fw.code, fw.vars);
    return 0;
}

int sv_fw_start_check(const sv_vmspec *spec, const char *vars_path, bool *ret_restored, qv_error *err) {
    *ret_restored = false;
    if (spec->firmware == SV_FIRMWARE_BIOS)
        return 0;
    if (!spec->firmware_code || !spec->firmware_vars)
        return qv_error_set(err, EINVAL, "firmware %s, but the spec records no OVMF files",
                            sv_firmware_to_string(spec->firmware));
    if (!usable_file(spec->firmware_code))
        return qv_error_set(err, EOPNOTSUPP,
                            "firmware %s: the OVMF code this VM was created with, %s, is missing (was the ovmf "
                            "package removed? apt-get install ovmf)",
                            sv_firmware_to_string(spec->firmware), spec->firmware_code);
    const char *vars = vars_path;
    struct stat st;
    if (lstat(vars, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            return qv_error_set(err, EINVAL, "%s is not a regular file", vars);
        return 0;
    }
    if (errno != ENOENT)
        return qv_error_set(err, errno, "cannot look at %s: %s", vars, strerror(errno));
    int r = sv_fw_vars_copy(spec->firmware_vars, vars, err);
    if (r < 0)
        return r;
    *ret_restored = true;
    return 0;
}

int sv_fw_vars_copy(const char *template_path, const char *path, qv_error *err) {
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    int r = qv_read_file(template_path, SV_FW_VARS_MAX, &data, &len);
    if (r == -EFBIG)
        return qv_error_set(err, EFBIG, "UEFI variable store template %s is larger than %u MiB", template_path,
                            SV_FW_VARS_MAX >> 20);
    if (r < 0)
        return qv_error_set(err, r == -ENOENT ? EOPNOTSUPP : -r,
                            "cannot read the UEFI variable store template %s: %s%s", template_path, strerror(-r),
                            r == -ENOENT ? " (was the ovmf package removed? apt-get install ovmf)" : "");
    if (len == 0)
        return qv_error_set(err, EINVAL, "UEFI variable store template %s is empty", template_path);
    r = qv_write_file_atomic(path, data, len, 0600);
    if (r < 0)
        return qv_error_set(err, r, "cannot write %s: %s", path, strerror(-r));
    return 0;
}
