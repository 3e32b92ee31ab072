/* Libraries that only some paths need, loaded when first needed.
 *
 * libudev (GPU discovery) and libnftables (NAT networks) pull in five shared
 * objects between them; linked normally, every `qvisor` process would map
 * and relocate them before main(), which is most of the start-up time of a
 * short verb such as `qvisor cidata`.  A module lists the functions it uses
 * in a qv_dlib and asks for them with qv_dlib_load() before its first call.
 *
 *     static void *(*my_new)(void);
 *     static const qv_dlsym syms[] = {QV_DLSYM(my_new, "udev_new"), ...};
 *     static qv_dlib lib = QV_DLIB_INIT("libudev.so.1", "GPU discovery", syms);
 *     if (qv_dlib_load(&lib, err) < 0) return ...;
 */
#pragma once

#include <pthread.h>
#include <stddef.h>

#include "error.h"

typedef struct qv_dlsym {
    const char *name; /* the symbol in the library */
    void **slot;      /* where its address goes (a function pointer's address) */
} qv_dlsym;

typedef struct qv_dlib {
    const char *soname;  /* e.g. "libudev.so.1": the ABI the headers describe */
    const char *purpose; /* what needs it, for the message when it is missing */
    const qv_dlsym *syms;
    size_t n_syms;
    pthread_mutex_t lock;
    int state;           /* 0 not tried, 1 loaded, negative errno: failed */
    char why[256];       /* the failure, repeated to later callers */
} qv_dlib;

/* Stores a function pointer's address as void **; the cast is the one
 * POSIX dlsym() asks for (a function pointer and void * share a size). */
#define QV_DLSYM(fnptr, symbol) {(symbol), (void **)(void *)&(fnptr)}

#define QV_DLIB_INIT(soname_, purpose_, syms_) \
    {.soname = (soname_), .purpose = (purpose_), .syms = (syms_), \
     .n_syms = sizeof(syms_) / sizeof((syms_)[0]), .lock = PTHREAD_MUTEX_INITIALIZER}

/* Loads lib and fills every slot, once per process; thread-safe.  Returns 0,
 * or -EOPNOTSUPP with a message naming the library, what needs it and why
 * (not installed, a symbol missing).  A failure is remembered: later calls
 * fail the same way without retrying. */
int qv_dlib_load(qv_dlib *lib, qv_error *err);
