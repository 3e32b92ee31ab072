/* UEFI firmware for VMs (docs/firmware.md): which OVMF code and which
 * variable-store template `firmware: uefi` or `uefi-secure` means on this
 * node, found through QEMU's firmware descriptors (docs/interop/firmware.json
 * in QEMU: one JSON file per build, /usr/share/qemu/firmware/NN-*.json) the
 * way libvirt reads them, with the well-known files of Debian's ovmf package
 * as the fallback.  The descriptors are input from other packages: each is
 * read bounded and checked (types, absolute paths, no comma: the paths end
 * up in QEMU options), and one that does not pass is skipped.
 *
 * Everything here blocks on small file reads; nothing keeps state. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "spec/config.h"
#include "spec/vmspec.h"

/* Each UEFI VM's own variable store, in its instance directory. */
/* The largest descriptor read (Debian's are under 1 KiB); larger ones are skipped. */
#define SV_FW_DESCRIPTOR_MAX (64 * 1024)
/* At most this many descriptors are looked at. */
#define SV_FW_DESCRIPTORS_MAX 256
/* The largest variable-store template copied (OVMF's 4M build: 528 KiB). */
#define SV_FW_VARS_MAX (16u << 20)

/* Where they are when paths.firmware_dir is "": descriptors in the first
 * directory override (or, when empty, mask) those of the same file name in
 * the second, as in QEMU and libvirt; the fallback files are in the third. */
#define SV_FW_ETC_DIR "/etc/qemu/firmware"
#define SV_FW_SHARE_DIR "/usr/share/qemu/firmware"
#define SV_FW_OVMF_DIR "/usr/share/OVMF"

typedef struct sv_fw_choice {
    char code[PATH_MAX];   /* the executable: read-only pflash0 */
    char vars[PATH_MAX];   /* the variable-store template */
    char source[PATH_MAX]; /* the descriptor it came from, or the fallback directory */
} sv_fw_choice;

/* Reads one descriptor (text of len bytes, not NUL-terminated necessarily)
 * for firmware `want` (SV_FIRMWARE_UEFI or SV_FIRMWARE_UEFI_SECURE).
 * Returns 1 when it describes such a build for x86_64 q35 (ret filled: code
 * and vars; source untouched), 0 when it is valid but describes something
 * else, -EINVAL when it is malformed; why gets the reason for 0 and -EINVAL.
 * uefi takes a build without secure-boot and without requires-smm;
 * uefi-secure one with secure-boot, enrolled-keys and requires-smm.  Only
 * split flash mappings of raw files are used, and only targets whose machine
 * patterns cover every q35 version ("pc-q35-*"). */
int sv_fw_descriptor_parse(const char *text, size_t len, int want, sv_fw_choice *ret, char *why, size_t why_size);

/* Finds firmware `want` on this node.  dir NULL or "": the system (the
 * three directories above); else descriptors are DIR/ *.json and the fallback
 * files are in DIR (a test points it at an empty directory: a node without
 * OVMF).  Descriptors go by file name order (their NN- prefix is the
 * priority); the first that fits and whose files exist wins.  Returns 0, or
 * -EOPNOTSUPP with err naming the missing file and the package. */
int sv_fw_resolve(const char *dir, int want, sv_fw_choice *ret, qv_error *err);

/* Create: fills spec->firmware_code/_vars for a UEFI spec that has none
 * (sv_fw_resolve with the config's paths.firmware_dir), or checks the ones
 * the spec names (readable regular files, no comma: -ENOENT, -EINVAL).
 * Nothing to do for bios. */
int sv_fw_prepare_spec(const sv_config *c, sv_vmspec *spec, qv_error *err);

/* Start of a UEFI VM (no-op for bios): its recorded code file must exist
 * (-EOPNOTSUPP naming it and the package otherwise); a missing
 * variable store vars_path (the VM's, where the caller keeps it) is copied
 * again from spec->firmware_vars and *ret_restored set.  *ret_restored is
 * false otherwise. */
int sv_fw_start_check(const sv_vmspec *spec, const char *vars_path, bool *ret_restored, qv_error *err);

/* Copies the template to path (mode 0600), atomically and durably: the
 * VM's own variable store.  -EFBIG for a template above SV_FW_VARS_MAX,
 * -EINVAL for an empty one. */
int sv_fw_vars_copy(const char *template_path, const char *path, qv_error *err);
