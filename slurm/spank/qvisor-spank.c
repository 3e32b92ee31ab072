/* qvisor's SPANK plugin (docs/slurm.md): `sbatch --vm-image=IMAGE` runs the
 * job's VM on the node Slurm picked, with the job's CPUs, memory and GPUs.
 *
 * plugstack.conf:
 *   required /usr/lib/x86_64-linux-gnu/slurm-wlm/qvisor-spank.so [qvisor=PATH] [config=PATH]
 *   (config: %n is the node's name)
 *
 * - In sbatch/salloc/srun (the user's process): the options; the user's
 *   public key is read here, with the user's rights, and handed to the
 *   prolog in the job control environment (SPANK_QVISOR_SSH_KEY).
 * - In the job's prolog and epilog (slurmd, as root): `qvisor slurm prolog`
 *   and `qvisor slurm epilog` do the work; this only runs them (an argv,
 *   never a shell), logs their output in slurmd's log (relay) and returns
 *   their verdict, so a failure fails the
 *   prolog (the job is requeued or fails, the node drained) as Slurm
 *   does for any prolog.
 *
 * Nothing here trusts the user beyond syntax: the image name and the key
 * are checked again by qvisor, and the prolog takes the job's user, CPUs,
 * memory and GPUs from slurmd's environment and scontrol, not from
 * anything the user sent. */
#include <slurm/spank.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

SPANK_PLUGIN(qvisor, 1);

#define KEY_MAX 16384
#define NAME_MAX_LEN 63

extern char **environ;

static char image[NAME_MAX_LEN + 1];
static bool keep_disk;
static char key_path[4096];

static int opt_image(int val, const char *arg, int remote);
static int opt_keep(int val, const char *arg, int remote);
static int opt_key(int val, const char *arg, int remote);

/* spank_option's fields are char *: the texts are arrays, not literals */
static char image_name[] = "vm-image", image_arg[] = "IMAGE",
            image_usage[] = "run the job in a VM from qvisor base image IMAGE, with the job's CPUs, memory and "
                            "GPUs (qvisor)";
static char keep_name[] = "vm-keep-disk", keep_usage[] = "keep the job VM's disk after the job (default: removed "
                                                         "with the VM)";
static char key_name[] = "vm-ssh-key", key_arg[] = "FILE",
            key_usage[] = "public key for the job's VM (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub)";

static struct spank_option options[] = {
    {image_name, image_arg, image_usage, 1, 0, opt_image},
    {keep_name, NULL, keep_usage, 0, 0, opt_keep},
    {key_name, key_arg, key_usage, 1, 0, opt_key},
    SPANK_OPTIONS_TABLE_END,
};

/* A qvisor name: letters, digits, '-', '_', '.', not first '.' or '-'. */
static bool name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

static int opt_image(int val, const char *arg, int remote) {
    (void)val;
    (void)remote;
    if (!arg || !name_ok(arg)) {
        slurm_error("qvisor: --vm-image takes an image name (letters, digits, '-', '_', '.'), got '%s'",
                    arg ? arg : "");
        return -1;
    }
    snprintf(image, sizeof image, "%s", arg);
    return 0;
}

static int opt_keep(int val, const char *arg, int remote) {
    (void)val;
    (void)arg;
    (void)remote;
    keep_disk = true;
    return 0;
}

static int opt_key(int val, const char *arg, int remote) {
    (void)val;
    (void)remote;
    if (!arg || !*arg || strlen(arg) >= sizeof key_path) {
        slurm_error("qvisor: --vm-ssh-key takes a file name");
        return -1;
    }
    snprintf(key_path, sizeof key_path, "%s", arg);
    return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av) {
    (void)ac;
    (void)av;
    spank_context_t ctx = spank_context();
    if (ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_JOB_SCRIPT)
        return 0;
    for (struct spank_option *o = options; o->name; o++)
        if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
            slurm_error("qvisor: cannot register --%s", o->name);
            return -1;
        }
    return 0;
}

/* The key file, read with the user's rights: at most KEY_MAX bytes of
 * printable lines, each a comment or a public key. */
static int read_key(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || (size_t)st.st_size >= size) {
        close(fd);
        return -EINVAL;
    }
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return -EINVAL;
    buf[n] = '\0';
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        for (size_t i = 0; i < len; i++)
            if (!isprint((unsigned char)line[i]) && line[i] != '\t' && line[i] != '\r')
                return -EINVAL;
        if (len && line[0] != '#' && strncmp(line, "ssh-", 4) != 0 && strncmp(line, "ecdsa-", 6) != 0 &&
            strncmp(line, "sk-", 3) != 0)
            return -EINVAL;
        line += len + (nl ? 1 : 0);
    }
    return 0;
}

/* In sbatch/salloc/srun: the key goes to the prolog. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av) {
    (void)ac;
    (void)av;
    spank_context_t ctx = spank_context();
    if ((ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL) || !image[0])
        return 0;
    static char key[KEY_MAX];
    const char *home = getenv("HOME");
    static const char *const defaults[] = {".ssh/id_ed25519.pub", ".ssh/id_ecdsa.pub", ".ssh/id_rsa.pub", NULL};
    int r = -ENOENT;
    if (key_path[0]) {
        r = read_key(key_path, key, sizeof key);
        if (r < 0) {
            slurm_error("qvisor: --vm-ssh-key %s: %s", key_path,
                        r == -EINVAL ? "not a public key file (at most 16 KiB of ssh-… lines)" : strerror(-r));
            return -1;
        }
    } else {
        for (size_t i = 0; defaults[i] && r < 0 && home; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", home, defaults[i]);
            r = read_key(path, key, sizeof key);
        }
        if (r < 0)
            slurm_info("qvisor: no public key in ~/.ssh (give --vm-ssh-key): the VM gets none");
    }
    if (r == 0 && spank_job_control_setenv(sp, "QVISOR_SSH_KEY", key, 1) != ESPANK_SUCCESS) {
        slurm_error("qvisor: cannot hand the public key to the job's prolog");
        return -1;
    }
    return 0;
}

/* The plugin's arguments in plugstack.conf: qvisor=PATH, config=PATH; in
 * config, %n stands for the node's name (SLURMD_NODENAME): several slurmd
 * on one host (a test cluster) each with its own qvisor daemon.  -1 when
 * the config path does not fit. */
static int plugin_args(int ac, char **av, const char **qvisor, char *config, size_t size) {
    *qvisor = "/usr/bin/qvisor";
    config[0] = '\0';
    const char *node = getenv("SLURMD_NODENAME");
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "qvisor=", 7) == 0) {
            *qvisor = av[i] + 7;
            continue;
        }
        if (strncmp(av[i], "config=", 7) != 0) {
            slurm_info("qvisor: unknown plugin argument '%s' ignored", av[i]);
            continue;
        }
        size_t n = 0;
        for (const char *p = av[i] + 7; *p; p++) {
            const char *add = p;
            size_t len = 1;
            if (p[0] == '%' && p[1] == 'n') {
                if (!node || !name_ok(node))
                    return -1;
                add = node;
                len = strlen(node);
                p++;
            }
            if (n + len >= size)
                return -1;
            memcpy(config + n, add, len);
            n += len;
        }
        config[n] = '\0';
    }
    return 0;
}

/* qvisor's output into slurmd's log, a line at a time: slurmstepd gives a
 * SPANK prolog no stderr of its own, and an administrator reads there why
 * a node was drained.  "qvisor: error: ..." lines as errors, the rest as
 * information; a line longer than 1 KiB is cut, and after RELAY_MAX_LINES
 * lines the rest are counted, not logged. */
#define RELAY_MAX_LINES 200

static void relay_line(const char *line, size_t *lines) {
    if (!*line || (*lines)++ >= RELAY_MAX_LINES)
        return;
    bool ours = strncmp(line, "qvisor: ", 8) == 0;
    if (ours && strncmp(line + 8, "error: ", 7) == 0)
        slurm_error("%s", line);
    else
        slurm_info("%s%s", ours ? "" : "qvisor: ", line);
}

static void relay(int fd) {
    char buf[1024];
    size_t len = 0, lines = 0;
    bool cut = false; /* in the rest of a line too long for buf */
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        size_t start = 0;
        char *nl;
        while ((nl = memchr(buf + start, '\n', len - start))) {
            *nl = '\0';
            if (!cut)
                relay_line(buf + start, &lines);
            cut = false;
            start = (size_t)(nl - buf) + 1;
        }
        len -= start;
        memmove(buf, buf + start, len);
        if (len == sizeof buf - 1) {
            buf[len] = '\0';
            if (!cut)
                relay_line(buf, &lines);
            cut = true;
            len = 0;
        }
    }
    buf[len] = '\0';
    if (!cut)
        relay_line(buf, &lines);
    if (lines > RELAY_MAX_LINES)
        slurm_info("qvisor: %zu more lines of output not logged", lines - RELAY_MAX_LINES);
}

/* qvisor [--config C] slurm VERB [--image I] [--keep-disk]: its exit status
 * decides (0 or -1 for Slurm). */
static int run_qvisor(spank_t sp, int ac, char **av, const char *verb) {
    struct spank_option *img = &options[0], *keep = &options[1];
    char *arg = NULL;
    if (spank_option_getopt(sp, img, &arg) != ESPANK_SUCCESS || !arg || !name_ok(arg))
        return 0; /* not a VM job */
    bool keep_it = spank_option_getopt(sp, keep, NULL) == ESPANK_SUCCESS;
    const char *qvisor;
    char config[4096];
    if (plugin_args(ac, av, &qvisor, config, sizeof config) < 0) {
        slurm_error("qvisor: the plugin's config= does not fit, or %%n without a valid SLURMD_NODENAME");
        return -1;
    }
    const char *argv[12];
    size_t n = 0;
    argv[n++] = qvisor;
    if (config[0]) {
        argv[n++] = "--config";
        argv[n++] = config;
    }
    argv[n++] = "slurm";
    argv[n++] = verb;
    if (strcmp(verb, "prolog") == 0) {
        argv[n++] = "--image";
        argv[n++] = arg;
    }
    if (keep_it)
        argv[n++] = "--keep-disk";
    argv[n] = NULL;
    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        slurm_error("qvisor: pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        slurm_error("qvisor: fork: %s", strerror(errno));
        close(out[0]);
        close(out[1]);
        return -1;
    }
    if (pid == 0) {
        if (dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0)
            _exit(127);
        execve(qvisor, (char *const *)argv, environ);
        dprintf(2, "qvisor-spank: cannot run %s: %s\n", qvisor, strerror(errno));
        _exit(127);
    }
    close(out[1]);
    relay(out[0]);
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            slurm_error("qvisor: waitpid: %s", strerror(errno));
            return -1;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    slurm_error("qvisor: `qvisor slurm %s` for VM image %s failed (%s %d): see its messages above", verb, arg,
                WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return -1;
}

int slurm_spank_job_prolog(spank_t sp, int ac, char **av) {
    return run_qvisor(sp, ac, av, "prolog");
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av) {
    return run_qvisor(sp, ac, av, "epilog");
}
