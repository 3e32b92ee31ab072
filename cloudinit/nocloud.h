/* cloud-init NoCloud seed content: meta-data, user-data, network-config
 * (version 2) and vendor-data, emitted with libyaml so that no user value
 * can become YAML structure, and written as an ISO9660 seed.
 *
 * Every user-supplied string is emitted as a quoted scalar: cloud-init's
 * YAML 1.1 loader would otherwise turn "yes", "0x10" or "2024-01-01" into a
 * bool, an int or a date. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "iso9660.h"

#define CI_DEFAULT_LABEL "cidata"
#define CI_DEFAULT_USER "qvisor"
/* "iid-" + 32 hex digits (128 bits of SHA-256) + NUL */
#define CI_INSTANCE_ID_SIZE 37
/* meta-data, user-data, network-config, vendor-data */
#define CI_SEED_FILES_MAX 4
/* user-supplied files the CLI reads (user-data can be a large script) */
#define CI_INPUT_MAX (64u << 20)

typedef struct ci_nic {
    const char *id;      /* netplan interface id, [A-Za-z0-9_.-]{1,15}; NULL: "nicN" */
    const char *mac;     /* required, "52:54:00:12:34:56" (either case) */
    bool dhcp4;          /* DHCP for IPv4 */
    const char *address; /* static "10.0.0.5/24" or "fd00::5/64"; NULL with dhcp4 */
    const char *gateway; /* optional default route */
} ci_nic;

typedef struct ci_seed_spec {
    const char *hostname;      /* required: local-hostname and hostname */
    const char *user;          /* the login user; NULL: CI_DEFAULT_USER */
    const char *const *ssh_keys;
    size_t n_ssh_keys;
    const char *password_hash; /* crypt(3) hash; NULL: password login locked */
    const char *const *packages;
    size_t n_packages;
    const char *const *runcmd; /* each runs through sh */
    size_t n_runcmd;
    const ci_nic *nics; /* none: no network-config (cloud-init then DHCPs) */
    size_t n_nics;
    /* When set, the network-config verbatim (after ci_yaml_mapping_check);
     * nics, dns_servers and dns_search are then unused. */
    const char *network_config;
    size_t network_config_len;
    const char *const *dns_servers; /* from the node config; put on every NIC */
    size_t n_dns_servers;
    const char *const *dns_search;
    size_t n_dns_search;
    /* When set, replaces the generated user-data verbatim (after
     * ci_user_data_check); the user fields above are then unused. */
    const char *user_data;
    size_t user_data_len;
    const char *vendor_data; /* optional, checked like user-data */
    size_t vendor_data_len;
} ci_seed_spec;

typedef struct ci_blob {
    char *data; /* NUL-terminated for convenience; NULL when absent */
    size_t len;
} ci_blob;

typedef struct ci_seed {
    char instance_id[CI_INSTANCE_ID_SIZE];
    ci_blob meta_data;
    ci_blob user_data;
    ci_blob network_config; /* absent without NICs */
    ci_blob vendor_data;    /* absent unless given */
} ci_seed;

/* Generates the seed content.  On success *ret owns its buffers (release
 * with ci_seed_done); on failure *ret is left empty.  Errors: -EINVAL with a
 * message naming the field. */
int ci_seed_build(const ci_seed_spec *spec, ci_seed *ret, qv_error *err);
void ci_seed_done(ci_seed *seed);

/* Fills files[] (CI_SEED_FILES_MAX entries) with the present files, borrowing
 * the seed's buffers; returns how many. */
size_t ci_seed_files(const ci_seed *seed, ci_iso_file *files);

/* ci_seed_build + ci_iso_write_file_atomic (mode 0644, CI_ISO_DURABLE: a VM
 * restarted after a host crash finds a whole seed).  label NULL means
 * CI_DEFAULT_LABEL. */
int ci_seed_write(const char *path, const ci_seed_spec *spec, const char *label, int64_t timestamp, qv_error *err);

/* "iid-" + hex of SHA-256 over the files (name, length and bytes of each, in
 * the order given), so any change of content gives a new instance-id. */
void ci_instance_id(const ci_iso_file *files, size_t n, char out[CI_INSTANCE_ID_SIZE]);

/* meta-data with instance-id and, when hostname is non-NULL, local-hostname.
 * *ret is malloc'd (NUL-terminated), owned by the caller. */
int ci_meta_data_make(const char *instance_id, const char *hostname, char **ret, size_t *ret_len, qv_error *err);

/* Accepts what cloud-init runs: an empty file, a "#!" script, a MIME
 * multipart message, or YAML that parses (a "#cloud-config" document must
 * have a mapping at the top).  what names the file in messages.  -EINVAL
 * with "what: line L, column C: problem" otherwise. */
int ci_user_data_check(const char *what, const void *data, size_t len, qv_error *err);

/* YAML whose top level is a mapping (or empty), as cloud-init requires of
 * meta-data and network-config.  -EINVAL with a message otherwise. */
int ci_yaml_mapping_check(const char *what, const void *data, size_t len, qv_error *err);

/* Checks of values that end up in the seed, for the VM spec and the CLI.
 * Each returns 0 or -EINVAL with a message that quotes the value. */

/* A host name for local-hostname: RFC 1123 labels (letters, digits, '-',
 * not at either end of a label, 1-63 characters each) joined by dots, at
 * most 253 characters. */
int ci_hostname_check(const char *hostname, qv_error *err);

/* A Linux user name as useradd accepts it by default: [a-z_][a-z0-9_-]*,
 * at most 32 characters. */
int ci_user_name_check(const char *user, qv_error *err);

/* One authorized_keys-style public key line: "TYPE BASE64 [COMMENT]", TYPE a
 * key type OpenSSH knows (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, sk-…,
 * certificates), BASE64 a blob that decodes and names the same TYPE, no
 * control characters (one line: strip the newline first), at most
 * CI_SSH_KEY_MAX bytes.  A private key gets a message saying so. */
#define CI_SSH_KEY_MAX 16384
int ci_ssh_key_check(const char *key, qv_error *err);

/* A password for the user, as /etc/shadow holds it: a crypt(3) hash
 * "$ID$[PARAMS$]SALT$HASH" with a method ID libxcrypt knows (y, gy, 7, 2a,
 * 2b, 2x, 2y, 6, 5, sha1, 1), then characters of the crypt alphabet
 * [A-Za-z0-9./], '$' between fields and the '=' and ',' of parameters
 * (rounds=5000); the last field (the hash) not empty; one line of at most
 * CI_PASSWORD_HASH_MAX bytes.  Anything else, plain text in particular, is
 * refused with a message saying to pass a hash (mkpasswd); the messages
 * never quote the value, which may be a password. */
#define CI_PASSWORD_HASH_MAX 512
int ci_password_hash_check(const char *hash, qv_error *err);

/* One entry of cloud-init's `packages`: NAME or NAME=VERSION (an apt pin),
 * NAME a letter or digit then letters, digits and + . _ -, VERSION letters,
 * digits and + . _ - ~ :, at most CI_PACKAGE_MAX bytes.  So nothing that
 * apt-get could take for an option, and no spaces: one package per item. */
#define CI_PACKAGE_MAX 256
int ci_package_check(const char *pkg, qv_error *err);

/* One entry of cloud-init's `runcmd`, which runs it with sh -c: 1 to
 * CI_RUNCMD_MAX bytes of printable UTF-8 (spaces, quotes, $ and ; are the
 * user's business); no line breaks, tabs or other control characters. */
#define CI_RUNCMD_MAX 4096
int ci_runcmd_check(const char *cmd, qv_error *err);
