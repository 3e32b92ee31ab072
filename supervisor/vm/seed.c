/* A VM's cloud-init seed and SSH key pair (see seed.h). */
#include "supervisor/vm/seed.h"

#include "cleanup.h"
#include "util.h"
#include "fileio.h"
#include "log.h"
#include "run.h"
#include "cloudinit/iso9660.h"
#include "cloudinit/nocloud.h"
#include "supervisor/vm/nics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fsync_path(const char *path, int flags) {
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
    if (fd < 0 || fsync(fd) < 0)
        return -errno;
    return 0;
}

/* The public key --ssh generated: one line, the newline stripped. */
static int read_generated_key(const char *instance_dir, char **ret, qv_error *err) {
    char path[PATH_MAX];
    sv_layout_instance_file(instance_dir, SV_VM_SSH_KEY ".pub", path, sizeof path);
    char *data = NULL;
    size_t len;
    int r = qv_read_file(path, CI_SSH_KEY_MAX + 2, &data, &len);
    if (r == -ENOENT)
        return qv_error_set(err, ENOENT, "%s is missing (ssh_generate is set: the key pair is made at create)",
                            path);
    if (r < 0)
        return qv_error_set(err, -r, "cannot read %s: %s", path, strerror(-r));
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' '))
        data[--len] = '\0';
    qv_error e = {0};
    if (ci_ssh_key_check(data, &e) < 0) {
        free(data);
        return qv_error_set(err, EINVAL, "%s: %s", path, e.msg);
    }
    *ret = data;
    return 0;
}

/* Removes a stale seed (seed: false). */
static int seed_remove(const char *iso, const char *idp, const char *instance_dir, bool *ret_changed, qv_error *err) {
    bool removed = unlink(iso) == 0;
    if (!removed && errno != ENOENT)
        return qv_error_set(err, errno, "cannot remove %s: %s", iso, strerror(errno));
    if (unlink(idp) < 0 && errno != ENOENT)
        return qv_error_set(err, errno, "cannot remove %s: %s", idp, strerror(errno));
    if (removed)
        (void)fsync_path(instance_dir, O_DIRECTORY);
    if (ret_changed)
        *ret_changed = removed;
    return 0;
}

/* True when idp names this instance-id and iso is there. */
static bool seed_current(const char *iso, const char *idp, const char *instance_id) {
    _cleanup_free_ char *old = NULL;
    size_t len;
    if (qv_read_file(idp, 256, &old, &len) < 0)
        return false;
    while (len && (old[len - 1] == '\n' || old[len - 1] == ' '))
        old[--len] = '\0';
    struct stat st;
    return strcmp(old, instance_id) == 0 && stat(iso, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

int sv_seed_prepare(const sv_vmspec *spec, const sv_config *node, const char *instance_dir, bool *ret_changed,
                    qv_error *err) {
    char iso[PATH_MAX], idp[PATH_MAX];
    sv_layout_instance_file(instance_dir, SV_VM_SEED_FILE, iso, sizeof iso);
    sv_layout_instance_file(instance_dir, SV_SEED_ID, idp, sizeof idp);
    if (!spec->seed)
        return seed_remove(iso, idp, instance_dir, ret_changed, err);

    /* the host name: the spec's, else the VM name without trailing '-' */
    char hostname[64];
    if (!spec->hostname) {
        snprintf(hostname, sizeof hostname, "%s", spec->name);
        for (size_t n = strlen(hostname); n > 0 && hostname[n - 1] == '-'; n--)
            hostname[n - 1] = '\0';
    }

    /* SSH keys: the given ones, then the generated one */
    _cleanup_free_ char *generated = NULL;
    if (spec->ssh_generate) {
        int r = read_generated_key(instance_dir, &generated, err);
        if (r < 0)
            return r;
    }
    size_t n_given = qv_strv_len(spec->ssh_keys), n_keys = n_given + (generated ? 1 : 0);
    _cleanup_free_ const char **keys = calloc(n_keys + 1, sizeof *keys);
    if (!keys)
        return qv_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n_given; i++)
        keys[i] = spec->ssh_keys[i];
    if (generated)
        keys[n_given] = generated;

    /* network-config: user NICs DHCP (QEMU's user networking serves it);
     * nat NICs get their static address, the subnet's prefix and the
     * gateway; bridge NICs their static address, else DHCP */
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics;
    int rn = sv_net_nics(spec, nics, &n_nics, err);
    if (rn < 0)
        return rn;
    ci_nic cnics[ND_NICS_MAX];
    char ids[ND_NICS_MAX][8], addrs[ND_NICS_MAX][ND_IPV4_CIDR_STRLEN];
    unsigned nat_len = 24;
    uint32_t nat_net;
    nd_ipv4_cidr_parse(node->nat_subnet, &nat_net, &nat_len);
    for (size_t i = 0; i < n_nics; i++) {
        snprintf(ids[i], sizeof ids[i], "nic%zu", i);
        cnics[i] = (ci_nic){.id = ids[i], .mac = nics[i].mac, .dhcp4 = true};
        if (nics[i].mode == ND_MODE_NAT) {
            snprintf(addrs[i], sizeof addrs[i], "%s/%u", nics[i].ip, nat_len);
            cnics[i] = (ci_nic){.id = ids[i], .mac = nics[i].mac, .address = addrs[i], .gateway = node->nat_gateway};
        } else if (nics[i].mode == ND_MODE_BRIDGE && nics[i].ip[0]) {
            cnics[i] = (ci_nic){.id = ids[i], .mac = nics[i].mac, .address = nics[i].ip,
                                .gateway = nics[i].gw[0] ? nics[i].gw : NULL};
        }
    }
    ci_seed_spec cs = {
        .hostname = spec->hostname ? spec->hostname : hostname,
        .user = spec->user,
        .ssh_keys = keys,
        .n_ssh_keys = n_keys,
        .password_hash = spec->password_hash,
        .packages = (const char *const *)spec->packages,
        .n_packages = qv_strv_len(spec->packages),
        .runcmd = (const char *const *)spec->runcmd,
        .n_runcmd = qv_strv_len(spec->runcmd),
    };
    if (spec->network_config) {
        cs.network_config = spec->network_config;
        cs.network_config_len = strlen(spec->network_config);
    } else {
        cs.nics = cnics;
        cs.n_nics = n_nics;
        cs.dns_servers = (const char *const *)node->dns;
        cs.n_dns_servers = qv_strv_len(node->dns);
    }

    /* A user-data of the user's replaces ours.  The SSH keys still have to
     * reach the guest, so our cloud-config then goes to vendor-data, which
     * cloud-init merges under the user-data (the user-data's keys win). */
    _cleanup_free_ char *vendor = NULL;
    if (spec->user_data) {
        /* create refuses these with a user-data (sv_vmspec_complete); a
         * spec.json edited by hand must not lose them silently either */
        const char *key = sv_vmspec_generated_user_data_key(spec);
        if (key)
            return qv_error_set(err, EINVAL,
                                "cloud-init seed: %s needs the generated user-data, which user_data replaces", key);
        if (n_keys) {
            ci_seed_spec gen = {.hostname = cs.hostname, .user = cs.user, .ssh_keys = keys, .n_ssh_keys = n_keys};
            ci_seed g;
            int r = ci_seed_build(&gen, &g, err);
            if (r < 0)
                return r;
            vendor = TAKE_PTR(g.user_data.data);
            cs.vendor_data = vendor;
            cs.vendor_data_len = g.user_data.len;
            ci_seed_done(&g);
        }
        cs.user_data = spec->user_data;
        cs.user_data_len = strlen(spec->user_data);
    }

    ci_seed seed;
    int r = ci_seed_build(&cs, &seed, err);
    if (r < 0) {
        qv_error_prefix(err, "cloud-init seed: ");
        return r;
    }
    if (seed_current(iso, idp, seed.instance_id)) {
        ci_seed_done(&seed);
        if (ret_changed)
            *ret_changed = false;
        return 0;
    }

    int64_t ts;
    r = ci_iso_timestamp(&ts, err);
    if (r < 0) {
        ci_seed_done(&seed);
        return r;
    }
    /* seed.id goes first: a crash between the two writes then leaves no id,
     * and the next prepare writes the seed again, never trusting an id that
     * belongs to another image.  The image's durable rename fsyncs the
     * directory, which makes this unlink durable too. */
    if (unlink(idp) < 0 && errno != ENOENT) {
        r = qv_error_set(err, errno, "cannot remove %s: %s", idp, strerror(errno));
        ci_seed_done(&seed);
        return r;
    }
    ci_iso_file files[CI_SEED_FILES_MAX];
    size_t n = ci_seed_files(&seed, files);
    /* 0600 like the disk (a disk image QEMU gets as an fd), and user-data
     * may hold password hashes */
    r = ci_iso_write_file_atomic(iso, 0600, CI_ISO_DURABLE, CI_DEFAULT_LABEL, files, n, ts, err);
    if (r == 0) {
        char line[CI_INSTANCE_ID_SIZE + 1];
        int len = snprintf(line, sizeof line, "%s\n", seed.instance_id);
        r = qv_write_file_atomic(idp, line, (size_t)len, 0640);
        if (r < 0)
            qv_error_set(err, r, "cannot write %s: %s", idp, strerror(-r));
    }
    if (r == 0)
        log_debug("wrote %s (%s)", iso, seed.instance_id);
    ci_seed_done(&seed);
    if (r < 0)
        return r;
    if (ret_changed)
        *ret_changed = true;
    return 0;
}

int sv_seed_ssh_keygen(const char *vm_name, const char *instance_dir, qv_error *err) {
    char dir[PATH_MAX], key[PATH_MAX], pub[PATH_MAX + 4];
    sv_layout_instance_file(instance_dir, SV_VM_SSH_DIR, dir, sizeof dir);
    sv_layout_instance_file(instance_dir, SV_VM_SSH_KEY, key, sizeof key);
    snprintf(pub, sizeof pub, "%s.pub", key);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return qv_error_set(err, errno, "cannot create %s: %s", dir, strerror(errno));
    if (access(key, F_OK) == 0 && access(pub, F_OK) == 0)
        return 0;
    /* half a pair (an interrupted run): ssh-keygen would ask to overwrite */
    unlink(key);
    unlink(pub);

    char comment[96];
    snprintf(comment, sizeof comment, "qvisor-%s", vm_name);
    char *argv[] = {(char *)"ssh-keygen", (char *)"-q", (char *)"-t", (char *)"ed25519", (char *)"-N", (char *)"",
                    (char *)"-C",         comment,       (char *)"-f", key,                NULL};
    qv_run_result res;
    int r = qv_run(argv, 60000, NULL, NULL, &res);
    if (r == -ENOENT)
        return qv_error_set(err, EOPNOTSUPP, "ssh-keygen not found (install openssh-client) for --ssh");
    if (r < 0)
        return qv_error_set(err, -r, "cannot run ssh-keygen: %s", strerror(-r));
    if (!qv_run_ok(&res)) {
        char how[128];
        qv_run_describe(&res, how, sizeof how);
        size_t len = strlen(res.err);
        while (len && (res.err[len - 1] == '\n' || res.err[len - 1] == ' '))
            res.err[--len] = '\0';
        qv_error_set(err, EIO, "ssh-keygen %s: %s", how, res.err[0] ? res.err : "(no message)");
        qv_run_result_free(&res);
        unlink(key);
        unlink(pub);
        return -EIO;
    }
    qv_run_result_free(&res);
    if (chmod(key, 0600) < 0 || chmod(dir, 0700) < 0)
        return qv_error_set(err, errno, "cannot restrict %s: %s", key, strerror(errno));
    if ((r = fsync_path(key, 0)) < 0 || (r = fsync_path(pub, 0)) < 0 || (r = fsync_path(dir, O_DIRECTORY)) < 0 ||
        (r = fsync_path(instance_dir, O_DIRECTORY)) < 0)
        return qv_error_set(err, -r, "cannot sync the key pair in %s: %s", dir, strerror(-r));
    return 0;
}
