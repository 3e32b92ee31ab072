/* Discovery of PCI display devices through libudev: one enumeration of the
 * PCI bus gives every function; GPUs, their companions (same slot) and their
 * IOMMU group members are picked out of it. */
#include <errno.h>
#include <libgen.h>
#include <libudev.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "util.h"
#include "dlib.h"
#include "vfio/vfio.h"

/* libudev is loaded when discovery first runs, not at every qvisor start
 * (see common/dlib.h) */
#define UDEV_FUNCTIONS(X, s) \
    X(s, udev_device_get_driver) \
    X(s, udev_device_get_property_value) \
    X(s, udev_device_get_sysattr_value) \
    X(s, udev_device_get_sysname) \
    X(s, udev_device_get_syspath) \
    X(s, udev_device_new_from_subsystem_sysname) \
    X(s, udev_device_new_from_syspath) \
    X(s, udev_device_unref) \
    X(s, udev_enumerate_add_match_subsystem) \
    X(s, udev_enumerate_get_list_entry) \
    X(s, udev_enumerate_new) \
    X(s, udev_enumerate_scan_devices) \
    X(s, udev_enumerate_unref) \
    X(s, udev_hwdb_get_properties_list_entry) \
    X(s, udev_hwdb_new) \
    X(s, udev_hwdb_unref) \
    X(s, udev_list_entry_get_name) \
    X(s, udev_list_entry_get_next) \
    X(s, udev_list_entry_get_value) \
    X(s, udev_new) \
    X(s, udev_unref)
QV_DLIB_DEFINE(U, UDEV_FUNCTIONS, "libudev.so.1", "PCI device discovery");

/* udev_list_entry_foreach() would call libudev by its linked name */
#define list_foreach(e, first) for ((e) = (first); (e); (e) = U.udev_list_entry_get_next(e))

/* cleanup helpers (udev_unrefp, ...) through the loaded library */
#define UDEV_CLEANUP(type, unref) \
    static void unref##p(struct type **p) { \
        if (*p) \
            U.unref(*p); \
    }
UDEV_CLEANUP(udev, udev_unref)
UDEV_CLEANUP(udev_enumerate, udev_enumerate_unref)
UDEV_CLEANUP(udev_device, udev_device_unref)
UDEV_CLEANUP(udev_hwdb, udev_hwdb_unref)

static unsigned attr_hex(struct udev_device *d, const char *name) {
    const char *v = U.udev_device_get_sysattr_value(d, name);
    return v ? (unsigned)strtoul(v, NULL, 16) : 0;
}

static void copy_name(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src ? src : "");
}

/* Names from the device's udev properties, else from the hwdb directly (a
 * device that udev has not processed has no properties). */
static void fill_names(struct udev *udev, struct udev_device *d, vfio_pci_dev *p) {
    copy_name(p->vendor_name, sizeof(p->vendor_name), U.udev_device_get_property_value(d, "ID_VENDOR_FROM_DATABASE"));
    copy_name(p->device_name, sizeof(p->device_name), U.udev_device_get_property_value(d, "ID_MODEL_FROM_DATABASE"));
    if (p->vendor_name[0] && p->device_name[0])
        return;
    _cleanup_(udev_hwdb_unrefp) struct udev_hwdb *hwdb = U.udev_hwdb_new(udev);
    if (!hwdb)
        return;
    char modalias[64];
    snprintf(modalias, sizeof(modalias), "pci:v%08Xd%08X", p->vendor, p->device);
    struct udev_list_entry *e;
    list_foreach(e, U.udev_hwdb_get_properties_list_entry(hwdb, modalias, 0)) {
        const char *key = U.udev_list_entry_get_name(e);
        if (!p->vendor_name[0] && strcmp(key, "ID_VENDOR_FROM_DATABASE") == 0)
            copy_name(p->vendor_name, sizeof(p->vendor_name), U.udev_list_entry_get_value(e));
        else if (!p->device_name[0] && strcmp(key, "ID_MODEL_FROM_DATABASE") == 0)
            copy_name(p->device_name, sizeof(p->device_name), U.udev_list_entry_get_value(e));
    }
}

/* The group number from the iommu_group link (libudev does not read that
 * link as an attribute); -1 when there is none. */
static int read_group(const char *syspath) {
    char link[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof(link), "%s/iommu_group", syspath);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return -1;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    char *end;
    long g = strtol(base, &end, 10);
    return (*base && !*end && g >= 0 && g <= INT_MAX) ? (int)g : -1;
}

static int fill_dev(struct udev *udev, struct udev_device *d, vfio_pci_dev *p) {
    memset(p, 0, sizeof(*p));
    const char *sysname = U.udev_device_get_sysname(d);
    if (!sysname || vfio_bdf_normalize(sysname, p->bdf) < 0)
        return -EINVAL;
    p->class_code = attr_hex(d, "class") & 0xffffff;
    p->vendor = attr_hex(d, "vendor");
    p->device = attr_hex(d, "device");
    copy_name(p->driver, sizeof(p->driver), U.udev_device_get_driver(d));
    const char *numa = U.udev_device_get_sysattr_value(d, "numa_node");
    p->numa_node = numa ? atoi(numa) : -1;
    if (p->numa_node < 0)
        p->numa_node = -1;
    const char *syspath = U.udev_device_get_syspath(d);
    p->iommu_group = syspath ? read_group(syspath) : -1;
    char bus[PATH_MAX];
    struct stat st;
    snprintf(bus, sizeof(bus), "%s/pci_bus", syspath ? syspath : "");
    p->bridge = (p->class_code >> 16) == 0x06 || (syspath && stat(bus, &st) == 0 && S_ISDIR(st.st_mode));
    fill_names(udev, d, p);
    return 0;
}

static int dev_cmp(const void *a, const void *b) {
    return strcmp(((const vfio_pci_dev *)a)->bdf, ((const vfio_pci_dev *)b)->bdf);
}

/* Every PCI function, sorted by address. */
static int enumerate_all(vfio_pci_dev **ret, size_t *ret_n, qv_error *err) {
    int rc = qv_dlib_load(&U_lib, err);
    if (rc < 0)
        return rc;
    _cleanup_(udev_unrefp) struct udev *udev = U.udev_new();
    if (!udev)
        return qv_error_set(err, -ENOMEM, "libudev: cannot start");
    _cleanup_(udev_enumerate_unrefp) struct udev_enumerate *en = U.udev_enumerate_new(udev);
    if (!en)
        return qv_error_set(err, -ENOMEM, "libudev: cannot enumerate");
    rc = U.udev_enumerate_add_match_subsystem(en, "pci");
    if (rc >= 0)
        rc = U.udev_enumerate_scan_devices(en);
    if (rc < 0)
        return qv_error_set(err, rc, "libudev: cannot list PCI devices: %s", strerror(-rc));
    vfio_pci_dev *all = NULL;
    size_t n = 0, cap = 0;
    struct udev_list_entry *e;
    list_foreach(e, U.udev_enumerate_get_list_entry(en)) {
        _cleanup_(udev_device_unrefp) struct udev_device *d =
            U.udev_device_new_from_syspath(udev, U.udev_list_entry_get_name(e));
        if (!d)
            continue; /* vanished between the scan and now */
        vfio_pci_dev p;
        if (fill_dev(udev, d, &p) < 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            vfio_pci_dev *grown = realloc(all, cap * sizeof(*all));
            if (!grown) {
                free(all);
                return qv_error_set(err, -ENOMEM, "out of memory");
            }
            all = grown;
        }
        all[n++] = p;
    }
    if (n)
        qv_qsort(all, n, sizeof(*all), dev_cmp);
    *ret = all;
    *ret_n = n;
    return 0;
}

/* Copies the devices of all[0..n) that match into a new array. */
static int collect(const vfio_pci_dev *all, size_t n, const vfio_pci_dev *gpu, bool group, vfio_pci_dev **ret,
                   size_t *ret_n) {
    vfio_pci_dev *out = calloc(n ? n : 1, sizeof(*out));
    if (!out)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool match = group ? (gpu->iommu_group >= 0 && all[i].iommu_group == gpu->iommu_group)
                           : (vfio_bdf_same_slot(all[i].bdf, gpu->bdf) && strcmp(all[i].bdf, gpu->bdf) != 0);
        if (match)
            out[k++] = all[i];
    }
    if (group && k == 0)
        out[k++] = *gpu; /* no IOMMU: the group is the device alone, as far as anyone can say */
    *ret = out;
    *ret_n = k;
    return 0;
}

void vfio_gpu_list_clear(vfio_gpu_list *l) {
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->gpus[i].companions);
        free(l->gpus[i].group);
    }
    free(l->gpus);
    l->gpus = NULL;
    l->n = 0;
}

int vfio_gpu_list_get(vfio_gpu_list *ret, qv_error *err) {
    _cleanup_free_ vfio_pci_dev *all = NULL;
    size_t n = 0;
    int rc = enumerate_all(&all, &n, err);
    if (rc < 0)
        return rc;
    vfio_gpu_list l = {0};
    for (size_t i = 0; i < n; i++)
        if (vfio_class_is_display(all[i].class_code))
            l.n++;
    l.gpus = calloc(l.n ? l.n : 1, sizeof(*l.gpus));
    if (!l.gpus)
        return qv_error_set(err, -ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!vfio_class_is_display(all[i].class_code))
            continue;
        vfio_gpu *g = &l.gpus[k];
        g->dev = all[i];
        g->index = (int)k;
        k++;
        if (collect(all, n, &all[i], false, &g->companions, &g->n_companions) < 0 ||
            collect(all, n, &all[i], true, &g->group, &g->n_group) < 0) {
            l.n = k;
            vfio_gpu_list_clear(&l);
            return qv_error_set(err, -ENOMEM, "out of memory");
        }
    }
    *ret = l;
    return 0;
}

const vfio_gpu *vfio_gpu_list_find(const vfio_gpu_list *l, const char *id) {
    char bdf[VFIO_BDF_MAX];
    if (vfio_bdf_normalize(id, bdf) == 0) {
        for (size_t i = 0; i < l->n; i++)
            if (strcmp(l->gpus[i].dev.bdf, bdf) == 0)
                return &l->gpus[i];
        return NULL;
    }
    char *end;
    long idx = strtol(id, &end, 10);
    if (!*id || *end || idx < 0 || (size_t)idx >= l->n)
        return NULL;
    return &l->gpus[idx];
}

int vfio_pci_dev_get(const char *bdf, vfio_pci_dev *ret, qv_error *err) {
    char norm[VFIO_BDF_MAX];
    if (vfio_bdf_normalize(bdf, norm) < 0)
        return qv_error_set(err, -EINVAL, "'%s' is not a PCI address (expected like 0000:01:00.0)", bdf);
    int rc = qv_dlib_load(&U_lib, err);
    if (rc < 0)
        return rc;
    _cleanup_(udev_unrefp) struct udev *udev = U.udev_new();
    if (!udev)
        return qv_error_set(err, -ENOMEM, "libudev: cannot start");
    _cleanup_(udev_device_unrefp) struct udev_device *d = U.udev_device_new_from_subsystem_sysname(udev, "pci", norm);
    if (!d)
        return qv_error_set(err, -ENOENT, "PCI device %s does not exist", norm);
    rc = fill_dev(udev, d, ret);
    if (rc < 0)
        return qv_error_set(err, rc, "PCI device %s: unreadable", norm);
    return 0;
}
