/* libFuzzer target for the checks of user-supplied cloud-init files
 * (ci_user_data_check for user-data and vendor-data, ci_yaml_mapping_check
 * for meta-data and network-config) and for the YAML pre-check in front of
 * them (common/yamlguard.c).
 *
 * The pre-check is held to its promise: whatever it lets through, libyaml
 * must not nest flow collections deeper than QV_YAML_MAX_DEPTH in it (else
 * the quadratic scanner is back).  libFuzzer's -timeout catches any input
 * that is slow anyway.
 *
 * Input: byte 0 selects the check, the rest is the file. */
#include "cloudinit/nocloud.h"
#include "yamlguard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <yaml.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The deepest flow nesting libyaml's scanner reached (its flow_level is
 * what the cost of every token grows with) before it stopped. */
static int libyaml_flow_depth(const uint8_t *data, size_t size) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, data, size);
    int deepest = 0;
    for (;;) {
        yaml_event_t ev;
        int ok = yaml_parser_parse(&parser, &ev);
        if (parser.flow_level > deepest)
            deepest = parser.flow_level;
        if (!ok)
            break;
        yaml_event_type_t t = ev.type;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&parser);
    return deepest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;

    if (qv_yaml_guard(data, size, NULL) == 0) {
        int d = libyaml_flow_depth(data, size);
        if (d > QV_YAML_MAX_DEPTH) {
            fprintf(stderr, "the pre-check let through flow nesting %d\n", d);
            abort();
        }
    }
    qv_error err = {0};
    if (mode & 1)
        ci_yaml_mapping_check("network-config", data, size, &err);
    else
        ci_user_data_check("user-data", data, size, &err);
    return 0;
}
