/* Libraries that only some paths need, loaded when first needed.
 *
 * libudev (GPU discovery) and libnftables (NAT networks) pull in five shared
 * objects between them; linked normally, every `qvisor` process would map
 * and relocate them before main(): about a quarter of the start-up time of
 * a short verb such as `qvisor cidata`.  A module lists the functions it uses
 * and asks for them with qv_dlib_load() before its first call:
 *
 *     #define UDEV_FUNCTIONS(X, s) X(s, udev_new) X(s, udev_unref)
 *     QV_DLIB_DEFINE(U, UDEV_FUNCTIONS, "libudev.so.1", "PCI device discovery");
 *     ...
 *     if (qv_dlib_load(&U_lib, err) < 0) return ...;
 *     struct udev *u = U.udev_new();
 *
 * The pointers are typed from the library's own header, so a call is
 * checked as if it were linked.
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

/* Defines `static struct {...} VAR` with one pointer per function in LIST
 * (LIST(X, s) expands X(s, function) for each) and `static qv_dlib
 * VAR_lib` that fills them. */
#define QV_DLIB_DEFINE(VAR, LIST, soname_, purpose_) \
    static struct { LIST(QV__DLIB_MEMBER, VAR) } VAR; \
    static const qv_dlsym VAR##_syms[] = {LIST(QV__DLIB_SYM, VAR)}; \
    static qv_dlib VAR##_lib = QV_DLIB_INIT(soname_, purpose_, VAR##_syms)
#define QV__DLIB_MEMBER(s, f) __typeof__(f) *f;
#define QV__DLIB_SYM(s, f) QV_DLSYM(s.f, #f),

/* Loads lib and fills every slot, once per process; thread-safe.  Returns 0,
 * or -EOPNOTSUPP with a message naming the library, what needs it and why
 * (not installed, a symbol missing).  A failure is remembered: later calls
 * fail the same way without retrying. */
int qv_dlib_load(qv_dlib *lib, qv_error *err);
