"""The sbatch scripts of `strata launch slurm`, read without a cluster: directives, the train
command (parsed by torchrun's and strata's own argument parsers), validation, the CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.launch.slurm import SlurmConfig, SlurmError, sbatch_script
from tests.helpers.cli import run_strata

JOB = "name: {name}\ndata: {{store: stores/x}}\ntrain: {{executor: minibatch, epochs: 2}}\n"


def _directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            out[key] = value
    return out


def _command(script: str, **shell: str) -> list[str]:
    """The job step (the srun command, run in the background) as argv, with the given shell
    variables substituted."""
    text = script.rstrip().split("\n")
    start = max(i for i, line in enumerate(text) if line.startswith("srun "))
    end = next(i for i in range(start, len(text)) if not text[i].endswith("\\"))
    assert text[end].endswith(" &"), "the step runs in the background, so the shell can take SIGUSR1"
    command = " ".join(line.rstrip("\\").strip() for line in text[start:end + 1]).removesuffix(" &")
    for name, value in shell.items():
        command = command.replace("${" + name + "}", value)
    return shlex.split(command)


def _bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_torchrun_mode_runs_one_torchrun_per_node_with_c10d_on_the_first_node(tmp_path: Path) -> None:
    cfg = SlurmConfig(nodes=4, gpus_per_node=8, partition="gpu", time="2-00:00:00", cpus_per_task=32, max_restarts=2)
    script = sbatch_script(cfg, job_name="big", config="jobs/big.yaml", log_dir="runs/big", chdir="/srv/jobs", overrides=("train.seed=3",))
    _bash_syntax_ok(script, tmp_path)
    assert script.startswith("#!/bin/bash\n")
    assert _directives(script) == {
        "--job-name": "big", "--nodes": "4", "--ntasks-per-node": "1", "--gpus-per-node": "8", "--cpus-per-task": "32",
        "--partition": "gpu", "--time": "2-00:00:00", "--chdir": "/srv/jobs", "--output": "runs/big/slurm-%j.out",
        "--open-mode": "append", "--requeue": "", "--signal": "B:USR1@120",
    }
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "rdzv_port=$((20000 + SLURM_JOB_ID % 10000))" in script
    argv = _command(script, SLURM_JOB_ID="4242", head_node="gpu017", rdzv_port="24242")
    assert argv[:4] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=32"]
    assert argv[4:7] == ["python3", "-m", "torch.distributed.run"]

    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser().parse_args(argv[7:])
    assert (torchrun.nnodes, torchrun.nproc_per_node, torchrun.max_restarts) == ("4", "8", 2)
    assert (torchrun.rdzv_backend, torchrun.rdzv_endpoint, torchrun.rdzv_id) == ("c10d", "gpu017:24242", "4242")
    assert torchrun.module and torchrun.training_script == "strata.launch.cli"
    _check_train_args(torchrun.training_script_args, "jobs/big.yaml", ["train.seed=3"])


def test_srun_mode_runs_one_task_per_process_and_strata_reads_slurm_itself(tmp_path: Path) -> None:
    cfg = SlurmConfig(nodes=2, gpus_per_node=4, mode="srun", port=23456)
    script = sbatch_script(cfg, job_name="j", config="job.yaml", log_dir="runs/j")
    _bash_syntax_ok(script, tmp_path)
    directives = _directives(script)
    assert directives["--ntasks-per-node"] == "4" and directives["--gpus-per-node"] == "4"
    assert "--chdir" not in directives and "--partition" not in directives and "--time" not in directives
    assert directives["--requeue"] == "" and directives["--open-mode"] == "append"
    assert "torch.distributed.run" not in script and "head_node" not in script
    assert "export MASTER_PORT=23456" in script
    argv = _command(script)
    assert argv[:3] == ["srun", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    assert argv[3:6] == ["python3", "-m", "strata.launch.cli"]
    _check_train_args(argv[6:], "job.yaml", [])


def test_sigusr1_ahead_of_the_limit_becomes_sigterm_for_the_step_and_a_requeue(tmp_path: Path) -> None:
    script = sbatch_script(SlurmConfig(time="1:00:00", signal_seconds=300), job_name="j", config="job.yaml", log_dir="runs/j")
    assert _directives(script)["--signal"] == "B:USR1@300"
    trap = next(line for line in script.splitlines() if line.startswith("trap "))
    assert trap.endswith(" USR1") and 'scancel --signal=TERM "${SLURM_JOB_ID}"' in trap
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in script
    assert "--signal" not in _directives(sbatch_script(SlurmConfig(signal_seconds=0), job_name="j", config="job.yaml", log_dir="r"))
    with pytest.raises(ConfigError, match="signal_seconds"):
        SlurmConfig(signal_seconds=-1)


def test_cpu_only_job_requests_no_gpus_and_quotes_odd_words(tmp_path: Path) -> None:
    cfg = SlurmConfig(nodes=1, procs_per_node=2, mode="srun", python="/opt/my env/bin/python")
    script = sbatch_script(cfg, job_name="cpu", config="my jobs/a b.yaml", log_dir="runs/cpu", overrides=("name=$(rm -rf x)",))
    _bash_syntax_ok(script, tmp_path)
    assert "--gpus-per-node" not in script
    assert "MASTER_PORT" not in script  # strata derives it from the job id
    argv = _command(script)
    assert argv[3] == "/opt/my env/bin/python"
    _check_train_args(argv[6:], "my jobs/a b.yaml", ["name=$(rm -rf x)"])


def _check_train_args(args: list[str], config: str, overrides: list[str]) -> None:
    from strata.launch.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.command == "train" and parsed.config == config
    assert parsed.resume is True, "a requeued job must resume"
    assert parsed.overrides == overrides


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"nodes": 0}, "slurm.nodes"),
        ({"mode": "mpirun"}, "slurm.mode"),
        ({"time": "four hours"}, "slurm.time"),
        ({"gpus_per_node": 2, "procs_per_node": 4}, "slurm.procs_per_node"),
        ({"port": 70000}, "slurm.port"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        SlurmConfig(**kwargs)


def test_procs_per_node_defaults_to_gpus_or_one() -> None:
    assert SlurmConfig(gpus_per_node=8).procs_per_node == 8
    assert SlurmConfig().procs_per_node == 1
    assert SlurmConfig(nodes=3, gpus_per_node=4, procs_per_node=2).world_size == 6


def test_job_name_with_spaces_is_refused() -> None:
    with pytest.raises(SlurmError, match="job name"):
        sbatch_script(SlurmConfig(), job_name="my job", config="a.yaml", log_dir="runs/x")


def test_cli_writes_the_script_and_creates_the_log_directory(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs/demo.yaml").write_text(JOB.format(name="demo"))
    proc = run_strata("launch", "slurm", "jobs/demo.yaml", "--nodes", "2", "--gpus-per-node", "4", "--time", "1:00:00", cwd=tmp_path)
    script_path = tmp_path / "runs/demo/demo.sbatch"
    assert f"wrote {script_path}" in proc.stdout
    script = script_path.read_text()
    directives = _directives(script)
    assert directives["--chdir"] == str(tmp_path)
    assert directives["--output"] == "runs/demo/slurm-%j.out"
    assert (tmp_path / "runs/demo").is_dir()
    argv = _command(script, SLURM_JOB_ID="1", head_node="n1", rdzv_port="20001")
    assert argv[argv.index("train") + 1] == "jobs/demo.yaml"


def test_cli_refuses_a_bad_config_before_writing(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\ndata: {store: s}\ntrain: {epoch: 3}\n")
    proc = run_strata("launch", "slurm", "bad.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "train.epoch" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_submit_without_sbatch_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(JOB.format(name="demo"))
    (tmp_path / "empty").mkdir()
    env = {"PATH": str(tmp_path / "empty")}
    proc = run_strata("launch", "slurm", "demo.yaml", "--submit", cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 2
    assert "'sbatch' is not on PATH" in proc.stderr and "demo.sbatch" in proc.stderr
