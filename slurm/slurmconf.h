/* slurm/: what qvisor reads of Slurm's configuration, and which of a node's
 * GPUs it offers to Slurm (docs/slurm.md).  Pure functions over text: the
 * CLI reads the files (with the user's rights) and hands their content in.
 *
 * Slurm names a job's GPUs by index: the position of the device among the
 * node's GPU lines of gres.conf (File= order).  `qvisor slurm gres` writes
 * those lines from qvisor's own GPU list (slurm_offered_gpus), so index i
 * of Slurm is the i-th offered GPU, and the prolog maps indexes back with
 * the same function; `qvisor slurm check` compares gres.conf and
 * slurm.conf with what qvisor sees.
 *
 * Errors: negative errno with a qv_error naming the file's line. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "vfio/vfio.h"

/* At most this many names from one hostlist or bracket expression: a
 * hostile "n[0-99999999]" is refused, not expanded. */
#define SLURM_EXPAND_MAX 65536

/* Expands Slurm's bracket ranges: "node[1-3,5]" -> node1 node2 node3 node5,
 * "gpu[01-02]" keeps the zero padding, several brackets multiply, a comma
 * outside brackets separates names ("a,b[1-2]" -> a b1 b2).  *ret is a
 * NULL-terminated array (free with slurm_strv_free).  -EINVAL for a
 * malformed expression, -E2BIG beyond SLURM_EXPAND_MAX names. */
int slurm_hostlist_expand(const char *expr, char ***ret, size_t *ret_n);
/* Whether host is one of the names of expr (false for a malformed one). */
bool slurm_hostlist_has(const char *expr, const char *host);
void slurm_strv_free(char **v);

/* The GPUs gres.conf gives `node`: the File= paths of its Name=gpu lines
 * (NodeName= naming the node, or no NodeName=) in order, ranges expanded.
 * A line without File= counts Count= GPUs (default 1) with a NULL path.
 * *ret is NULL-terminated with *ret_n entries (a NULL path ends nothing:
 * use ret_n); free with slurm_gres_files_free. */
int slurm_gres_conf_gpus(const char *text, const char *node, char ***ret, size_t *ret_n, qv_error *err);
void slurm_gres_files_free(char **files, size_t n);

/* The number of GPUs slurm.conf's NodeName line for `node` declares
 * (Gres=gpu:N, gpu:TYPE:N, summed; NodeName=DEFAULT applies to the lines
 * after it).  -ENOENT when no NodeName line names the node.  *ret_include
 * is set when the file has Include lines (not followed here). */
int slurm_conf_node_gpus(const char *text, const char *node, long *ret, bool *ret_include, qv_error *err);

/* What a job has on one node, from `scontrol -d show job ID`: the detail
 * line "Nodes=EXPR CPU_IDs=0-3,8 Mem=4096 GRES=gpu:2(IDX:0-1)" whose Nodes=
 * names the node.  -ENOENT when none does (not the job's node, or the job
 * is not running); -EINVAL for a line that cannot be read. */
#define SLURM_ALLOC_GPUS_MAX 64
typedef struct slurm_alloc {
    unsigned cpus;                            /* how many CPU_IDs */
    unsigned long long mem_mib;               /* Mem=, MiB; 0 when not given */
    unsigned gpus[SLURM_ALLOC_GPUS_MAX];      /* the GPU indexes (IDX:) */
    size_t n_gpus;
    unsigned uid;                             /* UserId=NAME(UID) */
    bool has_uid;
} slurm_alloc;
int slurm_job_alloc(const char *text, const char *node, slurm_alloc *ret, qv_error *err);

/* KillWait, in seconds, from `scontrol show config` ("KillWait = 30 sec"):
 * how long Slurm waits between SIGTERM and SIGKILL to a job's processes,
 * and so the time a job's VM gets to shut down cleanly.  -ENOENT when the
 * text has no KillWait line, -EINVAL when its value cannot be read. */
int slurm_config_kill_wait(const char *text, unsigned *ret);

/* The GPUs of l qvisor offers to Slurm, in qvisor's order (by PCI
 * address): those with an IOMMU group of no other GPU and of no device on
 * a host driver.  A GPU without a group cannot be passed through; two GPUs
 * in one group can only go to one VM together, which Slurm's per-device
 * indexes cannot express; a group member on a host driver (a NIC: not a
 * function of the GPU's slot, not a bridge, not on vfio-pci or pci-stub)
 * would have to be taken from the host (take-group), which a job's VM
 * never asks for.
 * ret gets pointers into l (at most l->n); returns how many.  why[i]
 * (optional, l->n entries) says why GPU i of l is left out, else "". */
size_t slurm_offered_gpus(const vfio_gpu_list *l, const vfio_gpu **ret, char (*why)[128]);

/* The device file gres.conf names for an offered GPU: DIR/GROUP (DIR
 * defaults to /dev/vfio, the group's device while it is on vfio-pci). */
int slurm_gpu_file(const vfio_gpu *g, const char *dir, char *buf, size_t len);
