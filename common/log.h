/* Logging to stderr with levels.  Library code logs at debug only; the
 * daemon and the CLI decide what the user is told (docs/conventions.md).
 * When stderr is the systemd journal (JOURNAL_STREAM matches), every line is
 * prefixed with its syslog priority ("<3>") so journald files it right. */
#pragma once

#include <stdbool.h>

typedef enum qv_log_level {
    QV_LOG_ERR = 3,
    QV_LOG_WARNING = 4,
    QV_LOG_INFO = 6,
    QV_LOG_DEBUG = 7,
} qv_log_level;

void qv_log_set_level(qv_log_level level);
qv_log_level qv_log_get_level(void);
/* Parses "error", "warning", "info", "debug"; returns -EINVAL otherwise. */
int qv_log_level_from_string(const char *s, qv_log_level *ret);
const char *qv_log_level_to_string(qv_log_level level);

/* Program name shown before messages when not on the journal ("qvisor: "). */
void qv_log_set_ident(const char *ident);
/* Re-checks whether stderr is the journal (call after redirections). */
void qv_log_detect_journal(void);
bool qv_log_is_journal(void);

void qv_log(qv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) qv_log(QV_LOG_ERR, __VA_ARGS__)
#define log_warning(...) qv_log(QV_LOG_WARNING, __VA_ARGS__)
#define log_info(...) qv_log(QV_LOG_INFO, __VA_ARGS__)
#define log_debug(...)                              \
    do {                                            \
        if (qv_log_get_level() >= QV_LOG_DEBUG)     \
            qv_log(QV_LOG_DEBUG, __VA_ARGS__);      \
    } while (0)
