/* PCI addresses and class codes. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vfio/vfio.h"

bool vfio_class_is_display(unsigned class_code) {
    return (class_code >> 16) == 0x03;
}

const char *vfio_class_name(unsigned class_code) {
    static const struct {
        unsigned class_sub; /* class << 8 | subclass */
        const char *name;
    } names[] = {
        {0x0100, "SCSI storage controller"}, {0x0101, "IDE interface"},
        {0x0106, "SATA controller"},         {0x0108, "Non-Volatile memory controller"},
        {0x0200, "Ethernet controller"},     {0x0207, "Infiniband controller"},
        {0x0280, "Network controller"},      {0x0300, "VGA compatible controller"},
        {0x0301, "XGA compatible controller"}, {0x0302, "3D controller"},
        {0x0380, "Display controller"},      {0x0401, "Multimedia audio controller"},
        {0x0403, "Audio device"},            {0x0600, "Host bridge"},
        {0x0601, "ISA bridge"},              {0x0604, "PCI bridge"},
        {0x0c03, "USB controller"},          {0x0c05, "SMBus"},
        {0x0c80, "Serial bus controller"},   {0x1200, "Processing accelerators"},
    };
    unsigned cs = class_code >> 8;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].class_sub == cs)
            return names[i].name;
    switch (class_code >> 16) {
    case 0x01: return "Mass storage controller";
    case 0x02: return "Network controller";
    case 0x03: return "Display controller";
    case 0x04: return "Multimedia controller";
    case 0x06: return "Bridge";
    case 0x0c: return "Serial bus controller";
    default: return "PCI device";
    }
}

static bool all_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

int vfio_bdf_normalize(const char *in, char ret[VFIO_BDF_MAX]) {
    if (!in)
        return -EINVAL;
    char buf[VFIO_BDF_MAX];
    size_t len = strlen(in);
    if (len == 7) { /* "01:00.0": domain 0000 */
        snprintf(buf, sizeof(buf), "0000:%s", in);
    } else if (len == 12) {
        memcpy(buf, in, 13);
    } else {
        return -EINVAL;
    }
    /* dddd:bb:ss.f */
    if (!all_hex(buf, 4) || buf[4] != ':' || !all_hex(buf + 5, 2) || buf[7] != ':' || !all_hex(buf + 8, 2) ||
        buf[10] != '.' || buf[11] < '0' || buf[11] > '7' || buf[12] != '\0')
        return -EINVAL;
    unsigned slot = 0;
    sscanf(buf + 8, "%2x", &slot);
    if (slot > 0x1f)
        return -EINVAL;
    for (char *p = buf; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    memcpy(ret, buf, sizeof(buf));
    return 0;
}

bool vfio_bdf_same_slot(const char *a, const char *b) {
    return strncmp(a, b, 10) == 0;
}
