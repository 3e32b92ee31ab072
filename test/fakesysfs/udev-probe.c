/* udev-probe: what vfio discovery and binding do, reduced to a test tool.
 *
 *   udev-probe [list | write REL VALUE | read REL]...
 *
 * Commands run in order.  `list` enumerates subsystem "pci" through libudev
 * and prints one JSON object per device (bdf, class, vendor, device,
 * driver, iommu_group, numa_node, bridge, vendor_db, model_db), sorted by
 * address.  `write` is one qv_sysroot_write() below $QVISOR_SYSROOT, the
 * product's write path, and prints {"write": REL, "result": "ok"|"EBUSY"|…}.
 * `read` prints {"read": REL, "value": first line} through qv_sysroot.
 *
 * Under umockdev (UMOCKDEV_DIR=ROOT) libudev reads ROOT/sys as /sys; under
 * libfakesysfs the writes change that same tree (docs/fakesysfs.md).
 * Exit status 0 unless a command could not run at all. */
#include <errno.h>
#include <jansson.h>
#include <libudev.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "sysroot.h"
#include "vfio/vfio.h"

QV_DEFINE_TRIVIAL_CLEANUP(struct udev *, udev_unref)
QV_DEFINE_TRIVIAL_CLEANUP(struct udev_enumerate *, udev_enumerate_unref)
QV_DEFINE_TRIVIAL_CLEANUP(struct udev_device *, udev_device_unref)

static json_t *str_or_null(const char *s) {
    return s ? json_string(s) : json_null();
}

/* A sysfs number ("0x10de", "1", "-1") as an integer; null when absent. */
static json_t *attr_int(struct udev_device *d, const char *name) {
    const char *v = udev_device_get_sysattr_value(d, name);
    if (!v)
        return json_null();
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 0);
    if (errno || end == v)
        return json_null();
    return json_integer(n);
}

/* Group number from the iommu_group link's last component; null without
 * the link (no IOMMU for the device). */
static json_t *iommu_group(const char *syspath) {
    char link[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof link, "%s/iommu_group", syspath);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0)
        return json_null();
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    return json_integer(strtoll(base ? base + 1 : target, NULL, 10));
}

static bool is_bridge(const char *syspath) {
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/pci_bus", syspath);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void print_json(json_t *o) {
    _cleanup_free_ char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s)
        printf("%s\n", s);
}

static int cmd_list(void) {
    _cleanup_(udev_unrefp) struct udev *udev = udev_new();
    if (!udev)
        return -ENOMEM;
    _cleanup_(udev_enumerate_unrefp) struct udev_enumerate *en = udev_enumerate_new(udev);
    if (!en)
        return -ENOMEM;
    int r = udev_enumerate_add_match_subsystem(en, "pci");
    if (r >= 0)
        r = udev_enumerate_scan_devices(en);
    if (r < 0)
        return r;
    struct udev_list_entry *e;
    udev_list_entry_foreach(e, udev_enumerate_get_list_entry(en)) {
        const char *syspath = udev_list_entry_get_name(e);
        _cleanup_(udev_device_unrefp) struct udev_device *d = udev_device_new_from_syspath(udev, syspath);
        if (!d)
            continue;
        _cleanup_(json_decrefp) json_t *o = json_object();
        json_object_set_new(o, "bdf", str_or_null(udev_device_get_sysname(d)));
        json_object_set_new(o, "class", str_or_null(udev_device_get_sysattr_value(d, "class")));
        json_object_set_new(o, "vendor", str_or_null(udev_device_get_sysattr_value(d, "vendor")));
        json_object_set_new(o, "device", str_or_null(udev_device_get_sysattr_value(d, "device")));
        json_object_set_new(o, "driver", str_or_null(udev_device_get_driver(d)));
        json_object_set_new(o, "iommu_group", iommu_group(syspath));
        json_object_set_new(o, "numa_node", attr_int(d, "numa_node"));
        json_object_set_new(o, "bridge", json_boolean(is_bridge(syspath)));
        json_object_set_new(o, "vendor_db",
                            str_or_null(udev_device_get_property_value(d, "ID_VENDOR_FROM_DATABASE")));
        json_object_set_new(o, "model_db",
                            str_or_null(udev_device_get_property_value(d, "ID_MODEL_FROM_DATABASE")));
        json_object_set_new(o, "syspath", json_string(syspath));
        print_json(o);
    }
    return 0;
}

static const char *result_name(int r) {
    switch (-r) {
    case 0: return "ok";
    case EBUSY: return "EBUSY";
    case ENODEV: return "ENODEV";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EACCES: return "EACCES";
    default: return strerror(-r);
    }
}

static void cmd_write(const char *rel, const char *value) {
    int r = qv_sysroot_write(rel, value);
    _cleanup_(json_decrefp) json_t *o = json_pack("{s:s, s:s}", "write", rel, "result", result_name(r));
    print_json(o);
}

static void cmd_read(const char *rel) {
    char buf[4096];
    int r = qv_sysroot_read_line(rel, buf, sizeof buf);
    _cleanup_(json_decrefp) json_t *o = r < 0 ? json_pack("{s:s, s:s}", "read", rel, "result", result_name(r))
                                              : json_pack("{s:s, s:s}", "read", rel, "value", buf);
    print_json(o);
}

/* The product's own discovery (vfio_gpu_list_get), one JSON line per GPU. */
static int cmd_gpus(void) {
    vfio_gpu_list l = {0};
    qv_error err = {0};
    int r = vfio_gpu_list_get(&l, &err);
    if (r < 0) {
        fprintf(stderr, "udev-probe: gpus: %s\n", err.msg);
        return r;
    }
    for (size_t i = 0; i < l.n; i++) {
        const vfio_gpu *g = &l.gpus[i];
        json_t *comp = json_array(), *grp = json_array();
        for (size_t k = 0; k < g->n_companions; k++)
            json_array_append_new(comp, json_string(g->companions[k].bdf));
        for (size_t k = 0; k < g->n_group; k++)
            json_array_append_new(grp, json_string(g->group[k].bdf));
        _cleanup_(json_decrefp) json_t *o = json_pack(
            "{s:s, s:i, s:s, s:i, s:i, s:s, s:s, s:o, s:o}", "gpu", g->dev.bdf, "index", g->index, "driver",
            g->dev.driver, "iommu_group", g->dev.iommu_group, "numa_node", g->dev.numa_node, "vendor",
            g->dev.vendor_name, "device", g->dev.device_name, "companions", comp, "group", grp);
        print_json(o);
    }
    vfio_gpu_list_clear(&l);
    return 0;
}

int main(int argc, char **argv) {
    int r = qv_sysroot_set(NULL);
    if (r < 0) {
        fprintf(stderr, "udev-probe: sysroot: %s\n", strerror(-r));
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "list") == 0) {
            r = cmd_list();
            if (r < 0) {
                fprintf(stderr, "udev-probe: enumerate: %s\n", strerror(-r));
                return 1;
            }
        } else if (strcmp(argv[i], "gpus") == 0) {
            if (cmd_gpus() < 0)
                return 1;
        } else if (strcmp(argv[i], "write") == 0 && i + 2 < argc) {
            cmd_write(argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (strcmp(argv[i], "read") == 0 && i + 1 < argc) {
            cmd_read(argv[i + 1]);
            i += 1;
        } else {
            fprintf(stderr, "usage: udev-probe [list | gpus | write REL VALUE | read REL]...\n");
            return 2;
        }
        fflush(stdout);
    }
    qv_sysroot_close();
    return 0;
}
