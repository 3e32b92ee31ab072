/* libFuzzer target for the spec and node-config loaders: YAML and JSON
 * through spec/schema.c, the checks the keys run (user_data,
 * network_config, names, sizes...), and the round trip the CLI relies on:
 * a spec read from YAML is sent to the daemon as JSON and must be accepted
 * there again, and the same for a config (sv_config_to_json is what
 * `config show` prints and sv_config_from_json what a reload takes back).
 *
 * Input: byte 0 selects the loader (VM spec or node config, YAML or JSON),
 * the rest is the file or request body. */
#include "spec/config.h"
#include "spec/vmspec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void spec_round_trip(sv_vmspec *s) {
    json_t *j = sv_vmspec_to_json(s);
    if (!j)
        abort();
    sv_vmspec *again = NULL;
    qv_error err = {0};
    if (sv_vmspec_from_json(j, &again, &err) < 0) {
        char *dump = json_dumps(j, JSON_COMPACT);
        fprintf(stderr, "spec does not survive its own JSON: %s\n%s\n", err.msg, dump ? dump : "?");
        abort();
    }
    sv_vmspec_free(again);
    json_decref(j);
}

static void config_round_trip(sv_config *c) {
    json_t *j = sv_config_to_json(c);
    if (!j)
        abort();
    sv_config *again = NULL;
    qv_error err = {0};
    if (sv_config_from_json(j, &again, &err) < 0) {
        char *dump = json_dumps(j, JSON_COMPACT);
        fprintf(stderr, "config does not survive its own JSON: %s\n%s\n", err.msg, dump ? dump : "?");
        abort();
    }
    sv_config_free(again);
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t mode = data[0] & 3;
    const char *text = (const char *)data + 1;
    size--;
    qv_error err = {0};

    if (mode == 0 || mode == 2) {
        if (mode == 0) {
            sv_vmspec *s = NULL;
            if (sv_vmspec_from_yaml("spec.yaml", text, size, &s, &err) == 0) {
                spec_round_trip(s);
                sv_vmspec_free(s);
            }
        } else {
            sv_config *c = NULL;
            if (sv_config_parse("qvisor.yaml", text, size, &c, &err) == 0) {
                config_round_trip(c);
                sv_config_free(c);
            }
        }
        return 0;
    }
    /* the daemon reads requests with JSON_REJECT_DUPLICATES */
    json_t *j = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
    if (!j)
        return 0;
    if (mode == 1) {
        sv_vmspec *s = NULL;
        if (sv_vmspec_from_json(j, &s, &err) == 0) {
            spec_round_trip(s);
            sv_vmspec_free(s);
        }
    } else {
        sv_config *c = NULL;
        if (sv_config_from_json(j, &c, &err) == 0) {
            config_round_trip(c);
            sv_config_free(c);
        }
    }
    json_decref(j);
    return 0;
}
