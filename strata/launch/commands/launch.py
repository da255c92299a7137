"""`strata launch`: turn a job config into a SLURM batch script or Kubernetes manifests.

Launchers only write (and, asked to, submit) what starts the processes; every process then
runs `strata train CONFIG --resume`. The job config is loaded and validated first, so a bad
key fails here rather than on the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os

from strata.storage import fs

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="write (and submit) a SLURM batch script or Kubernetes manifests for a job config",
        description="Write what starts a training job on a cluster: an sbatch script ('slurm') or "
        "Kubernetes manifests ('k8s'). See README.md, 'Run on a cluster'.",
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    _register_slurm(targets)
    _register_k8s(targets)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path of the YAML job config (as the job will see it)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (hosts or pods) of the job (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; 0 = CPU only (default 0)")
    p.add_argument(
        "--procs-per-node", type=int, default=0,
        help="training processes per node (default: one per GPU, or 1 without GPUs)",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value for this job, e.g. --set train.epochs=50 (repeatable)",
    )


def _register_slurm(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "slurm",
        help="write an sbatch script; --submit submits it and prints the job id",
        description="Write an sbatch script that trains CONFIG on a SLURM allocation, requeueable, "
        "logging to RUN_DIR/slurm-<jobid>.out and always resuming from the newest complete checkpoint. "
        "Mode 'torchrun' runs one torchrun per node with a c10d rendezvous on the first node; mode "
        "'srun' runs one task per process and strata reads SLURM_* itself.",
    )
    _common(p)
    p.add_argument("--mode", choices=("torchrun", "srun"), default="torchrun", help="how processes start (default torchrun)")
    p.add_argument("--partition", default="", help="SLURM partition (default: the cluster's default)")
    p.add_argument("--time", default="", help="time limit, e.g. 4:00:00 (default: the partition's)")
    p.add_argument("--cpus-per-task", type=int, default=0, help="CPUs of each srun task (default: SLURM's)")
    p.add_argument("--port", type=int, default=0, help="rendezvous port (default 20000 + job id mod 10000)")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun mode: worker restarts after a failure (default 0)")
    p.add_argument("--python", default="python3", help="interpreter on the compute nodes (default python3)")
    p.add_argument(
        "--signal-seconds", type=int, default=120,
        help="seconds before the time limit at which the job stops at a checkpoint and requeues itself "
        "(SLURM's --signal=B:USR1@N); 0 = none (default 120)",
    )
    p.add_argument("--chdir", default="", help="working directory of the job (default: the current directory)")
    p.add_argument("--out", default="", help="where to write the script (default RUN_DIR/<name>.sbatch)")
    p.add_argument("--submit", action="store_true", help="submit with 'sbatch --parsable' and print the job id")
    p.set_defaults(func=run_slurm)


def _local_run_dir(run_dir: str, name: str) -> str:
    """The run directory when it is a local path; a remote one keeps SLURM's log under runs/<name>."""
    if "://" in run_dir and not run_dir.startswith("file://"):
        return f"runs/{name}"
    return run_dir.removeprefix("file://")


def run_slurm(args: argparse.Namespace) -> int:
    from strata.launch.job import load_job
    from strata.launch.slurm import SlurmConfig, sbatch_script, submit

    job = load_job(args.config, args.overrides)
    cfg = SlurmConfig(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, procs_per_node=args.procs_per_node, mode=args.mode,
        partition=args.partition, time=args.time, cpus_per_task=args.cpus_per_task, port=args.port,
        max_restarts=args.max_restarts, python=args.python, signal_seconds=args.signal_seconds,
    )
    chdir = os.path.abspath(args.chdir or os.getcwd())
    log_dir = _local_run_dir(job.run_dir, job.name)
    config = args.config if "://" in args.config else os.path.relpath(os.path.abspath(args.config), chdir)
    script = sbatch_script(cfg, job_name=job.name, config=config, log_dir=log_dir, chdir=chdir, overrides=tuple(args.overrides))
    # SLURM opens the log before the script runs: its directory must exist.
    os.makedirs(os.path.join(chdir, log_dir), exist_ok=True)
    out = args.out or os.path.join(chdir, log_dir, f"{job.name}.sbatch")
    fs.write_text(out, script)
    print(f"wrote {out} ({cfg.mode} mode: {cfg.nodes} node(s) x {cfg.procs_per_node} process(es))")
    if args.submit:
        job_id = submit(out, cwd=chdir)
        print(f"log: {os.path.join(chdir, log_dir, f'slurm-{job_id}.out')}")
        print(f"submitted batch job {job_id}")
    return 0


def _register_k8s(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "k8s",
        help="write Kubernetes manifests: PyTorchJob, TrainJob, Indexed Job + Service, ConfigMap, PodMonitor",
        description="Write Kubernetes manifests that train CONFIG: a Kubeflow PyTorchJob, a Kubeflow Trainer "
        "TrainJob, and a plain Indexed Job with a headless Service (apply one of the three), plus the ConfigMap "
        "holding the config and PodMonitors for the Prometheus Operator. Nothing is applied.",
    )
    _common(p)
    p.add_argument("--image", required=True, help="container image with strata installed")
    p.add_argument(
        "--out", default="",
        help="directory for the manifests (default RUN_DIR/k8s, i.e. runs/<name>/k8s for a local run_dir: "
        "outside the source tree's tracked k8s/ folder)",
    )
    p.add_argument("--name", default="", help="Kubernetes name of the job (default: the config's name)")
    p.add_argument("--namespace", default="", help="namespace of every object (default: kubectl's)")
    p.add_argument("--cpu", default="4", help="CPU request per pod (default 4)")
    p.add_argument("--memory", default="16Gi", help="memory request and limit per pod (default 16Gi)")
    p.add_argument("--metrics-port", type=int, default=9400, help="metrics port of local rank 0 (default 9400)")
    p.add_argument("--master-port", type=int, default=29500, help="rendezvous port (default 29500)")
    p.add_argument(
        "--max-restarts", type=int, default=0,
        help="PyTorchJob: add a fixed-size elasticPolicy whose torchrun restarts failed workers this often",
    )
    p.add_argument("--pvc", default="", help="PersistentVolumeClaim for /scratch/runs (checkpoints outlive pods)")
    p.add_argument(
        "--grace-seconds", type=int, default=120,
        help="pod termination grace period: time from SIGTERM to SIGKILL in which every rank checkpoints (default 120)",
    )
    p.set_defaults(func=run_k8s)


def run_k8s(args: argparse.Namespace) -> int:
    from strata.launch import k8s
    from strata.launch.config_io import apply_overrides, from_dict, load_yaml
    from strata.launch.job import JobConfig, load_job

    job = load_job(args.config, args.overrides)
    cfg = k8s.K8sConfig(
        image=args.image, nodes=args.nodes, gpus_per_node=args.gpus_per_node, procs_per_node=args.procs_per_node,
        namespace=args.namespace, cpu=args.cpu, memory=args.memory, metrics_port=args.metrics_port,
        master_port=args.master_port, max_restarts=args.max_restarts, pvc=args.pvc, grace_seconds=args.grace_seconds,
    )
    name = k8s.k8s_name(args.name or job.name)
    config = k8s.pod_config(apply_overrides(load_yaml(args.config), args.overrides), cfg, name)
    from_dict(JobConfig, config)  # what the pods will read must still be a valid job
    unseen = k8s.store_unseen_by_pods(config, cfg)
    if unseen:
        log.warning("%s", unseen)
    out = args.out or os.path.join(_local_run_dir(job.run_dir, job.name), "k8s")
    files = k8s.manifests(cfg, name, config)
    for filename, documents in files.items():
        fs.write_text(fs.join(out, filename), k8s.dump(documents))
    print(f"wrote {', '.join(files)} to {out} ({cfg.nodes} pod(s) x {cfg.procs_per_node} process(es))")
    print("apply the config, the monitors and one launcher, e.g.:")
    print(f"  kubectl apply -f {out}/configmap.yaml -f {out}/podmonitor.yaml -f {out}/pytorchjob.yaml")
    return 0
