/* The nftables table qvisor owns (`table ip qvisor`), through libnftables:
 * rendered as nft syntax by a pure function, applied as one atomic batch,
 * removed whole.  No `nft` program, no shell.
 *
 * Two habits of libnftables (1.0.x) the caller must live with: its netlink
 * socket is opened without SOCK_CLOEXEC for the length of a call, so do not
 * run these while another thread may fork and exec (call them from the
 * thread that spawns children); and it exit()s the process when it cannot
 * open that socket or allocate memory, rather than returning an error. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define ND_NFT_TABLE "qvisor"

/* The whole ruleset for NAT networks: masquerade traffic from each subnet
 * that leaves it (not to the subnet itself), e.g. for ("192.168.100.0/24")
 *
 *   table ip qvisor {…}              (add, then flush: the batch replaces it)
 *   … chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
 *   … ip saddr 192.168.100.0/24 ip daddr != 192.168.100.0/24 masquerade
 *
 * The exact text is pinned by unit tests.  subnets are "a.b.c.d/len",
 * already normalised; -EINVAL for anything else (no injection possible). */
int nd_nft_render_nat(const char *const *subnets, size_t n, char **ret, qv_error *err);
/* Runs a ruleset text as one transaction (nft_run_cmd_from_buffer);
 * err gets libnftables' own message on failure. */
int nd_nft_apply(const char *ruleset, qv_error *err);
/* Whether `table ip qvisor` exists. */
int nd_nft_table_exists(bool *ret, qv_error *err);
/* Deletes `table ip qvisor` with everything in it; 0 when it was absent. */
int nd_nft_table_delete(qv_error *err);
