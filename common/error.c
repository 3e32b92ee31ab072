#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qv_error_setv(qv_error *err, int code, const char *fmt, va_list ap) {
    if (code < 0)
        code = -code;
    if (code == 0)
        code = EIO;
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return -code;
}

int qv_error_set(qv_error *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = qv_error_setv(err, code, fmt, ap);
    va_end(ap);
    return r;
}

void qv_error_prefix(qv_error *err, const char *fmt, ...) {
    if (!err)
        return;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* "prefix: old", truncated at the end if it must be */
    size_t plen = strlen(prefix), cap = sizeof err->msg - 1;
    size_t add = plen + 2 < cap ? plen + 2 : cap;
    size_t olen = strlen(err->msg);
    if (olen > cap - add)
        olen = cap - add;
    memmove(err->msg + add, err->msg, olen);
    memcpy(err->msg, prefix, add < plen ? add : plen);
    if (add == plen + 2)
        memcpy(err->msg + plen, ": ", 2);
    err->msg[add + olen] = '\0';
}

static const struct {
    int code;
    const char *name;
    int exit_code;
} errno_table[] = {
    {EPERM, "EPERM", QV_EXIT_NOPERM},
    {EACCES, "EACCES", QV_EXIT_NOPERM},
    {ENOENT, "ENOENT", QV_EXIT_NOINPUT},
    {ENODEV, "ENODEV", QV_EXIT_NOINPUT},
    {ENXIO, "ENXIO", QV_EXIT_NOINPUT},
    {EEXIST, "EEXIST", QV_EXIT_CANTCREAT},
    {EALREADY, "EALREADY", QV_EXIT_CANTCREAT},
    {EINVAL, "EINVAL", QV_EXIT_DATAERR},
    {ERANGE, "ERANGE", QV_EXIT_DATAERR},
    {ENAMETOOLONG, "ENAMETOOLONG", QV_EXIT_DATAERR},
    {EBADMSG, "EBADMSG", QV_EXIT_DATAERR},
    {EMSGSIZE, "EMSGSIZE", QV_EXIT_DATAERR},
    {EPROTO, "EPROTO", QV_EXIT_FAILED},
    {EAGAIN, "EAGAIN", QV_EXIT_TEMPFAIL},
    {EBUSY, "EBUSY", QV_EXIT_TEMPFAIL},
    {ETIMEDOUT, "ETIMEDOUT", QV_EXIT_TEMPFAIL},
    {EINTR, "EINTR", QV_EXIT_TEMPFAIL},
    {ENOSPC, "ENOSPC", QV_EXIT_TEMPFAIL},
    {ENOMEM, "ENOMEM", QV_EXIT_TEMPFAIL},
    {ECONNREFUSED, "ECONNREFUSED", QV_EXIT_UNAVAILABLE},
    {ECONNRESET, "ECONNRESET", QV_EXIT_UNAVAILABLE},
    {EPIPE, "EPIPE", QV_EXIT_UNAVAILABLE},
    {EHOSTDOWN, "EHOSTDOWN", QV_EXIT_UNAVAILABLE},
    {EOPNOTSUPP, "EOPNOTSUPP", QV_EXIT_UNAVAILABLE},
    {ENOSYS, "ENOSYS", QV_EXIT_UNAVAILABLE},
    {ESRCH, "ESRCH", QV_EXIT_NOINPUT},
    {EIO, "EIO", QV_EXIT_FAILED},
    {ECANCELED, "ECANCELED", QV_EXIT_FAILED},
    {ECHILD, "ECHILD", QV_EXIT_FAILED},
    {QV_ECONFIG, "ECONFIG", QV_EXIT_CONFIG},
    {QV_ECAPACITY, "ECAPACITY", QV_EXIT_TEMPFAIL},
};

#define N_ERRNO (sizeof errno_table / sizeof errno_table[0])

const char *qv_strerror(int code) {
    if (code < 0)
        code = -code;
    switch (code) {
    case QV_ECONFIG:
        return "invalid configuration";
    case QV_ECAPACITY:
        return "not enough capacity";
    default:
        return strerror(code);
    }
}

const char *qv_errno_name(int code) {
    if (code < 0)
        code = -code;
    for (size_t i = 0; i < N_ERRNO; i++)
        if (errno_table[i].code == code)
            return errno_table[i].name;
    return "EIO";
}

int qv_errno_from_name(const char *name) {
    if (name)
        for (size_t i = 0; i < N_ERRNO; i++)
            if (strcmp(errno_table[i].name, name) == 0)
                return errno_table[i].code;
    return EIO;
}

int qv_exit_code_for_errno(int code) {
    if (code < 0)
        code = -code;
    if (code == 0)
        return QV_EXIT_OK;
    for (size_t i = 0; i < N_ERRNO; i++)
        if (errno_table[i].code == code)
            return errno_table[i].exit_code;
    return QV_EXIT_FAILED;
}
