/* Message helpers shared by the QMP and guest-agent clients and the
 * connection base: building a command, parsing a line, ids.  Declared in
 * io.h. */
#include "io.h"

#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int qmp__build_command(const char *command, json_t *args, uint64_t id, char **ret, size_t *ret_len) {
    if (!command || !*command || (args && !json_is_object(args)) || id > (uint64_t)INT64_MAX)
        return -EINVAL;
    json_t *msg = json_object();
    if (!msg)
        return -ENOMEM;
    int r = json_object_set_new(msg, "execute", json_string(command));
    if (r == 0 && args)
        r = json_object_set(msg, "arguments", args);
    if (r == 0)
        r = json_object_set_new(msg, "id", json_integer((json_int_t)id));
    char *s = r == 0 ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!s)
        /* json_string() refuses invalid UTF-8, which is a caller error. */
        return r == 0 ? -ENOMEM : -EINVAL;
    *ret_len = strlen(s);
    *ret = s;
    return 0;
}

bool qmp__blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n')
            return false;
    return true;
}

json_t *qmp__parse_object(const char *line, size_t len) {
    json_error_t jerr;
    json_t *v = json_loadb(line, len, 0, &jerr);
    if (!v) {
        log_debug("qmp: invalid JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

bool qmp__get_id(json_t *msg, uint64_t *ret) {
    json_t *id = json_object_get(msg, "id");
    if (!json_is_integer(id) || json_integer_value(id) < 0)
        return false;
    *ret = (uint64_t)json_integer_value(id);
    return true;
}

uint64_t qmp__random_id(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^ (uintptr_t)&v;
        v *= 0x9E3779B97F4A7C15ull;
    }
    v &= (1ull << 53) - 1;
    return v ? v : 1;
}
