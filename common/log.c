#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static qv_log_level current_level = QV_LOG_INFO;
static bool on_journal;
static const char *ident = "qvisor";

static const char *const level_names[] = {
    [QV_LOG_ERR] = "error",
    [QV_LOG_WARNING] = "warning",
    [QV_LOG_INFO] = "info",
    [QV_LOG_DEBUG] = "debug",
};

void qv_log_set_level(qv_log_level level) {
    current_level = level;
}

qv_log_level qv_log_get_level(void) {
    return current_level;
}

int qv_log_level_from_string(const char *s, qv_log_level *ret) {
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (level_names[i] && strcmp(level_names[i], s) == 0) {
            *ret = (qv_log_level)i;
            return 0;
        }
    return -EINVAL;
}

const char *qv_log_level_to_string(qv_log_level level) {
    if ((size_t)level < sizeof level_names / sizeof level_names[0] && level_names[level])
        return level_names[level];
    return "info";
}

void qv_log_set_ident(const char *s) {
    ident = s;
}

/* JOURNAL_STREAM is "DEV:INODE" of the stream systemd connected us to. */
void qv_log_detect_journal(void) {
    on_journal = false;
    const char *e = getenv("JOURNAL_STREAM");
    if (!e)
        return;
    unsigned long long dev, ino;
    if (sscanf(e, "%llu:%llu", &dev, &ino) != 2)
        return;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0)
        return;
    on_journal = (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

bool qv_log_is_journal(void) {
    return on_journal;
}

void qv_log(qv_log_level level, const char *fmt, ...) {
    if (level > current_level)
        return;
    int saved = errno;
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (on_journal)
        fprintf(stderr, "<%d>%s\n", (int)level, line);
    else if (level == QV_LOG_ERR)
        fprintf(stderr, "%s: error: %s\n", ident, line);
    else if (level == QV_LOG_WARNING)
        fprintf(stderr, "%s: warning: %s\n", ident, line);
    else
        fprintf(stderr, "%s: %s\n", ident, line);
    errno = saved;
}
