/* The probe guest shared by qemucaps.c (run by QEMU as its -bios) and
 * kvmprobe.c (run by us on a bare KVM vCPU): 256 bytes of x86 code that a
 * vCPU executes from the reset vector through real, protected and long mode,
 * the path every x86-64 kernel takes.  Internal to supervisor/; the
 * instructions are listed beside the bytes in qemucaps.c and the source is in
 * docs/qemucaps.md. */
#pragma once

#include <stdint.h>

/* Linear placement: the last 256 bytes below 4 GiB, i.e. the top of a
 * 64 KiB firmware ROM at 0xffff0000; the reset vector (0xfffffff0) jumps
 * to its start. */
#define SV__PROBE_GUEST_SIZE 256
#define SV__PROBE_ROM_BASE 0xffff0000u
#define SV__PROBE_ROM_SIZE 65536u
/* One marker per CPU mode reached, in order: 'R', 'P', 'L' ... */
#define SV__PROBE_MARKER_PORT 0xe9
/* ... then this byte to isa-debug-exit's port, then hlt (in a loop). */
#define SV__PROBE_EXIT_PORT 0xf4
#define SV__PROBE_EXIT_VALUE 0x2a
/* The page tables the guest builds live at 0x1000-0x4fff: it needs RAM
 * from 0 to at least there. */
#define SV__PROBE_RAM_SIZE 0x10000u

extern const uint8_t sv__probe_guest[SV__PROBE_GUEST_SIZE];
