#include "dlib.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>

static int load_locked(qv_dlib *lib) {
    /* RTLD_LOCAL: the library's symbols stay out of the global namespace;
     * RTLD_NOW: a missing symbol of its own shows here, not mid-call */
    void *h = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(lib->why, sizeof lib->why, "%s", e ? e : "cannot be loaded");
        return -EOPNOTSUPP;
    }
    for (size_t i = 0; i < lib->n_syms; i++) {
        dlerror();
        void *p = dlsym(h, lib->syms[i].name);
        if (!p) {
            snprintf(lib->why, sizeof lib->why, "%s has no symbol %s (another version than qvisor was built for?)",
                     lib->soname, lib->syms[i].name);
            dlclose(h);
            return -EOPNOTSUPP;
        }
        *lib->syms[i].slot = p;
    }
    /* the handle is kept for the life of the process: the slots point into it */
    return 1;
}

int qv_dlib_load(qv_dlib *lib, qv_error *err) {
    pthread_mutex_lock(&lib->lock);
    if (lib->state == 0)
        lib->state = load_locked(lib);
    int state = lib->state;
    pthread_mutex_unlock(&lib->lock);
    if (state > 0)
        return 0;
    return qv_error_set(err, -state, "%s needs %s, which is not usable: %s", lib->purpose, lib->soname, lib->why);
}
