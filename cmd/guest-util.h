/* Pure helpers of `vm exec` and `vm cp` (cmd/cmd-vm-guest.c), apart so
 * that unit tests link them (test/unit/test-guest.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What qemu-ga keeps of a command's stdout and of its stderr
 * (GUEST_EXEC_MAX_OUTPUT in QEMU's qga/commands.c). */
#define QV_EXEC_MAX_OUTPUT (16u << 20)
/* The most `vm cp` asks one guest-file-read for. */
#define QV_CP_READ_CHUNK (1u << 20)
/* The daemon's bound on one write (SV_GUEST_CHUNK_MAX). */
#define QV_CP_WRITE_MAX (4u << 20)

/* "NAME:PATH" names a file in VM NAME when NAME is a valid VM name
 * ([a-z0-9][a-z0-9-]*) followed by ':'; anything else is a local path
 * ("./web:x" is local).  Returns 1 with the VM name copied to name (room
 * for QV_NAME_MAX + 1) and *ret_path pointing into arg, 0 for a local
 * path, -EINVAL for a guest path that is not absolute or is empty. */
int qv_guest_arg_parse(const char *arg, char *name, size_t name_size, const char **ret_path);

/* The exit status `vm exec` returns for the guest command's end: its exit
 * code, or 128 + N when signal N ended it (as a shell says). */
int qv_exec_exit_status(int exitcode, int signal);

/* The bytes of one guest-file-write whose request fits in max_request
 * bytes (daemon.max_request_size): base64 takes 4/3, plus room for the
 * rest of the line; a multiple of 3 (no padding mid-file) and of 4 KiB,
 * at most QV_CP_WRITE_MAX, 0 when nothing fits. */
size_t qv_cp_write_chunk(uint64_t max_request);

/* The last component of a path ("a/b/" is "b"); "" for "/" and "". */
void qv_path_base(const char *path, char *buf, size_t size);
/* The directory of a path: "a/b" is "a", "/b" is "/", "b" is ".". */
void qv_path_dir(const char *path, char *buf, size_t size);
