/* NoCloud content generation and checks.  See nocloud.h. */
#include "nocloud.h"

#include "base64.h"
#include "cleanup.h"
#include "sha256.h"
#include "yamlguard.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

/* ---- a growing buffer ---- */

typedef struct ci__buf {
    char *p;
    size_t len, cap;
    bool oom;
} ci__buf;

static void buf_add(ci__buf *b, const void *data, size_t len) {
    if (b->oom)
        return;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

/* ---- the emitter ---- */

typedef struct ci__yaml {
    yaml_emitter_t em;
    ci__buf out;
    const char *problem; /* first failure, NULL while all is well */
} ci__yaml;

static int y_write(void *data, unsigned char *buffer, size_t size) {
    ci__buf *b = data;
    buf_add(b, buffer, size);
    return !b->oom;
}

static void y_emit(ci__yaml *y, yaml_event_t *ev, int init_ok) {
    if (y->problem) {
        if (init_ok)
            yaml_event_delete(ev);
        return;
    }
    if (!init_ok) {
        y->problem = "a value is not valid UTF-8";
        return;
    }
    /* yaml_emitter_emit takes ownership of the event, also on failure */
    if (!yaml_emitter_emit(&y->em, ev))
        y->problem = y->em.problem ? y->em.problem : (y->out.oom ? "out of memory" : "emitter error");
}

static void y_begin(ci__yaml *y, const char *header) {
    memset(y, 0, sizeof *y);
    if (!yaml_emitter_initialize(&y->em)) {
        y->problem = "out of memory";
        return;
    }
    yaml_emitter_set_output(&y->em, y_write, &y->out);
    yaml_emitter_set_unicode(&y->em, 1);
    yaml_emitter_set_width(&y->em, -1); /* never fold long SSH keys */
    yaml_emitter_set_indent(&y->em, 2);
    if (header)
        buf_add(&y->out, header, strlen(header));
    yaml_event_t ev;
    y_emit(y, &ev, yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING));
    y_emit(y, &ev, yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1));
}

/* Ends the document; returns 0 and hands the text over, or -EINVAL. */
static int y_end(ci__yaml *y, const char *what, ci_blob *ret, qv_error *err) {
    yaml_event_t ev;
    y_emit(y, &ev, yaml_document_end_event_initialize(&ev, 1));
    y_emit(y, &ev, yaml_stream_end_event_initialize(&ev));
    if (!y->problem && !yaml_emitter_flush(&y->em))
        y->problem = "flush failed";
    yaml_emitter_delete(&y->em);
    if (y->out.oom)
        y->problem = "out of memory";
    if (y->problem) {
        free(y->out.p);
        return qv_error_set(err, EINVAL, "generating %s: %s", what, y->problem);
    }
    ret->data = y->out.p;
    ret->len = y->out.len;
    return 0;
}

/* A value from the user: always quoted, so it is a string whatever it
 * contains (the emitter picks single or double quotes). */
static void y_str(ci__yaml *y, const char *s) {
    yaml_event_t ev;
    int ok = yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 0, 1,
                                          YAML_ANY_SCALAR_STYLE);
    y_emit(y, &ev, ok);
}
/* Our own keys and literals (true, 2): plain. */
static void y_lit(ci__yaml *y, const char *s) {
    yaml_event_t ev;
    y_emit(y, &ev,
           yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 1,
                                        YAML_PLAIN_SCALAR_STYLE));
}
static void y_map(ci__yaml *y) {
    yaml_event_t ev;
    y_emit(y, &ev, yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE));
}
static void y_map_end(ci__yaml *y) {
    yaml_event_t ev;
    y_emit(y, &ev, yaml_mapping_end_event_initialize(&ev));
}
static void y_seq(ci__yaml *y) {
    yaml_event_t ev;
    y_emit(y, &ev, yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE));
}
static void y_seq_end(ci__yaml *y) {
    yaml_event_t ev;
    y_emit(y, &ev, yaml_sequence_end_event_initialize(&ev));
}
static void y_str_list(ci__yaml *y, const char *key, const char *const *list, size_t n) {
    y_lit(y, key);
    y_seq(y);
    for (size_t i = 0; i < n; i++)
        y_str(y, list[i]);
    y_seq_end(y);
}

/* ---- checks of the spec ---- */

static int check_str(const char *field, const char *s, bool required, qv_error *err) {
    if (!s) {
        if (required)
            return qv_error_set(err, EINVAL, "%s is required", field);
        return 0;
    }
    if (required && !*s)
        return qv_error_set(err, EINVAL, "%s is empty", field);
    return 0;
}

static int check_list(const char *field, const char *const *list, size_t n, qv_error *err) {
    if (n && !list)
        return qv_error_set(err, EINVAL, "%s: %zu entries but no list", field, n);
    for (size_t i = 0; i < n; i++)
        if (!list[i] || !*list[i])
            return qv_error_set(err, EINVAL, "%s[%zu] is empty", field, i);
    return 0;
}

static bool mac_valid(const char *s) {
    if (strlen(s) != 17)
        return false;
    for (int i = 0; i < 17; i++) {
        if (i % 3 == 2) {
            if (s[i] != ':')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* 4 or 6, or 0 when s is not an IP address. */
static int ip_family(const char *s) {
    unsigned char a[16];
    if (inet_pton(AF_INET, s, a) == 1)
        return 4;
    if (inet_pton(AF_INET6, s, a) == 1)
        return 6;
    return 0;
}

static bool cidr_valid(const char *s) {
    const char *slash = strchr(s, '/');
    if (!slash || slash - s >= 64)
        return false;
    char ip[64];
    memcpy(ip, s, (size_t)(slash - s));
    ip[slash - s] = '\0';
    int fam = ip_family(ip);
    if (!fam)
        return false;
    char *end;
    const char *p = slash + 1;
    if (!isdigit((unsigned char)*p))
        return false;
    long prefix = strtol(p, &end, 10);
    return !*end && prefix >= 0 && prefix <= (fam == 4 ? 32 : 128);
}

static bool nic_id_valid(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 15)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
            return false;
    return true;
}

static int check_spec(const ci_seed_spec *s, qv_error *err) {
    int r;
    if ((r = check_str("hostname", s->hostname, true, err)) < 0)
        return r;
    if (!s->user_data) {
        if (s->user && !*s->user)
            return qv_error_set(err, EINVAL, "user is empty");
        if ((r = check_list("ssh_keys", s->ssh_keys, s->n_ssh_keys, err)) < 0 ||
            (r = check_list("packages", s->packages, s->n_packages, err)) < 0 ||
            (r = check_list("runcmd", s->runcmd, s->n_runcmd, err)) < 0)
            return r;
        if (s->password_hash && !*s->password_hash)
            return qv_error_set(err, EINVAL, "password_hash is empty");
    }
    if (s->network_config && s->n_nics)
        return qv_error_set(err, EINVAL, "network_config and nics are exclusive");
    if ((r = check_list("dns_servers", s->dns_servers, s->n_dns_servers, err)) < 0 ||
        (r = check_list("dns_search", s->dns_search, s->n_dns_search, err)) < 0)
        return r;
    for (size_t i = 0; i < s->n_dns_servers; i++)
        if (!ip_family(s->dns_servers[i]))
            return qv_error_set(err, EINVAL, "dns server '%s' is not an IP address", s->dns_servers[i]);
    if (s->n_nics && !s->nics)
        return qv_error_set(err, EINVAL, "nics: %zu entries but no list", s->n_nics);
    for (size_t i = 0; i < s->n_nics; i++) {
        const ci_nic *n = &s->nics[i];
        if (n->id && !nic_id_valid(n->id))
            return qv_error_set(err, EINVAL, "nic %zu: id '%s' must be 1-15 characters of A-Z a-z 0-9 _ . -", i,
                                n->id);
        if (!n->mac || !mac_valid(n->mac))
            return qv_error_set(err, EINVAL, "nic %zu: MAC address '%s' is not of the form 52:54:00:12:34:56", i,
                                n->mac ? n->mac : "");
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(s->nics[j].mac, n->mac) == 0)
                return qv_error_set(err, EINVAL, "nic %zu: MAC address %s is also used by nic %zu", i, n->mac, j);
        if (!n->dhcp4 && !n->address)
            return qv_error_set(err, EINVAL, "nic %zu: neither dhcp4 nor a static address", i);
        if (n->address && !cidr_valid(n->address))
            return qv_error_set(err, EINVAL, "nic %zu: address '%s' is not of the form 10.0.0.5/24", i, n->address);
        if (n->gateway && !ip_family(n->gateway))
            return qv_error_set(err, EINVAL, "nic %zu: gateway '%s' is not an IP address", i, n->gateway);
    }
    return 0;
}

/* ---- generators ---- */

static int make_user_data(const ci_seed_spec *s, ci_blob *ret, qv_error *err) {
    ci__yaml y;
    y_begin(&y, "#cloud-config\n");
    y_map(&y);
    y_lit(&y, "hostname");
    y_str(&y, s->hostname);
    y_lit(&y, "manage_etc_hosts");
    y_lit(&y, "true");
    y_lit(&y, "users");
    y_seq(&y);
    y_map(&y);
    y_lit(&y, "name");
    y_str(&y, s->user ? s->user : CI_DEFAULT_USER);
    y_lit(&y, "sudo");
    y_str(&y, "ALL=(ALL) NOPASSWD:ALL");
    y_lit(&y, "shell");
    y_str(&y, "/bin/bash");
    y_lit(&y, "lock_passwd");
    y_lit(&y, s->password_hash ? "false" : "true");
    if (s->password_hash) {
        y_lit(&y, "passwd");
        y_str(&y, s->password_hash);
    }
    if (s->n_ssh_keys)
        y_str_list(&y, "ssh_authorized_keys", s->ssh_keys, s->n_ssh_keys);
    y_map_end(&y);
    y_seq_end(&y);
    if (s->n_packages)
        y_str_list(&y, "packages", s->packages, s->n_packages);
    if (s->n_runcmd)
        y_str_list(&y, "runcmd", s->runcmd, s->n_runcmd);
    y_map_end(&y);
    return y_end(&y, "user-data", ret, err);
}

static int make_network_config(const ci_seed_spec *s, ci_blob *ret, qv_error *err) {
    ci__yaml y;
    y_begin(&y, NULL);
    y_map(&y);
    y_lit(&y, "version");
    y_lit(&y, "2");
    y_lit(&y, "ethernets");
    y_map(&y);
    for (size_t i = 0; i < s->n_nics; i++) {
        const ci_nic *n = &s->nics[i];
        char id[24], mac[18];
        if (n->id)
            snprintf(id, sizeof id, "%s", n->id);
        else
            snprintf(id, sizeof id, "nic%zu", i);
        for (int k = 0; k < 18; k++)
            mac[k] = (char)tolower((unsigned char)n->mac[k]);
        y_str(&y, id);
        y_map(&y);
        y_lit(&y, "match");
        y_map(&y);
        y_lit(&y, "macaddress");
        y_str(&y, mac);
        y_map_end(&y);
        y_lit(&y, "dhcp4");
        y_lit(&y, n->dhcp4 ? "true" : "false");
        if (n->address) {
            y_lit(&y, "addresses");
            y_seq(&y);
            y_str(&y, n->address);
            y_seq_end(&y);
        }
        if (n->gateway) {
            /* gateway4/gateway6, not routes: [{to: 0.0.0.0/0, via: GW}].
             * cloud-init's ENI renderer (Debian with ifupdown) turns such a
             * route into "post-up route add default gw GW || true", which
             * needs net-tools and fails silently without it: no default
             * route.  A gateway becomes a native "gateway GW" line there,
             * Gateway= for networkd, and netplan takes it as it is (with a
             * deprecation warning since 0.103, still honoured). */
            y_lit(&y, ip_family(n->gateway) == 6 ? "gateway6" : "gateway4");
            y_str(&y, n->gateway);
        }
        if (s->n_dns_servers || s->n_dns_search) {
            y_lit(&y, "nameservers");
            y_map(&y);
            if (s->n_dns_servers)
                y_str_list(&y, "addresses", s->dns_servers, s->n_dns_servers);
            if (s->n_dns_search)
                y_str_list(&y, "search", s->dns_search, s->n_dns_search);
            y_map_end(&y);
        }
        y_map_end(&y);
    }
    y_map_end(&y);
    y_map_end(&y);
    return y_end(&y, "network-config", ret, err);
}

int ci_meta_data_make(const char *instance_id, const char *hostname, char **ret, size_t *ret_len, qv_error *err) {
    ci__yaml y;
    y_begin(&y, NULL);
    y_map(&y);
    y_lit(&y, "instance-id");
    y_str(&y, instance_id);
    if (hostname) {
        y_lit(&y, "local-hostname");
        y_str(&y, hostname);
    }
    y_map_end(&y);
    ci_blob b;
    int r = y_end(&y, "meta-data", &b, err);
    if (r < 0)
        return r;
    *ret = b.data;
    if (ret_len)
        *ret_len = b.len;
    return 0;
}

void ci_instance_id(const ci_iso_file *files, size_t n, char out[CI_INSTANCE_ID_SIZE]) {
    ci_sha256 c;
    ci_sha256_init(&c);
    static const char domain[] = "qvisor-nocloud-v1";
    ci_sha256_update(&c, domain, sizeof domain);
    for (size_t i = 0; i < n; i++) {
        uint8_t len[8];
        for (int k = 0; k < 8; k++)
            len[k] = (uint8_t)(files[i].size >> (8 * k));
        ci_sha256_update(&c, files[i].name, strlen(files[i].name) + 1);
        ci_sha256_update(&c, len, sizeof len);
        if (files[i].size)
            ci_sha256_update(&c, files[i].data, (size_t)files[i].size);
    }
    uint8_t d[CI_SHA256_LEN];
    ci_sha256_final(&c, d);
    memcpy(out, "iid-", 4);
    for (int i = 0; i < 16; i++)
        snprintf(out + 4 + 2 * i, 3, "%02x", d[i]);
}

static int blob_copy(ci_blob *b, const char *data, size_t len) {
    b->data = malloc(len + 1);
    if (!b->data)
        return -ENOMEM;
    if (len)
        memcpy(b->data, data, len);
    b->data[len] = '\0';
    b->len = len;
    return 0;
}

void ci_seed_done(ci_seed *seed) {
    if (!seed)
        return;
    free(seed->meta_data.data);
    free(seed->user_data.data);
    free(seed->network_config.data);
    free(seed->vendor_data.data);
    *seed = (ci_seed){0};
}

int ci_seed_build(const ci_seed_spec *spec, ci_seed *ret, qv_error *err) {
    *ret = (ci_seed){0};
    ci_seed s = {0};
    int r = check_spec(spec, err);
    if (r < 0)
        return r;

    if (spec->user_data) {
        r = ci_user_data_check("user-data", spec->user_data, spec->user_data_len, err);
        if (r == 0 && blob_copy(&s.user_data, spec->user_data, spec->user_data_len) < 0)
            r = qv_error_set(err, ENOMEM, "out of memory");
    } else {
        r = make_user_data(spec, &s.user_data, err);
    }
    if (r == 0 && spec->network_config) {
        r = ci_yaml_mapping_check("network-config", spec->network_config, spec->network_config_len, err);
        if (r == 0 && blob_copy(&s.network_config, spec->network_config, spec->network_config_len) < 0)
            r = qv_error_set(err, ENOMEM, "out of memory");
    } else if (r == 0 && spec->n_nics) {
        r = make_network_config(spec, &s.network_config, err);
    }
    if (r == 0 && spec->vendor_data) {
        r = ci_user_data_check("vendor-data", spec->vendor_data, spec->vendor_data_len, err);
        if (r == 0 && blob_copy(&s.vendor_data, spec->vendor_data, spec->vendor_data_len) < 0)
            r = qv_error_set(err, ENOMEM, "out of memory");
    }
    if (r < 0) {
        ci_seed_done(&s);
        return r;
    }

    /* The instance-id covers everything else in the seed, the host name
     * included, so any change makes cloud-init run again. */
    ci_iso_file h[CI_SEED_FILES_MAX];
    size_t n = 0;
    h[n++] = (ci_iso_file){.name = "local-hostname", .data = spec->hostname, .size = strlen(spec->hostname)};
    h[n++] = (ci_iso_file){.name = "user-data", .data = s.user_data.data, .size = s.user_data.len};
    if (s.network_config.data)
        h[n++] = (ci_iso_file){.name = "network-config", .data = s.network_config.data, .size = s.network_config.len};
    if (s.vendor_data.data)
        h[n++] = (ci_iso_file){.name = "vendor-data", .data = s.vendor_data.data, .size = s.vendor_data.len};
    ci_instance_id(h, n, s.instance_id);

    r = ci_meta_data_make(s.instance_id, spec->hostname, &s.meta_data.data, &s.meta_data.len, err);
    if (r < 0) {
        ci_seed_done(&s);
        return r;
    }
    *ret = s;
    return 0;
}

size_t ci_seed_files(const ci_seed *seed, ci_iso_file *files) {
    size_t n = 0;
    const struct {
        const char *name;
        const ci_blob *b;
    } all[] = {
        {"meta-data", &seed->meta_data},
        {"user-data", &seed->user_data},
        {"network-config", &seed->network_config},
        {"vendor-data", &seed->vendor_data},
    };
    for (size_t i = 0; i < QV_ARRAY_SIZE(all); i++)
        if (all[i].b->data)
            files[n++] = (ci_iso_file){.name = all[i].name, .data = all[i].b->data, .size = all[i].b->len};
    return n;
}

int ci_seed_write(const char *path, const ci_seed_spec *spec, const char *label, int64_t timestamp, qv_error *err) {
    ci_seed seed;
    int r = ci_seed_build(spec, &seed, err);
    if (r < 0)
        return r;
    ci_iso_file files[CI_SEED_FILES_MAX];
    size_t n = ci_seed_files(&seed, files);
    r = ci_iso_write_file_atomic(path, 0644, CI_ISO_DURABLE, label ? label : CI_DEFAULT_LABEL, files, n, timestamp,
                                 err);
    ci_seed_done(&seed);
    return r;
}

/* ---- checks of user-supplied files ---- */

static bool starts_with(const char *p, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(p, prefix, n) == 0;
}

/* A MIME message whose header block has "Content-Type: multipart/...". */
static bool is_mime_multipart(const char *p, size_t len) {
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - p) : len;
        size_t ll = end - i;
        if (ll > 0 && p[end - 1] == '\r')
            ll--;
        if (ll == 0)
            return false; /* end of the headers */
        const char *line = p + i;
        if (ll > 13 && strncasecmp(line, "content-type:", 13) == 0) {
            size_t k = 13;
            while (k < ll && (line[k] == ' ' || line[k] == '\t'))
                k++;
            return ll - k >= 10 && strncasecmp(line + k, "multipart/", 10) == 0;
        }
        /* headers are "Name: value" or continuation lines */
        if (line[0] != ' ' && line[0] != '\t') {
            const char *colon = memchr(line, ':', ll);
            if (!colon)
                return false;
            for (const char *c = line; c < colon; c++)
                if (!isalnum((unsigned char)*c) && *c != '-')
                    return false;
        }
        i = end + 1;
    }
    return false;
}

typedef enum { TOP_ANY, TOP_MAPPING } ci__top;

/* Runs before libyaml, whose scanner is quadratic in the nesting. */
static int guard_check(const char *what, const void *data, size_t len, qv_error *err) {
    qv_yaml_guard_error ge;
    if (qv_yaml_guard(data, len, &ge) == 0)
        return 0;
    return ge.line ? qv_error_set(err, EINVAL, "%s: line %zu, column %zu: %s", what, ge.line, ge.column, ge.why)
                   : qv_error_set(err, EINVAL, "%s: %s", what, ge.why);
}

/* Callers run guard_check() first. */
static int yaml_check(const char *what, const void *data, size_t len, ci__top top, qv_error *err) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return qv_error_set(err, ENOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, data, len);
    int r = 0, depth = 0;
    bool first_node = true;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            r = qv_error_set(err, EINVAL, "%s: not valid YAML: line %zu, column %zu: %s%s%s", what,
                             parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                             parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                             parser.context ? parser.context : "");
            break;
        }
        yaml_event_type_t t = ev.type;
        if (depth == 0 && first_node &&
            (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT || t == YAML_SCALAR_EVENT ||
             t == YAML_ALIAS_EVENT)) {
            first_node = false;
            bool empty_scalar = t == YAML_SCALAR_EVENT && ev.data.scalar.length == 0 &&
                                ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            if (top == TOP_MAPPING && t != YAML_MAPPING_START_EVENT && !empty_scalar) {
                r = qv_error_set(err, EINVAL, "%s: line %zu: the top level must be a mapping (key: value)", what,
                                 ev.start_mark.line + 1);
                yaml_event_delete(&ev);
                break;
            }
        }
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT)
            depth++;
        else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT)
            depth--;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&parser);
    return r;
}

int ci_yaml_mapping_check(const char *what, const void *data, size_t len, qv_error *err) {
    int r = guard_check(what, data, len, err);
    if (r < 0)
        return r;
    return yaml_check(what, data, len, TOP_MAPPING, err);
}

int ci_user_data_check(const char *what, const void *data, size_t len, qv_error *err) {
    const char *p = data;
    if (len == 0)
        return 0;
    if (starts_with(p, len, "#!"))
        return 0;
    if (is_mime_multipart(p, len))
        return 0;
    if (memchr(p, '\0', len))
        return qv_error_set(err, EINVAL,
                            "%s: binary content; expected #cloud-config YAML, a #! script or a MIME multipart message",
                            what);
    bool cloud_config = starts_with(p, len, "#cloud-config") &&
                        (len == 13 || p[13] == '\n' || p[13] == '\r' || p[13] == ' ' || p[13] == '\t');
    int r = guard_check(what, data, len, err);
    if (r < 0)
        return r;
    r = yaml_check(what, data, len, cloud_config ? TOP_MAPPING : TOP_ANY, err);
    if (r < 0 && err) {
        size_t used = strlen(err->msg);
        snprintf(err->msg + used, sizeof err->msg - used,
                 " (expected #cloud-config YAML, a #! script or a MIME multipart message)");
    }
    return r;
}

/* ---- checks of values for the seed ---- */

int ci_hostname_check(const char *h, qv_error *err) {
    size_t n = strlen(h);
    if (n == 0)
        return qv_error_set(err, EINVAL, "the host name is empty");
    if (n > 253)
        return qv_error_set(err, EINVAL, "host name '%.40s…' is longer than 253 characters", h);
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = h[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || h[i - 1] == '-' || label > 63)
                return qv_error_set(err, EINVAL,
                                    "'%s' is not a valid host name (letters, digits and '-' in dot-separated "
                                    "labels of 1-63 characters that neither start nor end with '-')",
                                    h);
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && !(c == '-' && label > 0))
            return qv_error_set(err, EINVAL,
                                "'%s' is not a valid host name (letters, digits and '-' in dot-separated labels of "
                                "1-63 characters that neither start nor end with '-')",
                                h);
        label++;
    }
    return 0;
}

int ci_user_name_check(const char *u, qv_error *err) {
    size_t n = strlen(u);
    bool ok = n >= 1 && n <= 32 && (islower((unsigned char)u[0]) || u[0] == '_');
    for (size_t i = 1; ok && i < n; i++)
        ok = islower((unsigned char)u[i]) || isdigit((unsigned char)u[i]) || u[i] == '_' || u[i] == '-';
    if (!ok)
        return qv_error_set(err, EINVAL,
                            "'%s' is not a valid user name (lowercase letters, digits, '_' and '-', starting with a "
                            "letter or '_', at most 32 characters)",
                            u);
    return 0;
}

static const char *const ssh_key_types[] = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    NULL,
};

int ci_ssh_key_check(const char *key, qv_error *err) {
    size_t n = strlen(key);
    if (n == 0)
        return qv_error_set(err, EINVAL, "the SSH public key is empty");
    if (strncmp(key, "-----BEGIN", 10) == 0)
        return qv_error_set(err, EINVAL, "this is a private key; give the public one (the .pub file)");
    if (n > CI_SSH_KEY_MAX)
        return qv_error_set(err, EINVAL, "SSH public key '%.30s…' is longer than %d bytes", key, CI_SSH_KEY_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f)
            return qv_error_set(err, EINVAL, "SSH public key '%.30s…' is not one line (it has a control character)",
                                key);
    size_t tlen = strcspn(key, " \t");
    const char *type = NULL;
    for (size_t i = 0; ssh_key_types[i]; i++)
        if (strlen(ssh_key_types[i]) == tlen && memcmp(ssh_key_types[i], key, tlen) == 0)
            type = ssh_key_types[i];
    if (!type)
        return qv_error_set(err, EINVAL,
                            "'%.30s%s' is not an SSH public key: it should start with its type (ssh-ed25519, "
                            "ssh-rsa, ecdsa-sha2-nistp256, …)",
                            key, n > 30 ? "…" : "");
    const char *b = key + tlen;
    while (*b == ' ' || *b == '\t')
        b++;
    size_t blen = strcspn(b, " \t");
    uint8_t blob[CI_SSH_KEY_MAX];
    size_t got = 0;
    if (blen == 0 || qv_base64_decode(b, blen, blob, sizeof blob, &got) < 0)
        return qv_error_set(err, EINVAL, "'%.30s…' is not an SSH public key: the key data is %s", key,
                            blen ? "not valid base64" : "missing");
    uint32_t inner = got >= 4 ? (uint32_t)blob[0] << 24 | (uint32_t)blob[1] << 16 | (uint32_t)blob[2] << 8 | blob[3]
                              : UINT32_MAX;
    if (inner != tlen || got < 4 + tlen + 4 || memcmp(blob + 4, type, tlen) != 0)
        return qv_error_set(err, EINVAL,
                            "'%.30s…' is not an SSH public key: the key data does not belong to a %s key "
                            "(truncated or mixed up?)",
                            key, type);
    return 0;
}

static const char *const crypt_methods[] = {"y", "gy", "7", "2a", "2b", "2x", "2y", "6", "5", "sha1", "1", NULL};

int ci_password_hash_check(const char *hash, qv_error *err) {
    static const char how[] = "pass a crypt(3) hash such as $6$SALT$HASH or $y$…, not the password itself "
                              "(e.g. from `mkpasswd -m sha-512` or `openssl passwd -6`)";
    size_t n = strlen(hash);
    if (n == 0)
        return qv_error_set(err, EINVAL, "the password hash is empty: %s", how);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)hash[i] < 0x20 || hash[i] == 0x7f)
            return qv_error_set(err, EINVAL, "the password hash must be one line without control characters: %s",
                                how);
    if (n > CI_PASSWORD_HASH_MAX)
        return qv_error_set(err, EINVAL, "the password hash is longer than %d bytes: %s", CI_PASSWORD_HASH_MAX, how);
    /* "$ID$": a method crypt knows */
    size_t idlen = hash[0] == '$' ? strcspn(hash + 1, "$") : 0;
    bool known = false;
    for (size_t i = 0; crypt_methods[i] && idlen; i++)
        known |= strlen(crypt_methods[i]) == idlen && memcmp(hash + 1, crypt_methods[i], idlen) == 0;
    if (!known || hash[1 + idlen] != '$')
        return qv_error_set(err, EINVAL, "this does not look like a password hash (it does not start with $ID$ of "
                                         "a crypt method): %s", how);
    /* then [PARAMS$]SALT$HASH */
    const char *rest = hash + 2 + idlen;
    size_t fields = 1;
    for (const char *p = rest; *p; p++) {
        if (*p == '$')
            fields++;
        else if (!isalnum((unsigned char)*p) && !strchr("./=,", *p))
            return qv_error_set(err, EINVAL, "this does not look like a password hash (it has characters a crypt "
                                             "hash has not, such as spaces): %s", how);
    }
    if (fields < 2 || rest[strlen(rest) - 1] == '$')
        return qv_error_set(err, EINVAL, "this does not look like a password hash (no SALT$HASH after the method): %s",
                            how);
    return 0;
}

static bool pkg_char(char c, bool version) {
    return isalnum((unsigned char)c) || strchr("+._-", c) || (version && strchr("~:", c));
}

int ci_package_check(const char *pkg, qv_error *err) {
    static const char form[] = "NAME or NAME=VERSION: a letter or digit, then letters, digits and + . _ -; "
                               "a version may also hold ~ and :";
    size_t n = strlen(pkg);
    if (n == 0)
        return qv_error_set(err, EINVAL, "the package name is empty");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)pkg[i] < 0x20 || pkg[i] == 0x7f)
            return qv_error_set(err, EINVAL, "a package name must not hold control characters (%s)", form);
    if (n > CI_PACKAGE_MAX)
        return qv_error_set(err, EINVAL, "package '%.40s…' is longer than %d characters", pkg, CI_PACKAGE_MAX);
    if (strchr(pkg, ' '))
        return qv_error_set(err, EINVAL, "'%s' is not one package name: give one package per item", pkg);
    const char *eq = strchr(pkg, '=');
    size_t nl = eq ? (size_t)(eq - pkg) : n;
    bool ok = nl > 0 && isalnum((unsigned char)pkg[0]);
    for (size_t i = 1; ok && i < nl; i++)
        ok = pkg_char(pkg[i], false);
    if (ok && eq) {
        ok = eq[1] != '\0';
        for (const char *p = eq + 1; ok && *p; p++)
            ok = pkg_char(*p, true);
    }
    if (!ok)
        return qv_error_set(err, EINVAL, "'%s' is not a package name (%s)", pkg, form);
    return 0;
}

/* The code point at *p (valid UTF-8, as YAML and JSON give), advancing p;
 * -1 for a malformed sequence. */
static long utf8_next(const unsigned char **p) {
    const unsigned char *s = *p;
    if (s[0] < 0x80) {
        *p += 1;
        return s[0];
    }
    int len = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (!len)
        return -1;
    long cp = s[0] & (0x7f >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const long min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *p += len;
    return cp;
}

int ci_runcmd_check(const char *cmd, qv_error *err) {
    size_t n = strlen(cmd);
    if (n == 0)
        return qv_error_set(err, EINVAL, "the command is empty");
    if (n > CI_RUNCMD_MAX)
        return qv_error_set(err, EINVAL, "command '%.40s…' is longer than %d bytes (a script belongs in user_data)",
                            cmd, CI_RUNCMD_MAX);
    for (const unsigned char *p = (const unsigned char *)cmd; *p;) {
        long cp = utf8_next(&p);
        if (cp < 0)
            return qv_error_set(err, EINVAL, "the command is not valid UTF-8");
        if (cp == '\n' || cp == '\r')
            return qv_error_set(err, EINVAL, "a command must be one line: give each command its own item "
                                             "(a multi-line script belongs in user_data)");
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
            return qv_error_set(err, EINVAL, "the command holds the control character U+%04lX (only printable "
                                             "text is taken: no tabs, NUL or escapes)", (unsigned long)cp);
    }
    return 0;
}
