#include "netdev/tap.h"

#include "cleanup.h"
#include "log.h"
#include "netdev/link.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>

int nd_tap_open(const char *name, int *ret_fd, qv_error *err) {
    if (!nd_ifname_valid(name))
        return qv_error_set(err, EINVAL, "invalid TAP name '%s' (1-15 characters, no '/', ':', '%%' or spaces)",
                            name ? name : "(null)");

    _cleanup_close_ int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        if (r == -ENOENT)
            return qv_error_set(err, ENOENT, "cannot open /dev/net/tun: no such device node (tun driver missing?)");
        return qv_error_set(err, r, "cannot open /dev/net/tun: %s", strerror(-r));
    }

    /* IFF_TUN_EXCL: only a new TAP.  Without it TUNSETIFF attaches to an
     * existing TAP of that name that nobody holds, e.g. a persistent one
     * left behind, and the caller would get a TAP that outlives it. */
    struct ifreq ifr = {0};
    memcpy(ifr.ifr_name, name, strlen(name) + 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int r = -errno;
        switch (r) {
        case -EBUSY:
            return qv_error_set(err, EBUSY,
                                "cannot create TAP %s: a link of that name exists (a TAP in use by another VM, "
                                "a leftover persistent TAP, or another device)",
                                name);
        case -EPERM:
            return qv_error_set(err, EPERM, "cannot create TAP %s: Operation not permitted (needs CAP_NET_ADMIN)",
                                name);
        default:
            return qv_error_set(err, r, "cannot create TAP %s: %s", name, strerror(-r));
        }
    }
    log_debug("opened TAP %s (fd %d)", name, fd);
    *ret_fd = TAKE_FD(fd);
    return 0;
}

int nd_vhost_open(int *ret_fd, qv_error *err) {
    int fd = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        if (r == -ENOENT)
            return qv_error_set(err, ENOENT, "cannot open /dev/vhost-net: no such device node (vhost_net not loaded?)");
        return qv_error_set(err, r, "cannot open /dev/vhost-net: %s", strerror(-r));
    }
    *ret_fd = fd;
    return 0;
}
