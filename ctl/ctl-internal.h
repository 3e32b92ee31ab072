/* What the files of ctl/ share and nobody else sees: the socket address, the
 * room for one SCM_RIGHTS message, and where a line fed from a chunk of
 * bytes ended in it.  Defined in ctl/protocol.c; called by ctl/server.c and
 * ctl/client.c.  Not part of the API. */
#pragma once

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "ctl/protocol.h"

/* Room for one control message of SV_CTL_MAX_FDS descriptors, aligned for
 * its header. */
typedef union sv_ctl__fd_control {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * SV_CTL_MAX_FDS)];
} sv_ctl__fd_control;

/* Fills *ret with the unix socket address of path: 0, or -ENAMETOOLONG
 * when path does not fit (*ret untouched). */
int sv_ctl__sockaddr(const char *path, struct sockaddr_un *ret);

/* The offset in chunk of the '\n' that ended line (len bytes, without it),
 * a line qv_linebuf_feed() handed over while fed chunk: one inside the chunk,
 * or one carried over from earlier reads that the chunk's first '\n' ended. */
size_t sv_ctl__newline_at(const char *chunk, size_t chunk_len, const char *line, size_t len);
