/* Moving devices between their host driver and vfio-pci, the way libvirt
 * does it: driver_override + unbind + drivers_probe, and back.  Everything
 * here blocks (sysfs writes can hang for good on some cards): run it on a
 * thread of its own (vfio/job.c), never on the event loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "sysroot.h"
#include "util.h"
#include "vfio/bind.h"

#define VERIFY_MS 3000u /* drivers may probe asynchronously: how long a bind may take to show */

static void step(vfio_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void step(vfio_ctx *ctx, const char *fmt, ...) {
    if (!ctx || !ctx->step)
        return;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ctx->step(ctx->userdata, buf);
}

static bool abandoned(const vfio_ctx *ctx) {
    return ctx && ctx->abandoned && ctx->abandoned(ctx->userdata);
}

int vfio_current_driver(const char *bdf, char ret[VFIO_DRIVER_MAX]) {
    char rel[128], target[512];
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s", bdf);
    int r = qv_sysroot_exists(rel);
    if (r <= 0)
        return r == 0 ? -ENODEV : r;
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/driver", bdf);
    r = qv_sysroot_readlink(rel, target, sizeof target);
    if (r == -ENOENT) {
        ret[0] = '\0';
        return 0;
    }
    if (r < 0)
        return r;
    const char *base = strrchr(target, '/');
    snprintf(ret, VFIO_DRIVER_MAX, "%s", base ? base + 1 : target);
    return 0;
}

static int write_attr(vfio_ctx *ctx, const char *bdf, const char *rel, const char *value, qv_error *err) {
    char shown[64];
    snprintf(shown, sizeof shown, "%s", strcmp(value, "\n") == 0 ? "\\n" : value);
    step(ctx, "%s: writing '%s' to /%s", bdf, shown, rel);
    int r = qv_sysroot_write(rel, value);
    if (r < 0)
        return qv_error_set(err, r, "%s: writing '%s' to /%s failed: %s", bdf, shown, rel, strerror(-r));
    return 0;
}

/* Waits until the device's driver is `want` ("" for none). */
static int verify(const char *bdf, const char *want, qv_error *err) {
    char now[VFIO_DRIVER_MAX] = "";
    uint64_t deadline = qv_now_ms() + VERIFY_MS;
    for (;;) {
        int r = vfio_current_driver(bdf, now);
        if (r == -ENODEV)
            return qv_error_set(err, ENODEV, "%s: the device vanished", bdf);
        if (r < 0)
            return qv_error_set(err, r, "%s: cannot read its driver: %s", bdf, strerror(-r));
        if (strcmp(now, want) == 0)
            return 0;
        if (qv_now_ms() >= deadline)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!want[0])
        return qv_error_set(err, EIO, "%s: still bound to %s after unbinding", bdf, now);
    return qv_error_set(err, EIO, "%s: bound to %s, not %s, after the probe", bdf, now[0] ? now : "no driver", want);
}

int vfio_bind_one(vfio_ctx *ctx, const char *bdf, qv_error *err) {
    char drv[VFIO_DRIVER_MAX], rel[128];
    int r = vfio_current_driver(bdf, drv);
    if (r < 0)
        return qv_error_set(err, r, "%s: %s", bdf, r == -ENODEV ? "no such device" : strerror(-r));
    if (qv_sysroot_exists("sys/bus/pci/drivers/" VFIO_DRIVER) <= 0)
        return qv_error_set(err, ENOENT, "the vfio-pci driver is not loaded (modprobe vfio-pci)");
    /* the override first: whatever probes the device next gets vfio-pci */
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/driver_override", bdf);
    if ((r = write_attr(ctx, bdf, rel, VFIO_DRIVER, err)) < 0)
        return r;
    if (strcmp(drv, VFIO_DRIVER) == 0)
        return 0;
    if (abandoned(ctx))
        return qv_error_set(err, ECANCELED, "%s: abandoned", bdf);
    if (drv[0]) {
        snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/driver/unbind", bdf);
        if ((r = write_attr(ctx, bdf, rel, bdf, err)) < 0)
            return r;
        if ((r = verify(bdf, "", err)) < 0)
            return r;
    }
    if (abandoned(ctx))
        return qv_error_set(err, ECANCELED, "%s: abandoned", bdf);
    if ((r = write_attr(ctx, bdf, "sys/bus/pci/drivers_probe", bdf, err)) < 0)
        return r;
    return verify(bdf, VFIO_DRIVER, err);
}

int vfio_release_one(vfio_ctx *ctx, const char *bdf, const char *driver, qv_error *err) {
    char drv[VFIO_DRIVER_MAX], rel[160];
    int r = vfio_current_driver(bdf, drv);
    if (r < 0)
        return qv_error_set(err, r, "%s: %s", bdf, r == -ENODEV ? "the device vanished" : strerror(-r));
    if (strcmp(drv, VFIO_DRIVER) == 0) {
        snprintf(rel, sizeof rel, "sys/bus/pci/drivers/%s/unbind", VFIO_DRIVER);
        if ((r = write_attr(ctx, bdf, rel, bdf, err)) < 0)
            return r;
        if ((r = verify(bdf, "", err)) < 0)
            return r;
    } else if (drv[0] && strcmp(drv, driver) != 0) {
        return qv_error_set(err, EBUSY, "%s: now bound to %s, which qvisor did not do; left alone", bdf, drv);
    }
    if (abandoned(ctx))
        return qv_error_set(err, ECANCELED, "%s: abandoned", bdf);
    snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s/driver_override", bdf);
    if ((r = write_attr(ctx, bdf, rel, "\n", err)) < 0)
        return r;
    if (!driver[0] || strcmp(drv, driver) == 0)
        return 0; /* it had no driver before: leave it without one */
    /* the recorded driver explicitly; a probe if that is refused */
    snprintf(rel, sizeof rel, "sys/bus/pci/drivers/%s/bind", driver);
    qv_error bind_err = {0};
    if (qv_sysroot_exists(rel) <= 0 || write_attr(ctx, bdf, rel, bdf, &bind_err) < 0) {
        if ((r = write_attr(ctx, bdf, "sys/bus/pci/drivers_probe", bdf, err)) < 0)
            return r;
    }
    r = verify(bdf, driver, err);
    if (r < 0 && bind_err.code)
        qv_error_prefix(err, "%s; then", bind_err.msg);
    return r;
}
