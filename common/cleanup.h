/* Scope-bound cleanup in the style of systemd's cleanup-fundamental.h.
 * Every destructor used here accepts NULL (or -1 for fds), so a variable
 * whose ownership was handed over with TAKE_PTR/TAKE_FD is left alone. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <dirent.h>
#include <errno.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void qv_freep(void *p) {
    free(*(void **)p);
}
static inline void qv_closep(int *fd) {
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}
static inline void qv_fclosep(FILE **f) {
    if (*f)
        fclose(*f);
}
static inline void qv_closedirp(DIR **d) {
    if (*d)
        closedir(*d);
}

#define _cleanup_free_ _cleanup_(qv_freep)
#define _cleanup_close_ _cleanup_(qv_closep)
#define _cleanup_fclose_ _cleanup_(qv_fclosep)
#define _cleanup_closedir_ _cleanup_(qv_closedirp)

/* Hands ownership over: returns the value and clears the variable. */
#define TAKE_PTR(p)                       \
    ({                                    \
        __typeof__(p) *_pp_ = &(p);       \
        __typeof__(p) _v_ = *_pp_;        \
        *_pp_ = NULL;                     \
        _v_;                              \
    })
#define TAKE_FD(fd)                       \
    ({                                    \
        int *_pfd_ = &(fd);               \
        int _v_ = *_pfd_;                 \
        *_pfd_ = -1;                      \
        _v_;                              \
    })

#define QV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Defines name##p() that calls func(*p) when *p is non-NULL. */
#define QV_DEFINE_TRIVIAL_CLEANUP(type, func) \
    static inline void func##p(type *p) {     \
        if (*p)                               \
            func(*p);                         \
    }
