"""Kubernetes manifests that run `strata train` on a cluster, built as data and dumped as YAML.

Three ways to start the same job, one file each, all reading one ConfigMap:

``pytorchjob.yaml``
    a Kubeflow PyTorchJob (kubeflow.org/v1, training-operator): a Master and Workers, one pod
    per node, each running torchrun, which reads the PET_* variables the operator injects
    (nodes, node rank, master address). With ``max_restarts`` it carries an elasticPolicy of
    fixed size instead (Workers only, c10d rendezvous on worker 0, torchrun restarts).
``trainjob.yaml``
    a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) on the ``torch-distributed``
    runtime, which injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_*.
    Pod security settings and ports come from that runtime; the ConfigMap and scratch volumes
    are added through podTemplateOverrides.
``indexed-job.yaml``
    plain Kubernetes, no operator: a headless Service and an Indexed Job. With one process per
    pod strata reads JOB_COMPLETION_INDEX, WORLD_SIZE and MASTER_ADDR itself; with more, torchrun
    reads the PET_* variables the manifest sets (node rank from the completion index).

Beside them ``configmap.yaml`` (the job config, metrics port and run directory fixed for pods)
and ``podmonitor.yaml`` (Prometheus Operator PodMonitors: named ``metrics`` ports, and an
address rewrite for TrainJob pods, whose ports the runtime owns). Pods run as a non-root user
with a read-only root filesystem; everything they write goes under the ``/scratch`` emptyDir
(or a PersistentVolumeClaim mounted at ``/scratch/runs`` to keep checkpoints across pods).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from strata.errors import ConfigError, StrataError

CONFIG_DIR = "/etc/strata"
CONFIG_KEY = "job.yaml"
SCRATCH = "/scratch"
TRAINJOB_MASTER_PORT = 29400  # the torch-distributed runtime's PET_MASTER_PORT
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_MAX_NAME = 40


class ManifestError(StrataError):
    """Kubernetes manifests cannot be made from these settings."""


@dataclass
class K8sConfig:
    """The pods of a Kubernetes training job."""

    image: str = ""
    """Container image with strata installed (required)."""
    nodes: int = 1
    """Pods of the job, one per node."""
    gpus_per_node: int = 0
    """GPUs of each pod (nvidia.com/gpu); 0 = CPU only."""
    procs_per_node: int = 0
    """Training processes per pod; 0 = one per GPU, or 1 without GPUs."""
    namespace: str = ""
    """Namespace of every object; empty = the namespace kubectl applies to."""
    cpu: str = "4"
    """CPU request of each pod."""
    memory: str = "16Gi"
    """Memory request (and limit) of each pod."""
    metrics_port: int = 9400
    """Prometheus port of local rank 0; local rank r serves on metrics_port + r."""
    master_port: int = 29500
    """Rendezvous port of rank 0 (PyTorchJob master port, Indexed Job MASTER_PORT)."""
    max_restarts: int = 0
    """PyTorchJob: > 0 adds an elasticPolicy of fixed size whose torchrun restarts failed
    workers this often (every restart resumes from the newest checkpoint)."""
    pvc: str = ""
    """PersistentVolumeClaim mounted at /scratch/runs, so checkpoints outlive pods; empty = none."""
    run_as_user: int = 1000
    """Non-root user id of the containers."""
    grace_seconds: int = 120
    """Pod termination grace period: between SIGTERM (eviction, preemption, node drain) and
    SIGKILL every rank finishes its step and writes a checkpoint with the others; size it for
    one step plus one checkpoint. Kubernetes' own default, 30 s, is often too short."""

    def __post_init__(self) -> None:
        if not self.image:
            raise ConfigError("k8s.image is required: the container image with strata installed")
        if self.nodes < 1:
            raise ConfigError(f"k8s.nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0 or self.procs_per_node < 0:
            raise ConfigError("k8s.gpus_per_node and k8s.procs_per_node must be >= 0")
        if self.procs_per_node == 0:
            self.procs_per_node = self.gpus_per_node or 1
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ConfigError(
                f"k8s.procs_per_node {self.procs_per_node} exceeds k8s.gpus_per_node {self.gpus_per_node}: "
                "strata runs at most one process per GPU"
            )
        if self.namespace and not _NAME.match(self.namespace):
            raise ConfigError(f"k8s.namespace must be a DNS label (lower case, digits, '-'), got '{self.namespace}'")
        for field in ("cpu", "memory"):
            if not _QUANTITY.match(getattr(self, field)):
                raise ConfigError(f"k8s.{field} must be a Kubernetes quantity such as '4', '500m' or '16Gi', got '{getattr(self, field)}'")
        for field in ("metrics_port", "master_port"):
            if not 1024 <= getattr(self, field) < 65536:
                raise ConfigError(f"k8s.{field} must be in 1024..65535 (pods run as non-root), got {getattr(self, field)}")
        if self.metrics_port <= self.master_port < self.metrics_port + self.procs_per_node:
            raise ConfigError(f"k8s.master_port {self.master_port} collides with the metrics ports {self.metrics_port}..")
        if self.max_restarts < 0:
            raise ConfigError(f"k8s.max_restarts must be >= 0, got {self.max_restarts}")
        if self.pvc and not re.match(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", self.pvc):
            raise ConfigError(f"k8s.pvc must be the name of a PersistentVolumeClaim, got '{self.pvc}'")
        if self.grace_seconds < 1:
            raise ConfigError(f"k8s.grace_seconds must be at least 1 (time to checkpoint on SIGTERM), got {self.grace_seconds}")
        if self.run_as_user < 1:
            raise ConfigError(f"k8s.run_as_user must be a non-root user id (>= 1), got {self.run_as_user}")


def k8s_name(job_name: str) -> str:
    """The job name as a Kubernetes name (an RFC 1035 label, which TrainJob and Service need)."""
    name = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    if not _NAME.match(name) or len(name) > _MAX_NAME:
        raise ManifestError(
            f"job name '{job_name}' does not make a Kubernetes name (got '{name}'): it must start with a letter and "
            f"hold at most {_MAX_NAME} letters, digits or '-'; pass --name"
        )
    return name


def pod_config(raw: dict[str, Any], cfg: K8sConfig, name: str) -> dict[str, Any]:
    """The job config as pods see it: metrics served on the declared ports, a local run
    directory moved under /scratch (a URL such as s3://... stays)."""
    out = dict(raw)
    metrics = dict(out.get("metrics") or {})
    metrics.update(port=cfg.metrics_port, addr="0.0.0.0")
    metrics.setdefault("job", name)
    out["metrics"] = metrics
    run_dir = str(out.get("run_dir") or "")
    if "://" not in run_dir or run_dir.startswith("file://"):
        out["run_dir"] = f"{SCRATCH}/runs/{out.get('name', name)}"
    return out


def manifests(cfg: K8sConfig, name: str, config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every file's documents, by file name; ``config`` is the job config as pods should read it."""
    return {
        "configmap.yaml": [_configmap(cfg, name, config)],
        "pytorchjob.yaml": [_pytorchjob(cfg, name)],
        "trainjob.yaml": [_trainjob(cfg, name)],
        "indexed-job.yaml": [_headless_service(cfg, name), _indexed_job(cfg, name)],
        "podmonitor.yaml": [_podmonitor(cfg, name), _trainjob_podmonitor(cfg, name)],
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors for shared pieces, multi-line strings as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# -- shared pieces -----------------------------------------------------------------------------


def _meta(cfg: K8sConfig, name: str, object_name: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": object_name or name}
    if cfg.namespace:
        meta["namespace"] = cfg.namespace
    meta["labels"] = _labels(name)
    return meta


def _labels(name: str, launcher: str = "") -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "strata", "app.kubernetes.io/instance": name}
    if launcher:
        labels["strata-launcher"] = launcher
    return labels


def _train_args() -> list[str]:
    return ["-m", "strata.launch.cli", "train", f"{CONFIG_DIR}/{CONFIG_KEY}", "--resume"]


def _torchrun(*flags: str) -> list[str]:
    return ["python", "-m", "torch.distributed.run", *flags, *_train_args()]


def _metrics_port_name(local_rank: int) -> str:
    return "metrics" if local_rank == 0 else f"metrics-{local_rank}"


def _base_env() -> list[dict[str, Any]]:
    # The root filesystem is read-only: caches and temporary files go to the scratch volume.
    return [
        {"name": "HOME", "value": SCRATCH},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def omp_threads(cfg: K8sConfig) -> int:
    """Threads of each process: the pod's CPU request shared out over its processes (torchrun
    would otherwise set 1 and print a banner saying so)."""
    cpu = cfg.cpu
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(cpu[-1], 1.0)
    cores = float(cpu.rstrip("mkMGTi")) * scale
    return max(1, int(cores) // cfg.procs_per_node)


def store_unseen_by_pods(config: dict[str, Any], cfg: K8sConfig) -> str:
    """Why the pods will not find the job's store, or '' when they may: a path on this machine is
    not in the pods, unless it lies on the claim mounted at /scratch/runs."""
    store = str((config.get("data") or {}).get("store") or "")
    if not store or ("://" in store and not store.startswith("file://")):
        return ""
    path = store.removeprefix("file://")
    if cfg.pvc and path.startswith(f"{SCRATCH}/runs/"):
        return ""
    return (
        f"data.store '{store}' is a path on this machine: the pods will not find it (they hold the image, the "
        f"ConfigMap and /scratch). Give a URL they can reach, e.g. --set data.store=s3://BUCKET/{path.lstrip('/')}, "
        f"or a path under {SCRATCH}/runs/ on the claim of --pvc"
    )


def _resources(cfg: K8sConfig) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits: dict[str, Any] = {"memory": cfg.memory}
    if cfg.gpus_per_node:
        requests["nvidia.com/gpu"] = cfg.gpus_per_node
        limits["nvidia.com/gpu"] = cfg.gpus_per_node
    return {"requests": requests, "limits": limits}


def _volumes(cfg: K8sConfig, name: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if cfg.pvc:
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": cfg.pvc}})
    return volumes


def _mounts(cfg: K8sConfig) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if cfg.pvc:
        mounts.append({"name": "runs", "mountPath": f"{SCRATCH}/runs"})
    return mounts


def _container(
    cfg: K8sConfig, name: str, command: list[str], env: list[dict[str, Any]], extra_ports: list[dict[str, Any]]
) -> dict[str, Any]:
    ports = extra_ports + [
        {"name": _metrics_port_name(r), "containerPort": cfg.metrics_port + r, "protocol": "TCP"}
        for r in range(cfg.procs_per_node)
    ]
    return {
        "name": name,
        "image": cfg.image,
        "command": command,
        "workingDir": SCRATCH,
        "env": _base_env() + [{"name": "OMP_NUM_THREADS", "value": str(omp_threads(cfg))}] + env,
        "ports": ports,
        "resources": _resources(cfg),
        "volumeMounts": _mounts(cfg),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_spec(cfg: K8sConfig, name: str, container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "terminationGracePeriodSeconds": cfg.grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "fsGroup": cfg.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(cfg, name),
    }


# -- the objects -------------------------------------------------------------------------------


def _configmap(cfg: K8sConfig, name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(cfg, name, f"{name}-config"),
        "data": {CONFIG_KEY: yaml.safe_dump(config, sort_keys=False)},
    }


def _pytorchjob(cfg: K8sConfig, name: str) -> dict[str, Any]:
    # The operator reads the master (or rendezvous) port from the port named pytorchjob-port.
    rdzv_port = [{"name": "pytorchjob-port", "containerPort": cfg.master_port, "protocol": "TCP"}]
    # A restarted pod's agent joins agents that survived. With torch's shared rendezvous store the
    # survivors never publish the workers' MASTER_ADDR again, so the newcomer waits for it until it
    # times out (docs/reliability.md, "Many hosts"): each round gets its own store instead.
    env = [{"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"}] if cfg.max_restarts else []
    container = _container(cfg, "pytorch", _torchrun(f"--nproc-per-node={cfg.procs_per_node}"), env, rdzv_port)

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": _labels(name, "pytorchjob")},
                "spec": _pod_spec(cfg, name, container),
            },
        }

    spec: dict[str, Any] = {"nprocPerNode": str(cfg.procs_per_node)}
    if cfg.max_restarts:
        spec["elasticPolicy"] = {
            "rdzvBackend": "c10d",
            "rdzvId": name,
            "minReplicas": cfg.nodes,
            "maxReplicas": cfg.nodes,
            "maxRestarts": cfg.max_restarts,
        }
        spec["pytorchReplicaSpecs"] = {"Worker": replica(cfg.nodes)}
    else:
        specs = {"Master": replica(1)}
        if cfg.nodes > 1:
            specs["Worker"] = replica(cfg.nodes - 1)
        spec["pytorchReplicaSpecs"] = specs
    spec["runPolicy"] = {"cleanPodPolicy": "None", "backoffLimit": 3}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": _meta(cfg, name), "spec": spec}


def _trainjob(cfg: K8sConfig, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _meta(cfg, name),
        "spec": {
            "runtimeRef": {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": cfg.image,
                "command": _torchrun(),
                "numNodes": cfg.nodes,
                "numProcPerNode": cfg.procs_per_node,
                "resourcesPerNode": _resources(cfg),
                "env": _base_env(),
            },
            "podTemplateOverrides": [
                {
                    "targetJobs": [{"name": "node"}],
                    "metadata": {"labels": _labels(name, "trainjob")},
                    "spec": {
                        "volumes": _volumes(cfg, name),
                        "containers": [{"name": "node", "volumeMounts": _mounts(cfg)}],
                    },
                }
            ],
        },
    }


def _headless_service(cfg: K8sConfig, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(cfg, name),
        "spec": {
            "clusterIP": "None",
            # Rank 0's name must resolve before its pod is ready, or the others cannot rendezvous.
            "publishNotReadyAddresses": True,
            "selector": _labels(name, "indexed-job"),
            "ports": [{"name": "rendezvous", "port": cfg.master_port, "targetPort": cfg.master_port, "protocol": "TCP"}],
        },
    }


def indexed_master_addr(name: str) -> str:
    """Index 0's hostname under the headless Service: <job>-0.<service>."""
    return f"{name}-0.{name}"


def _indexed_job(cfg: K8sConfig, name: str) -> dict[str, Any]:
    rdzv = [{"name": "rendezvous", "containerPort": cfg.master_port, "protocol": "TCP"}]
    if cfg.procs_per_node == 1:
        # strata reads JOB_COMPLETION_INDEX (set by Kubernetes) as its rank.
        env = [
            {"name": "WORLD_SIZE", "value": str(cfg.nodes)},
            {"name": "MASTER_ADDR", "value": indexed_master_addr(name)},
            {"name": "MASTER_PORT", "value": str(cfg.master_port)},
        ]
        command = ["python", *_train_args()]
    else:
        env = [
            {"name": "PET_NNODES", "value": str(cfg.nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(cfg.procs_per_node)},
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}},
            },
            {"name": "PET_MASTER_ADDR", "value": indexed_master_addr(name)},
            {"name": "PET_MASTER_PORT", "value": str(cfg.master_port)},
        ]
        command = _torchrun()
    container = _container(cfg, "trainer", command, env, rdzv)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(cfg, name),
        "spec": {
            "completionMode": "Indexed",
            "completions": cfg.nodes,
            "parallelism": cfg.nodes,
            "backoffLimit": 3 * cfg.nodes,
            "template": {
                "metadata": {"labels": _labels(name, "indexed-job")},
                "spec": _pod_spec(cfg, name, container, subdomain=name, restartPolicy="Never"),
            },
        },
    }


def _endpoint(port: str = "") -> dict[str, Any]:
    endpoint: dict[str, Any] = {"path": "/metrics", "interval": "15s", "honorLabels": True}
    if port:
        endpoint = {"port": port, **endpoint}
    return endpoint


def _podmonitor(cfg: K8sConfig, name: str) -> dict[str, Any]:
    """Scrapes the named metrics ports of PyTorchJob and Indexed Job pods; strata's own job and
    rank labels win over the target's (honorLabels), so dashboards select by them."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(cfg, name),
        "spec": {
            "selector": {
                "matchLabels": _labels(name),
                "matchExpressions": [{"key": "strata-launcher", "operator": "In", "values": ["pytorchjob", "indexed-job"]}],
            },
            "podMetricsEndpoints": [_endpoint(_metrics_port_name(r)) for r in range(cfg.procs_per_node)],
        },
    }


def _trainjob_podmonitor(cfg: K8sConfig, name: str) -> dict[str, Any]:
    """TrainJob pods declare only the runtime's ports: rewrite each target's address to the
    pod IP and a metrics port (one endpoint per local rank)."""
    endpoints = []
    for r in range(cfg.procs_per_node):
        endpoint = _endpoint()
        endpoint["relabelings"] = [
            {
                "sourceLabels": ["__meta_kubernetes_pod_ip"],
                "regex": "(.+)",
                "targetLabel": "__address__",
                "replacement": f"$1:{cfg.metrics_port + r}",
                "action": "replace",
            }
        ]
        endpoints.append(endpoint)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(cfg, name, f"{name}-trainjob"),
        "spec": {"selector": {"matchLabels": _labels(name, "trainjob")}, "podMetricsEndpoints": endpoints},
    }
