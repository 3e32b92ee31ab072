/* mkfaketopo ROOT: writes the two-node fake topology of faketopo.h under
 * ROOT, for integration tests that run the daemon with QVISOR_SYSROOT. */
#include "faketopo.h"

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: mkfaketopo ROOT\n");
        return 64;
    }
    qv_faketopo_two_nodes(argv[1]);
    return 0;
}
