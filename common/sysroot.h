/* The root under which qvisor reads /sys and /proc.  Default "/"; the node
 * config (paths.sysfs_root) can move it, and QVISOR_SYSROOT overrides both so
 * tests can hand every module a fake tree.  All access goes through a root
 * directory fd and openat(), with paths relative to the root
 * ("sys/bus/pci/devices"; a leading '/' is ignored).  Fake trees must use
 * relative symlinks, as the kernel's sysfs does. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Sets the root; NULL or "" means "/".  QVISOR_SYSROOT, when set and
 * non-empty, wins over the argument.  Returns 0 or a negative errno. */
int qv_sysroot_set(const char *path);
/* The root in effect (opens "/" on first use if nothing was set). */
const char *qv_sysroot_path(void);
int qv_sysroot_fd(void);
void qv_sysroot_close(void);

/* openat() below the root, O_CLOEXEC added.  Returns an fd or -errno. */
int qv_sysroot_open(const char *rel, int flags);
/* Reads a whole (small) file; *ret is NUL-terminated and owned by the caller. */
int qv_sysroot_read(const char *rel, char **ret, size_t *ret_len);
/* Reads the first line, without its newline, into buf. */
int qv_sysroot_read_line(const char *rel, char *buf, size_t size);
/* One write(2) of s, as `echo -n s > file` does; sysfs wants whole writes. */
int qv_sysroot_write(const char *rel, const char *s);
/* readlink() below the root; result NUL-terminated. */
int qv_sysroot_readlink(const char *rel, char *buf, size_t size);
/* 1 if rel exists, 0 if not, negative errno on other errors. */
int qv_sysroot_exists(const char *rel);
/* The names in directory rel, without "." and "..", sorted: a
 * NULL-terminated list the caller frees with qv_strv_free().  Returns the
 * count or a negative errno (-ENOENT: no such directory). */
int qv_sysroot_list(const char *rel, char ***ret);
