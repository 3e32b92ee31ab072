/* Spawning QEMU: the files it gets as fds, the user it runs as, its argv,
 * the log header, the spawn itself, and the monitor connection. */
#include "supervisor/vm/engine.h"

/* The files QEMU gets as fds (qemuargv.h), opened here by the daemon, in
 * the plan's order (FILE_FD(f, SV_PLAN_DISK), …); -1 for none.  Closed once
 * QEMU has its copies. */
typedef struct vm_files {
    int fd[SV_PLAN_FILES];
} vm_files;

#define FILE_FD(f, what) ((f)->fd[(what) - SV_PLAN_DISK])

static void vm_files_close(vm_files *f) {
    for (size_t i = 0; i < SV_PLAN_FILES; i++)
        if (f->fd[i] >= 0) {
            close(f->fd[i]);
            f->fd[i] = -1;
        }
}

/* Opens what QEMU needs of the VM's files, each with the access mode QEMU
 * will ask its fdset for.  qvisor's own files are reached relative to the
 * instance directory and never through a symlink; the disk (a symlink into
 * its storage pool when it lives in one) must be the very file create made.
 * Returns 0 or -errno with err set; *f is filled as far as it got. */
static int open_vm_files(const sv_vm *vm, int dirfd, const char *base, vm_files *f, qv_error *err) {
    const sv_vmspec *s = vm->spec;
    for (size_t i = 0; i < SV_PLAN_FILES; i++)
        f->fd[i] = -1;
    int r = FILE_FD(f, SV_PLAN_DISK) = qv_open_existing_at(dirfd, SV_VM_DISK_FILE, O_RDWR);
    struct stat st;
    if (r >= 0 && vm->disk_ino &&
        (fstat(r, &st) < 0 || (uint64_t)st.st_dev != vm->disk_dev || (uint64_t)st.st_ino != vm->disk_ino))
        return qv_error_set(err, EPERM, "%s/disk.qcow2 is not the disk qvisor made for VM '%s' (another file is in "
                            "its place)", vm->dir, vm->name);
    if (r < 0)
        return qv_error_set(err, -r, "cannot open %s/disk.qcow2: %s", vm->dir, strerror(-r));
    if ((r = FILE_FD(f, SV_PLAN_BASE) = qv_open_existing_at(AT_FDCWD, base, O_RDONLY | O_NOFOLLOW)) < 0)
        return qv_error_set(err, -r, "cannot open base image %s: %s", base, strerror(-r));
    if (s->seed) {
        r = FILE_FD(f, SV_PLAN_SEED) = qv_open_existing_at(dirfd, SV_VM_SEED_FILE, O_RDONLY | O_NOFOLLOW);
        if (r < 0 && r != -ENOENT)
            return qv_error_set(err, -r, "cannot open %s/" SV_VM_SEED_FILE ": %s", vm->dir, strerror(-r));
    }
    if (s->firmware != SV_FIRMWARE_BIOS && s->firmware_code) {
        /* the node's firmware (a package's file, maybe a symlink), read-only */
        if ((r = FILE_FD(f, SV_PLAN_FW_CODE) = qv_open_existing_at(AT_FDCWD, s->firmware_code, O_RDONLY)) < 0)
            return qv_error_set(err, -r, "cannot open firmware %s: %s", s->firmware_code, strerror(-r));
        if ((r = FILE_FD(f, SV_PLAN_FW_VARS) = qv_open_existing_at(dirfd, SV_VM_VARS_FILE, O_RDWR | O_NOFOLLOW)) < 0)
            return qv_error_set(err, -r, "cannot open %s/" SV_VM_VARS_FILE ": %s", vm->dir, strerror(-r));
    }
    /* disk images are 0600 whatever an older qvisor left (seeds were 0640) */
    int images[] = {FILE_FD(f, SV_PLAN_DISK), FILE_FD(f, SV_PLAN_SEED), FILE_FD(f, SV_PLAN_FW_VARS)};
    for (size_t i = 0; i < QV_ARRAY_SIZE(images); i++)
        if (images[i] >= 0 && fchmod(images[i], 0600) < 0)
            return qv_error_set(err, errno, "cannot make the files of VM '%s' 0600: %s", vm->name, strerror(errno));
    /* made empty (0640) by the prep; appended to, so that QEMU goes on at
     * the start of a log the daemon emptied (serlog.h) */
    if ((r = FILE_FD(f, SV_PLAN_SERIAL) = qv_open_regular_at(dirfd, SV_VM_SERIAL_LOG, O_WRONLY | O_APPEND, 0640)) < 0)
        return qv_error_set(err, -r, "cannot open %s/serial.log: %s", vm->dir, strerror(-r));
    if (s->kernel && (r = FILE_FD(f, SV_PLAN_KERNEL) = qv_open_existing_at(AT_FDCWD, s->kernel, O_RDONLY)) < 0)
        return qv_error_set(err, -r, "cannot open kernel %s: %s", s->kernel, strerror(-r));
    if (s->kernel && s->initrd && (r = FILE_FD(f, SV_PLAN_INITRD) = qv_open_existing_at(AT_FDCWD, s->initrd, O_RDONLY)) < 0)
        return qv_error_set(err, -r, "cannot open initrd %s: %s", s->initrd, strerror(-r));
    return 0;
}

/* The user QEMU drops to: NULL when it stays root (the daemon is not root,
 * or qemu.run_as is root); -ENOENT (err set) when the node lacks the user. */
static int qemu_user(const sv_config *conf, const char **ret, qv_error *err) {
    *ret = NULL;
    if (geteuid() != 0 || !conf->run_as[0] || strcmp(conf->run_as, "root") == 0)
        return 0;
    struct passwd *pw = getpwnam(conf->run_as);
    if (!pw)
        return qv_error_set(err, QV_ECONFIG,
                            "qemu.run_as: no user named '%s' on this node (run scripts/setup, which creates it, or "
                            "set qemu.run_as)", conf->run_as);
    if (pw->pw_uid != 0)
        *ret = conf->run_as;
    return 0;
}

/* The pid of the QEMU `userdata` is written, or could not be: a
 * QEMU whose pid is not on disk would be lost to a daemon restart, so the
 * start fails; else the guest may run (`cont`, if the monitor is ready). */
static void pid_saved(vmrt *rt, int status, const qv_error *err, void *userdata) {
    sv_vm *vm = rt->vm;
    if (!vm || rt->c->shutting_down || vm->state != SV_VM_STARTING || !rt->watch ||
        rt->watch->pid != (pid_t)(intptr_t)userdata)
        return; /* gone, or stopped: the pid does not matter any more */
    if (status < 0) {
        char why[sizeof err->msg + 32];
        snprintf(why, sizeof why, "cannot record its pid: %s", err->msg);
        vm__start_fail_code(rt, err->code, why);
        return;
    }
    sv_crash_point("start-after-spawn");
    rt->pid_saved = true;
    if (rt->cont_waits_save && !rt->stop_reason)
        vm__send_cont(rt);
}

void vm__launch(vmrt *rt) {
    sv_vmctl *c = rt->c;
    const sv_config *conf = cfg(c);
    sv_vm *vm = rt->vm;
    qv_error err = {0};
    rt->starting_prep = false;

    bool kvm = false;
    char warning[512] = "";
    if (sv_qemu_accel_resolve(sv_accel_to_string(conf->accelerator), &c->caps, &kvm, warning, sizeof warning,
                              &err) < 0) {
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    if (warning[0] && !c->accel_warned) {
        log_warning("%s", warning);
        c->accel_warned = true;
    }
    /* checked at create, but the node may have changed since (KVM gone,
     * another QEMU): QEMU's own refusal would be less clear */
    if (vm->spec->cpu_model && sv_qemu_cpu_model_check(&c->caps, kvm, vm->spec->cpu_model, &err) < 0) {
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }

    char qmp_path[PATH_MAX], qga_path[PATH_MAX], con_path[PATH_MAX], pidfile[PATH_MAX], disk[PATH_MAX],
        serial[PATH_MAX], logpath[PATH_MAX], seed[PATH_MAX], vars[PATH_MAX];
    vm__run_path(rt, SV_VM_QMP_SOCK, qmp_path, sizeof qmp_path);
    vm__run_path(rt, SV_VM_QGA_SOCK, qga_path, sizeof qga_path);
    vm__run_path(rt, SV_VM_CONSOLE_SOCK, con_path, sizeof con_path);
    vm__run_path(rt, SV_VM_PIDFILE, pidfile, sizeof pidfile);
    sv_layout_instance_file(vm->dir, SV_VM_DISK_FILE, disk, sizeof disk);
    sv_layout_instance_file(vm->dir, SV_VM_SERIAL_LOG, serial, sizeof serial);
    sv_layout_instance_file(vm->dir, SV_VM_QEMU_LOG, logpath, sizeof logpath);
    sv_layout_instance_file(vm->dir, SV_VM_SEED_FILE, seed, sizeof seed);
    sv_layout_instance_file(vm->dir, SV_VM_VARS_FILE, vars, sizeof vars);
    if (!qmp_path[0] || !qga_path[0] || !con_path[0] || !pidfile[0]) {
        vm__start_abandon(rt, ENAMETOOLONG, "run directory path too long");
        return;
    }

    /* the daemon binds the sockets and QEMU inherits them: no socket file
     * is made by QEMU (which may run as another user), and they exist
     * before QEMU does */
    _cleanup_close_ int lfd = -1, afd = -1, cfd = -1;
    const char *failed = qmp_path;
    int r = qmp_listen_socket(qmp_path, &lfd);
    if (r >= 0 && vm->spec->agent) {
        failed = qga_path;
        r = qmp_listen_socket(qga_path, &afd);
    }
    if (r >= 0) {
        failed = con_path;
        r = qmp_listen_socket(con_path, &cfd);
    }
    if (r < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot listen on %s: %s", failed, strerror(-r));
        vm__start_abandon(rt, -r, why);
        return;
    }
    /* SSH is forwarded by the first user-mode NIC; a VM without one has no port */
    nd_nic nics[ND_NICS_MAX];
    size_t n_nics = 0;
    if (sv_net_nics(vm->spec, nics, &n_nics, &err) < 0) {
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    bool user_nic = false;
    for (size_t i = 0; i < n_nics; i++)
        user_nic = user_nic || nics[i].mode == ND_MODE_USER;
    int port = user_nic ? vm__pick_port(c) : 0;
    if (port < 0) {
        vm__start_abandon(rt, -port, "no free TCP port on 127.0.0.1 for the SSH forward");
        return;
    }
    const char *run_as;
    if (qemu_user(conf, &run_as, &err) < 0) {
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    _cleanup_close_ int vmdirfd = qv_open_dir_nofollow(vm->dir);
    if (vmdirfd < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot open %s: %s", vm->dir,
                 vmdirfd == -ENOTDIR || vmdirfd == -ELOOP ? "not a directory (a symlink?)" : strerror(-vmdirfd));
        vm__start_abandon(rt, -vmdirfd, why);
        return;
    }
    char base[PATH_MAX];
    vm_files files;
    if (sv_image_path(conf, vm->spec->image, base, sizeof base, &err) < 0 ||
        open_vm_files(vm, vmdirfd, base, &files, &err) < 0) {
        vm_files_close(&files);
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    if (!kvm)
        sv_net_fds_drop_vhost(&rt->net); /* vhost-net needs KVM's irqfd */
    sv_hostdev hostdevs[64];
    size_t n_host = 0;
    for (size_t i = 0; i < rt->pt_plan.n && n_host < QV_ARRAY_SIZE(hostdevs); i++)
        if (rt->pt_plan.devs[i].pass)
            hostdevs[n_host++] = (sv_hostdev){rt->pt_plan.devs[i].bdf, (unsigned)rt->pt_plan.devs[i].gpu,
                                              (unsigned)rt->pt_plan.devs[i].function};
    /* what this start has, for the plan (launchplan.h): a pure function of it */
    sv_launch_input in = {
        .spec = vm->spec,
        .env = {.binary = conf->qemu_binary, .kvm = kvm, .sandbox = c->caps.sandbox, .run_as = run_as},
        .disk = disk,
        .serial_log = serial,
        .pidfile = pidfile,
        .seed_iso = seed,
        .firmware_vars = vm->spec->firmware != SV_FIRMWARE_BIOS ? vars : NULL,
        .qga = afd >= 0,
        .ssh_port = port,
        .numa_bind = rt->place.bind_memory,
        .numa_node = rt->place.numa_node >= 0 ? (unsigned)rt->place.numa_node : 0,
        .hostdevs = hostdevs,
        .n_hostdevs = n_host,
    };
    for (size_t i = 0; i < ND_NICS_MAX; i++) {
        in.tap[i] = rt->net.tap[i] >= 0;
        in.vhost[i] = rt->net.vhost[i] >= 0;
    }
    for (size_t i = 0; i < SV_PLAN_FILES; i++)
        in.file[i] = files.fd[i] >= 0;
    sv_launch_plan plan;
    if (sv_launch_plan_make(&in, &plan, &err) < 0) {
        vm_files_close(&files);
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    /* executing it: each slot is one of the descriptors opened above */
    int fds[SV_PLAN_MAX_FDS];
    for (size_t i = 0; i < plan.n_slots; i++) {
        const sv_plan_slot *sl = &plan.slots[i];
        fds[i] = sl->what == SV_PLAN_QMP       ? lfd
                 : sl->what == SV_PLAN_QGA     ? afd
                 : sl->what == SV_PLAN_CONSOLE ? cfd
                 : sl->what == SV_PLAN_TAP     ? rt->net.tap[sl->nic]
                 : sl->what == SV_PLAN_VHOST   ? rt->net.vhost[sl->nic]
                                               : FILE_FD(&files, sl->what);
    }
    sv_proc_limits limits = {.memlock = plan.memlock};
#if QV_TEST_HOOKS
    /* test machines lack CAP_SYS_RESOURCE; the fake QEMU checks the request in qemu.log */
    limits.memlock_best_effort = getenv("QVISOR_TEST_MEMLOCK_BEST_EFFORT") != NULL;
#endif
    /* relative to the instance directory, never through a symlink, 0640
     * whatever an older qvisor or the umask left */
    _cleanup_close_ int logfd = qv_open_regular_at(vmdirfd, SV_VM_QEMU_LOG, O_WRONLY | O_APPEND, 0640);
    _cleanup_free_ char *planlog = sv_launch_plan_log(&plan);
    if (logfd < 0 || !planlog) {
        int e = logfd < 0 ? -logfd : ENOMEM;
        sv_launch_plan_clear(&plan);
        vm_files_close(&files);
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot open %s: %s", logpath, strerror(e));
        vm__start_abandon(rt, e, why);
        return;
    }
    /* a header, then the command line, as libvirt does: the log explains itself */
    char stamp[64];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&now, &tm));
    dprintf(logfd, "---- qvisor: starting %s at %s (%s) ----\n%s", vm->name, stamp, kvm ? "KVM" : "TCG", planlog);
    rt->log_offset = lseek(logfd, 0, SEEK_END);

    pid_t pid;
    int pidfd;
    r = sv_proc_spawn(plan.argv, logfd, fds, plan.n_slots, &limits, &pid, &pidfd, &err);
    sv_launch_plan_clear(&plan);
    sv_net_fds_close(&rt->net); /* QEMU has them: its TAPs now live and die with it */
    vm_files_close(&files);
    if (r < 0) {
        vm__start_abandon(rt, err.code, err.msg);
        return;
    }
    rt->our_child = true;
    rt->cont_sent = false;
    rt->paused = false;
    rt->agent_port = 0; /* the guest has not opened it: it has not run yet */
    rt->shutdown_seen = rt->shutdown_guest = rt->panicked = false;
    rt->shutdown_reason[0] = '\0';
    vm->run.pid = pid;
    vm->run.start_ticks = 0;
    sv_proc_start_time(pid, &vm->run.start_ticks);
    vm->run.started_at = (int64_t)now;
    vm->run.ssh_port = port;
    vm->run.numa_node = rt->place.numa_node;
    /* the pid goes to disk while QEMU comes up and its monitor connects;
     * `cont` waits for it (pid_saved) */
    rt->pid_saved = rt->cont_waits_save = false;
    vm__save(rt, pid_saved, (void *)(intptr_t)pid);
    r = vm__watch_start(rt, pid, pidfd);
    if (r < 0) {
        /* cannot watch it: do not leave it running unwatched */
        sv_pidfd_signal(pidfd, SIGKILL);
        waitpid(pid, NULL, 0);
        close(pidfd);
        vm__remove_run_files(rt);
        vm__start_abandon(rt, -r, "cannot watch the QEMU process");
        return;
    }
    log_info("VM %s: QEMU started (pid %d, %s%s)", vm->name, (int)pid, kvm ? "KVM" : "TCG",
             in.env.sandbox ? ", seccomp sandbox" : "");
    vm__serial_cap_start(rt);
    uv_timer_start(&rt->timer, vm__on_start_timeout, sv_pt_start_timeout_ms(vm->spec, START_TIMEOUT_MS), 0);
    r = vm__qmp_attach(rt);
    if (r < 0)
        vm__start_fail_kill(rt, "cannot connect to the monitor socket");
}
