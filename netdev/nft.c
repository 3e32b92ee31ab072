#include "netdev/nft.h"

#include "cleanup.h"
#include "dlib.h"
#include "log.h"
#include "netdev/ip.h"

#include <errno.h>
#include <nftables/libnftables.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libnftables and its libraries (libnftnl, libxtables, libgmp) are loaded
 * only when a NAT network is touched (see common/dlib.h) */
#define NFT_FUNCTIONS(X, s) \
    X(s, nft_ctx_new) \
    X(s, nft_ctx_free) \
    X(s, nft_ctx_buffer_output) \
    X(s, nft_ctx_buffer_error) \
    X(s, nft_ctx_get_output_buffer) \
    X(s, nft_ctx_get_error_buffer) \
    X(s, nft_run_cmd_from_buffer)
QV_DLIB_DEFINE(N, NFT_FUNCTIONS, "libnftables.so.1", "the NAT network's nftables table");

static void nft_ctx_freep(struct nft_ctx **ctx) {
    if (*ctx)
        N.nft_ctx_free(*ctx);
}

int nd_nft_render_nat(const char *const *subnets, size_t n, char **ret, qv_error *err) {
    if (n > 0 && !subnets)
        return qv_error_set(err, EINVAL, "no subnets given");
    /* every subnet is parsed and printed back from numbers: nothing of the
     * caller's text reaches the ruleset */
    _cleanup_free_ uint32_t *addrs = calloc(n ? n : 1, sizeof *addrs);
    _cleanup_free_ unsigned *lens = calloc(n ? n : 1, sizeof *lens);
    if (!addrs || !lens)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *s = subnets[i];
        if (nd_ipv4_cidr_parse(s, &addrs[i], &lens[i]) < 0)
            return qv_error_set(err, EINVAL, "invalid subnet '%s' (want a.b.c.d/len)", s ? s : "(null)");
        if (!nd_ipv4_cidr_normalised(addrs[i], lens[i])) {
            char norm[ND_IPV4_CIDR_STRLEN];
            nd_ipv4_cidr_format(addrs[i] & nd_ipv4_mask(lens[i]), lens[i], norm);
            return qv_error_set(err, EINVAL, "invalid subnet '%s': host bits set (did you mean %s?)", s, norm);
        }
    }

    _cleanup_free_ char *text = NULL;
    size_t size = 0;
    _cleanup_fclose_ FILE *f = open_memstream(&text, &size);
    if (!f)
        return qv_error_set(err, ENOMEM, "out of memory");
    /* "add" makes the table exist so that "flush" cannot fail; the flush
     * empties its chains, and the block below fills them again: one
     * transaction, so traffic never sees the table half-built */
    fputs("# managed by qvisor: replaced whole on every change\n"
          "add table ip " ND_NFT_TABLE "\n"
          "flush table ip " ND_NFT_TABLE "\n"
          "table ip " ND_NFT_TABLE " {\n"
          "\tchain postrouting {\n"
          "\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
          f);
    for (size_t i = 0; i < n; i++) {
        char net[ND_IPV4_CIDR_STRLEN];
        nd_ipv4_cidr_format(addrs[i], lens[i], net);
        fprintf(f, "\t\tip saddr %s ip daddr != %s masquerade\n", net, net);
    }
    fputs("\t}\n}\n", f);
    bool failed = ferror(f) != 0;
    failed |= fclose(TAKE_PTR(f)) != 0;
    if (failed)
        return qv_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(text);
    return 0;
}

/* libnftables reports errors as text only ("Error: Could not process rule:
 * Operation not permitted"); recover the errno where the text carries one. */
static int nft_errno(const char *msg) {
    static const int codes[] = {EPERM, ENOENT, EEXIST, EBUSY, EOPNOTSUPP, EPROTONOSUPPORT, ENOMEM, ENOSPC, EACCES};
    for (size_t i = 0; i < QV_ARRAY_SIZE(codes); i++)
        if (strstr(msg, strerror(codes[i])))
            return codes[i];
    if (strstr(msg, "syntax error"))
        return EINVAL;
    return EIO;
}

/* The first line of libnftables' error text.  The next two would echo the
 * input line and underline the culprit, but libnftables 1.0.6 echoes the
 * first line of a multi-line buffer whatever line erred, so they mislead. */
static void nft_error_summary(const char *buf, char *out, size_t size) {
    while (buf && (*buf == '\n' || *buf == ' '))
        buf++;
    if (!buf || !*buf) {
        snprintf(out, size, "no message from libnftables");
        return;
    }
    size_t len = strcspn(buf, "\n");
    while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        len--;
    snprintf(out, size, "%.*s", (int)len, buf);
}

/* Runs cmd with output and errors captured.  Returns 0 or a negative errno;
 * on failure msg gets the first line of the error text. */
static int nft_run(const char *cmd, char **ret_output, char *msg, size_t msg_size) {
    qv_error lerr = {0};
    if (qv_dlib_load(&N_lib, &lerr) < 0) {
        snprintf(msg, msg_size, "%s", lerr.msg);
        return -lerr.code;
    }
    _cleanup_(nft_ctx_freep) struct nft_ctx *ctx = N.nft_ctx_new(NFT_CTX_DEFAULT);
    if (!ctx) {
        snprintf(msg, msg_size, "cannot create a libnftables context");
        return -ENOMEM;
    }
    if (N.nft_ctx_buffer_output(ctx) != 0 || N.nft_ctx_buffer_error(ctx) != 0) {
        snprintf(msg, msg_size, "cannot buffer libnftables output");
        return -ENOMEM;
    }
    if (N.nft_run_cmd_from_buffer(ctx, cmd) != 0) {
        const char *e = N.nft_ctx_get_error_buffer(ctx);
        nft_error_summary(e, msg, msg_size);
        return -nft_errno(e ? e : "");
    }
    if (ret_output) {
        const char *out = N.nft_ctx_get_output_buffer(ctx);
        char *copy = strdup(out ? out : "");
        if (!copy) {
            snprintf(msg, msg_size, "out of memory");
            return -ENOMEM;
        }
        *ret_output = copy;
    }
    return 0;
}

int nd_nft_apply(const char *ruleset, qv_error *err) {
    if (!ruleset)
        return qv_error_set(err, EINVAL, "no ruleset given");
    char msg[512];
    int r = nft_run(ruleset, NULL, msg, sizeof msg);
    if (r < 0)
        return qv_error_set(err, r, "cannot apply the nftables ruleset: %s", msg);
    log_debug("applied the nftables table ip %s", ND_NFT_TABLE);
    return 0;
}

int nd_nft_table_exists(bool *ret, qv_error *err) {
    /* "list tables" and look, rather than "list table" and read its
     * error text: absence is not an error here */
    char msg[512];
    _cleanup_free_ char *out = NULL;
    int r = nft_run("list tables ip", &out, msg, sizeof msg);
    if (r < 0)
        return qv_error_set(err, r, "cannot list the nftables tables: %s", msg);
    bool found = false;
    for (char *line = out; line && *line && !found;) {
        size_t len = strcspn(line, "\n");
        found = len == strlen("table ip " ND_NFT_TABLE) && strncmp(line, "table ip " ND_NFT_TABLE, len) == 0;
        line += len;
        if (*line)
            line++;
    }
    *ret = found;
    return 0;
}

int nd_nft_table_delete(qv_error *err) {
    char msg[512];
    int r = nft_run("delete table ip " ND_NFT_TABLE, NULL, msg, sizeof msg);
    if (r == 0) {
        log_debug("deleted the nftables table ip %s", ND_NFT_TABLE);
        return 0;
    }
    /* absent is fine; tell it from a real failure by looking, not by
     * matching the error text */
    bool exists = true;
    if (nd_nft_table_exists(&exists, NULL) == 0 && !exists)
        return 0;
    return qv_error_set(err, r, "cannot delete the nftables table ip %s: %s", ND_NFT_TABLE, msg);
}
