"""The manifests of `strata launch k8s`, without a cluster.

Every generated object validates against the Kubernetes schemas (kubernetes-validate, strict)
or, for custom resources, against the CRD schemas under tests/launch/schemas/ (jsonschema) with their
embedded pod templates validated as core/v1 PodTemplates. Then each launcher's pods are
reproduced: the environment a pod receives (the manifest's env plus what the operator or the
Job controller injects, resolved as the kubelet resolves it) starts the real torchrun the
manifest names, with one agent per pod on loopback, and every worker reports the topology
strata computes from its environment.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from strata.launch import k8s
from strata.runtime.dist.topology import topology_from_env
from tests.helpers.cli import run_strata
from tests.helpers.paths import REPO
from tests.helpers.ports import free_port

SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
JOB = {"name": "Sage_Products", "data": {"store": "s3://bucket/stores/products"}, "train": {"executor": "minibatch", "epochs": 3}}

SHAPES = {
    "gpu": dict(image="registry.example/strata:1", nodes=2, gpus_per_node=4),
    "cpu": dict(image="registry.example/strata:1", nodes=3),
    "elastic": dict(image="registry.example/strata:1", nodes=2, procs_per_node=2, max_restarts=3, namespace="ml", pvc="runs"),
}


def _generate(shape: str) -> tuple[k8s.K8sConfig, str, dict[str, list[dict[str, Any]]]]:
    cfg = k8s.K8sConfig(**SHAPES[shape])
    name = k8s.k8s_name(JOB["name"])
    return cfg, name, k8s.manifests(cfg, name, k8s.pod_config(JOB, cfg, name))


def _documents(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    # Through YAML and back: what kubectl would read.
    return [doc for docs in files.values() for doc in yaml.safe_load_all(k8s.dump(docs))]


def _schema(kind: str) -> dict:
    name = {"PyTorchJob": "pytorchjob-v1", "TrainJob": "trainjob-v1alpha1", "PodMonitor": "podmonitor-v1"}[kind]
    return yaml.safe_load((SCHEMAS / f"{name}.yaml").read_text())


def _validate_core(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _as_pod_template(spec: dict, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
            "template": {"metadata": {"labels": labels or {}}, "spec": spec}}


def _trainjob_pod_spec(doc: dict) -> dict:
    """The parts of a TrainJob that land in the trainer pod, assembled as a PodSpec."""
    trainer, override = doc["spec"]["trainer"], doc["spec"]["podTemplateOverrides"][0]
    container = {"name": "node", "image": trainer["image"], "command": trainer["command"], "env": trainer["env"],
                 "resources": trainer["resourcesPerNode"], "volumeMounts": override["spec"]["containers"][0]["volumeMounts"]}
    return {"containers": [container], "volumes": override["spec"]["volumes"]}


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] == "PyTorchJob":
        return [(rtype, spec["template"]) for rtype, spec in doc["spec"]["pytorchReplicaSpecs"].items()]
    if doc["kind"] == "Job":
        return [("Job", doc["spec"]["template"])]
    return []


# -- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_every_manifest_validates_against_kubernetes_and_crd_schemas(shape: str) -> None:
    _, name, files = _generate(shape)
    docs = _documents(files)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "PodMonitor", "PodMonitor", "PyTorchJob", "Service", "TrainJob"]
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Service", "Job"):
            _validate_core(doc)
        else:
            jsonschema.Draft202012Validator(_schema(doc["kind"])).validate(doc)
        for _, template in _pod_templates(doc):
            _validate_core(_as_pod_template(template["spec"], template["metadata"]["labels"]))
        if doc["kind"] == "TrainJob":
            _validate_core(_as_pod_template(_trainjob_pod_spec(doc), doc["spec"]["podTemplateOverrides"][0]["metadata"]["labels"]))


def test_the_schemas_are_not_vacuous() -> None:
    _, _, files = _generate("gpu")
    job = yaml.safe_load(k8s.dump(files["pytorchjob.yaml"]))
    job["spec"]["pytorchReplicaSpec"] = job["spec"].pop("pytorchReplicaSpecs")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, _schema("PyTorchJob"))
    train = yaml.safe_load(k8s.dump(files["trainjob.yaml"]))
    train["metadata"]["name"] = "Sage_Products"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(train, _schema("TrainJob"))
    monitor = yaml.safe_load_all(k8s.dump(files["podmonitor.yaml"])).__next__()
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, _schema("PodMonitor"))
    template = yaml.safe_load(k8s.dump(files["pytorchjob.yaml"]))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    template["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(_as_pod_template(template["spec"]))


@pytest.mark.parametrize("shape", SHAPES)
def test_pods_are_locked_down_and_declare_what_prometheus_scrapes(shape: str) -> None:
    cfg, name, files = _generate(shape)
    docs = _documents(files)
    monitor = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == name)
    wanted_ports = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert wanted_ports == ["metrics"] + [f"metrics-{r}" for r in range(1, cfg.procs_per_node)]
    assert all(e["honorLabels"] for d in docs if d["kind"] == "PodMonitor" for e in d["spec"]["podMetricsEndpoints"])
    templates = [t for d in docs for _, t in _pod_templates(d)]
    assert len(templates) == (1 if shape == "elastic" else 2) + 1
    for template in templates:
        labels, spec = template["metadata"]["labels"], template["spec"]
        assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        assert labels["strata-launcher"] in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
        (container,) = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {p: ports[p] for p in wanted_ports} == {p: cfg.metrics_port + i for i, p in enumerate(wanted_ports)}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/scratch"]]
        assert volumes[mounts["/etc/strata"]]["configMap"]["name"] == f"{name}-config"
        assert container["workingDir"] == "/scratch"
        assert ("/scratch/runs" in mounts) == bool(cfg.pvc)
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"]
        assert requests.get("nvidia.com/gpu", 0) == cfg.gpus_per_node
    pytorch = next(d for d in docs if d["kind"] == "PyTorchJob")
    for replica in pytorch["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["name"] == "pytorch"  # the operator requires it
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    pod_job = yaml.safe_load(configmap["data"]["job.yaml"])
    assert pod_job["metrics"]["port"] == cfg.metrics_port and pod_job["metrics"]["addr"] == "0.0.0.0"
    assert pod_job["run_dir"] == "/scratch/runs/Sage_Products"
    from strata.launch.config_io import from_dict
    from strata.launch.job import JobConfig

    assert from_dict(JobConfig, pod_job).metrics.job == name


def test_cli_writes_the_same_manifests(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB, sort_keys=False))
    proc = run_strata("launch", "k8s", "job.yaml", "--nodes", "2", "--gpus-per-node", "4", "--image", SHAPES["gpu"]["image"],
                      "--out", "out", cwd=tmp_path)
    assert "kubectl apply -f out/configmap.yaml" in proc.stdout
    _, _, files = _generate("gpu")
    for filename, docs in files.items():
        assert list(yaml.safe_load_all((tmp_path / "out" / filename).read_text())) == list(yaml.safe_load_all(k8s.dump(docs)))


def test_bad_names_and_settings_are_refused() -> None:
    with pytest.raises(k8s.ManifestError, match="--name"):
        k8s.k8s_name("3d-model")
    with pytest.raises(Exception, match="k8s.image"):
        k8s.K8sConfig()
    with pytest.raises(Exception, match="k8s.memory"):
        k8s.K8sConfig(image="x", memory="16 GB")
    with pytest.raises(Exception, match="k8s.procs_per_node"):
        k8s.K8sConfig(image="x", gpus_per_node=2, procs_per_node=4)


# -- what each pod receives ----------------------------------------------------------------------


def _resolve(env: list[dict], index: int) -> dict[str, str]:
    """A container's env list as the kubelet resolves it: later entries win, the completion
    index annotation comes from the Job controller."""
    out: dict[str, str] = {}
    for item in env:
        if "value" in item:
            out[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == "metadata.annotations['batch.kubernetes.io/job-completion-index']", path
            out[item["name"]] = str(index)
    return out


def _pytorchjob_pods(doc: dict) -> list[tuple[dict, dict[str, str]]]:
    """(container, env) of every pod of a PyTorchJob, with what training-operator v1.8 injects
    (pkg/controller.v1/pytorch/envvar.go, master.go, elastic.go): PYTHONUNBUFFERED; with a
    Master, MASTER_ADDR/PORT and PET_MASTER_ADDR/PORT ('localhost' on the master, the master's
    Service name elsewhere; the port of the container port named pytorchjob-port), WORLD_SIZE =
    pods x nprocPerNode, RANK = PET_NODE_RANK = pod index, PET_NPROC_PER_NODE, PET_NNODES = pods;
    with an elasticPolicy, PET_RDZV_ENDPOINT = <job>-worker-0:<port>, PET_RDZV_BACKEND,
    PET_NNODES = min:max, PET_MAX_RESTARTS, PET_RDZV_ID."""
    spec, name = doc["spec"], doc["metadata"]["name"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(r["replicas"] for r in replicas.values())
    nproc = spec.get("nprocPerNode", "1")
    pods = []
    for rtype in ("Master", "Worker"):
        if rtype not in replicas:
            continue
        container = replicas[rtype]["template"]["spec"]["containers"][0]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "pytorchjob-port")
        for index in range(replicas[rtype]["replicas"]):
            injected = [{"name": "PYTHONUNBUFFERED", "value": "0"}]
            if "Master" in replicas:
                rank = index + (1 if rtype == "Worker" else 0)
                addr = "localhost" if rtype == "Master" else f"{name}-master-0"
                injected += [{"name": n, "value": v} for n, v in (
                    ("MASTER_PORT", str(port)), ("PET_MASTER_PORT", str(port)), ("MASTER_ADDR", addr), ("PET_MASTER_ADDR", addr),
                    ("WORLD_SIZE", str(total * int(nproc))), ("RANK", str(rank)), ("PET_NPROC_PER_NODE", nproc),
                    ("PET_NODE_RANK", str(rank)))]
            if "elasticPolicy" in spec:
                policy = spec["elasticPolicy"]
                injected += [{"name": n, "value": v} for n, v in (
                    ("PET_RDZV_ENDPOINT", f"{name}-worker-0:{port}"), ("PET_RDZV_BACKEND", policy.get("rdzvBackend", "c10d")),
                    ("PET_NNODES", f"{policy['minReplicas']}:{policy['maxReplicas']}"),
                    ("PET_MAX_RESTARTS", str(policy["maxRestarts"])), ("PET_RDZV_ID", policy["rdzvId"]))]
            else:
                injected.append({"name": "PET_NNODES", "value": str(total)})
            pods.append((container, _resolve(container["env"] + injected, index)))
    return pods


def _trainjob_pods(doc: dict) -> list[tuple[dict, dict[str, str]]]:
    """Trainer v2's torch plugin (pkg/runtime/framework/plugins/torch): PET_NNODES, PET_NPROC_PER_NODE,
    PET_NODE_RANK from the completion index, PET_MASTER_ADDR = <job>-node-0-0.<job>, PET_MASTER_PORT
    = 29400; the pods belong to an Indexed Job of a JobSet, so JOB_COMPLETION_INDEX is set too."""
    trainer, name = doc["spec"]["trainer"], doc["metadata"]["name"]
    container = {"name": "node", "command": trainer["command"]}
    pods = []
    for index in range(trainer["numNodes"]):
        injected = [{"name": n, "value": v} for n, v in (
            ("PET_NNODES", str(trainer["numNodes"])), ("PET_NPROC_PER_NODE", str(trainer["numProcPerNode"])),
            ("PET_MASTER_ADDR", f"{name}-node-0-0.{name}"), ("PET_MASTER_PORT", str(k8s.TRAINJOB_MASTER_PORT)),
            ("JOB_COMPLETION_INDEX", str(index)))]
        injected.append({"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
        pods.append((container, _resolve(trainer["env"] + injected, index)))
    return pods


def _indexed_job_pods(doc: dict) -> list[tuple[dict, dict[str, str]]]:
    """The Job controller sets JOB_COMPLETION_INDEX (and the annotation) on each pod."""
    spec = doc["spec"]
    container = spec["template"]["spec"]["containers"][0]
    return [(container, _resolve(container["env"] + [{"name": "JOB_COMPLETION_INDEX", "value": str(i)}], i))
            for i in range(spec["completions"])]


PROBE = (
    "import json, os, sys\n"
    "from strata.runtime.dist.topology import topology_from_env\n"
    "t = topology_from_env(os.environ)\n"
    "out = dict(rank=t.rank, world_size=t.world_size, local_rank=t.local_rank, local_world_size=t.local_world_size,\n"
    "           node_rank=t.node_rank, num_nodes=t.num_nodes, launcher=t.launcher, pod=os.environ['PROBE_POD'])\n"
    "open(os.path.join(sys.argv[1], f'rank-{t.rank}.json'), 'w').write(json.dumps(out))\n"
)


def _loopback(env: dict[str, str], port: int, service_names: set[str]) -> dict[str, str]:
    """Service names resolve only inside the cluster: the test stands in 127.0.0.1 and a free port."""
    env = dict(env)
    for key in ("PET_MASTER_ADDR", "MASTER_ADDR"):
        if key in env:
            assert env[key] in service_names, (key, env[key])
            env[key] = "127.0.0.1"
    for key in ("PET_MASTER_PORT", "MASTER_PORT"):
        if key in env:
            env[key] = str(port)
    if "PET_RDZV_ENDPOINT" in env:
        host = env["PET_RDZV_ENDPOINT"].rsplit(":", 1)[0]
        assert host in service_names, host
        env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
    return env


def _run_torchrun_pods(pods: list[tuple[dict, dict[str, str]]], service_names: set[str], tmp_path: Path) -> list[dict]:
    """One real torchrun agent per pod, with the pod's command and environment; the strata
    entry point swapped for a probe that records the topology each worker computes."""
    port = free_port()
    procs = []
    for pod, (container, env) in enumerate(pods):
        command = container["command"]
        assert command[:3] == ["python", "-m", "torch.distributed.run"], command
        tail = command.index("strata.launch.cli") - 1
        assert command[tail:] == ["-m", "strata.launch.cli", "train", "/etc/strata/job.yaml", "--resume"]
        argv = [sys.executable, "-m", "torch.distributed.run", *command[3:tail], "--no-python", sys.executable, "-c", PROBE, str(tmp_path)]
        pod_env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path), "PROBE_POD": str(pod),
                   **_loopback(env, port, service_names)}
        procs.append(subprocess.Popen(argv, env=pod_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"torchrun failed: {shlex.join(proc.args)}\n{out}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]


def _check_torchrun_world(workers: list[dict], pods: int, per_pod: int, *, static: bool) -> None:
    assert sorted(w["rank"] for w in workers) == list(range(pods * per_pod))
    assert {(w["world_size"], w["local_world_size"], w["num_nodes"], w["launcher"]) for w in workers} == {
        (pods * per_pod, per_pod, pods, "torchrun")}
    for pod in range(pods):
        mine = [w for w in workers if w["pod"] == str(pod)]
        assert sorted(w["local_rank"] for w in mine) == list(range(per_pod))
        assert len({w["node_rank"] for w in mine}) == 1
        node = mine[0]["node_rank"]
        assert {w["rank"] for w in mine} == {node * per_pod + r for r in range(per_pod)}
        if static:
            assert node == pod  # the operator's node rank is the pod index
    assert sorted({w["node_rank"] for w in workers}) == list(range(pods))


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_pytorchjob_pods_get_their_ranks_from_the_operator_env_through_torchrun(tmp_path: Path, max_restarts: int) -> None:
    cfg = k8s.K8sConfig(image="x", nodes=2, procs_per_node=2, max_restarts=max_restarts)
    (doc,) = _documents({"p": [k8s.manifests(cfg, "demo", k8s.pod_config(JOB, cfg, "demo"))["pytorchjob.yaml"][0]]})
    pods = _pytorchjob_pods(doc)
    assert len(pods) == 2
    # Elastic pods replaced one at a time need a rendezvous store per round (docs/reliability.md).
    assert all((env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1") == bool(max_restarts) for _, env in pods)
    if not max_restarts:
        assert [(e["RANK"], e["WORLD_SIZE"], e["PET_NNODES"]) for _, e in pods] == [("0", "4", "2"), ("1", "4", "2")]
    workers = _run_torchrun_pods(pods, {"localhost", "demo-master-0", "demo-worker-0"}, tmp_path)
    _check_torchrun_world(workers, 2, 2, static=not max_restarts)


def test_pytorchjob_pod_started_without_torchrun_reads_world_size_as_pods() -> None:
    cfg = k8s.K8sConfig(image="x", nodes=3)
    (doc,) = _documents({"p": [k8s.manifests(cfg, "demo", k8s.pod_config(JOB, cfg, "demo"))["pytorchjob.yaml"][0]]})
    topologies = [topology_from_env(env) for _, env in _pytorchjob_pods(doc)]
    assert [(t.rank, t.world_size, t.launcher) for t in topologies] == [(r, 3, "kubeflow") for r in range(3)]
    assert [t.master_addr for t in topologies] == ["localhost", "demo-master-0", "demo-master-0"]
    assert {t.master_port for t in topologies} == {cfg.master_port}


def test_trainjob_pods_get_their_ranks_from_pet_variables_through_torchrun(tmp_path: Path) -> None:
    cfg = k8s.K8sConfig(image="x", nodes=2, procs_per_node=2)
    (doc,) = _documents({"t": [k8s.manifests(cfg, "demo", k8s.pod_config(JOB, cfg, "demo"))["trainjob.yaml"][0]]})
    pods = _trainjob_pods(doc)
    assert [e["PET_NODE_RANK"] for _, e in pods] == ["0", "1"]
    workers = _run_torchrun_pods(pods, {"demo-node-0-0.demo"}, tmp_path)
    _check_torchrun_world(workers, 2, 2, static=True)


def test_indexed_job_with_one_process_per_pod_is_read_by_strata_itself() -> None:
    cfg = k8s.K8sConfig(image="x", nodes=3)
    docs = _documents({"i": k8s.manifests(cfg, "demo", k8s.pod_config(JOB, cfg, "demo"))["indexed-job.yaml"]})
    service, job = docs
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert all(service["spec"]["selector"][k] == v for k, v in job["spec"]["template"]["metadata"]["labels"].items())
    pods = _indexed_job_pods(job)
    assert all(c["command"][:2] == ["python", "-m"] and "torch.distributed.run" not in c["command"] for c, _ in pods)
    topologies = [topology_from_env(env) for _, env in pods]
    assert [(t.rank, t.world_size, t.node_rank, t.launcher) for t in topologies] == [(i, 3, i, "indexed-job") for i in range(3)]
    # Index 0's pod is <job>-0 under the Service's subdomain.
    assert {t.master_addr for t in topologies} == {f"{job['metadata']['name']}-0.{service['metadata']['name']}"}
    assert {t.master_port for t in topologies} == {cfg.master_port}


def test_indexed_job_with_several_processes_per_pod_runs_torchrun(tmp_path: Path) -> None:
    cfg = k8s.K8sConfig(image="x", nodes=2, gpus_per_node=2)
    service, job = _documents({"i": k8s.manifests(cfg, "demo", k8s.pod_config(JOB, cfg, "demo"))["indexed-job.yaml"]})
    pods = _indexed_job_pods(job)
    assert [e["PET_NODE_RANK"] for _, e in pods] == ["0", "1"]
    workers = _run_torchrun_pods(pods, {f"demo-0.{service['metadata']['name']}"}, tmp_path)
    _check_torchrun_world(workers, 2, 2, static=True)


def test_committed_examples_are_what_the_command_writes() -> None:
    """k8s/example/ is generated output; regenerate it with the command in k8s/README.md."""
    example = REPO / "k8s" / "example"
    from strata.launch.config_io import load_yaml

    raw = load_yaml(str(example / "job.yaml"))
    cfg = k8s.K8sConfig(image="ghcr.io/example/strata:0.1.0", nodes=2, gpus_per_node=4, pvc="strata-runs")
    name = k8s.k8s_name(raw["name"])
    for filename, docs in k8s.manifests(cfg, name, k8s.pod_config(raw, cfg, name)).items():
        assert (example / filename).read_text() == k8s.dump(docs), f"k8s/example/{filename} is stale"



@pytest.mark.parametrize("shape", SHAPES)
def test_every_pod_gets_the_grace_period_to_checkpoint_on_sigterm(shape: str) -> None:
    cfg = k8s.K8sConfig(**SHAPES[shape], grace_seconds=300)
    name = k8s.k8s_name(JOB["name"])
    docs = _documents(k8s.manifests(cfg, name, k8s.pod_config(JOB, cfg, name)))
    specs = [template["spec"] for doc in docs for _, template in _pod_templates(doc)]
    # A TrainJob's podTemplateOverrides take no grace period: its ClusterTrainingRuntime sets it (k8s/README.md).
    assert len(specs) >= 2  # the PyTorchJob's replicas and the Indexed Job
    assert [spec["terminationGracePeriodSeconds"] for spec in specs] == [300] * len(specs)
    with pytest.raises(k8s.ConfigError, match="grace_seconds"):
        k8s.K8sConfig(image="x", grace_seconds=0)
