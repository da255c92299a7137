"""Diffusion training on real processes: DDP, DeepSpeed ZeRO and the block pipeline compute what
single-process training computes on the same global batch; resume after SIGKILL restores EMA
and optimizer state and the loss continues where it was."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from strata.errors import ConfigError
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.runtime.config import CheckpointConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig
from strata.runtime.diffusion.engines import global_batch
from strata.runtime.diffusion.image_data import ImageData
from strata.runtime.diffusion.trainer import fit
from strata.runtime.dist.comm import Comm
from strata.runtime.metrics import TrainingMetrics
from strata.storage import checkpoint
from tests.helpers.workers import run_workers

MODEL = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=4, hidden=32, depth=2, heads=2, patch_size=2)
NOISE = NoiseConfig(schedule="cosine", timesteps=100)
TRAIN = DiffusionTrainConfig(steps=3, batch_size=16, lr=3e-3, warmup_steps=0, grad_clip=0.5, ema_decay=0.9, log_every=0, seed=3)


def tiny_images(n: int = 48, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    return ImageData(torch.tanh(torch.randn(n, 1, 8, 8, generator=g)), torch.randint(0, 4, (n,), generator=g), 4)


def train(comm: Comm, run_dir: str, cfg: DiffusionTrainConfig, rank: int = 0) -> dict:
    metrics = TrainingMetrics(MetricsConfig(), rank=rank, local_rank=rank, executor="test", jsonl_url=None)
    losses: list[float] = []
    cfg = dataclasses.replace(cfg, sample_per_class=1, sample_steps=2)
    fit(tiny_images(), MODEL, NOISE, cfg, CheckpointConfig(), comm=comm, metrics=metrics, run_dir=run_dir,
        on_step=lambda state: losses.append(state.last_loss))
    shard = checkpoint.read_shard(f"{run_dir}/checkpoints", cfg.steps, comm.rank)
    metrics.close()
    return {"losses": losses, "model": shard["model"], "ema": shard["ema"]["shadow"], "bytes": comm.bytes_by_op()}


def _worker(topology, run_dir: str, cfg: DiffusionTrainConfig) -> dict:
    torch.set_num_threads(1)
    comm = Comm(topology.rank, topology.world_size)
    return train(comm, f"{run_dir}/rank-shared", cfg, topology.rank)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train(Comm(0, 1), str(tmp_path_factory.mktemp("single")), TRAIN)


def _close(a: dict, b: dict, keys=None, atol: float = 1e-5) -> None:
    for name in keys or a:
        assert torch.allclose(a[name], b[name], atol=atol), f"{name} differs by {(a[name] - b[name]).abs().max():.3g}"


def test_a_rank_slice_of_a_global_batch_is_that_slice() -> None:
    data = tiny_images()
    whole = global_batch(data, 5, batch_size=16, seed=1, timesteps=100, null_label=4, label_dropout=0.5)
    part = global_batch(data, 5, batch_size=16, seed=1, timesteps=100, null_label=4, label_dropout=0.5, rows=slice(8, 16))
    for field in ("x0", "y", "t", "noise"):
        assert torch.equal(getattr(whole, field)[8:], getattr(part, field))
    assert (whole.y == 4).any() and (whole.y != 4).any()  # some labels dropped, not all
    other = global_batch(data, 6, batch_size=16, seed=1, timesteps=100, null_label=4, label_dropout=0.5)
    assert not torch.equal(whole.noise, other.noise)


@pytest.mark.slow
def test_ddp_on_two_ranks_reaches_the_single_process_parameters(tmp_path: Path, single: dict) -> None:
    out = run_workers(_worker, 2, str(tmp_path), TRAIN)
    assert out[0]["losses"] == pytest.approx(single["losses"], abs=1e-5)
    _close(out[0]["model"], single["model"])
    _close(out[1]["model"], single["model"])
    _close(out[0]["ema"], single["ema"])
    params = sum(t.numel() for t in single["model"].values())
    # Each step all-reduces every gradient (4 bytes each), then the loop's float64 loss and stop flag.
    assert out[0]["bytes"]["all_reduce"] == TRAIN.steps * (4 * params + 16)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_on_two_ranks_reaches_the_single_process_parameters(tmp_path: Path, single: dict, stage: int) -> None:
    cfg = dataclasses.replace(TRAIN, engine="deepspeed", zero_stage=stage)
    out = run_workers(_worker, 2, str(tmp_path), cfg)
    _close(out[0]["model"], single["model"])
    _close(out[1]["model"], single["model"])
    assert out[0]["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert any(op.startswith("deepspeed_") and n > 0 for op, n in out[0]["bytes"].items()), out[0]["bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stage_pipeline_gives_the_single_process_loss(tmp_path: Path, single: dict, schedule: str) -> None:
    cfg = dataclasses.replace(TRAIN, executor="pipeline", pipeline_chunks=4, pipeline_schedule=schedule)
    out = run_workers(_worker, 2, str(tmp_path), cfg)
    assert out[0]["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert out[1]["losses"] == out[0]["losses"]
    # Each stage trains its own layers: together they hold the single-process weights.
    first = {k: v for k, v in out[0]["model"].items() if k.startswith("layers.0.")}
    last = {k: v for k, v in out[1]["model"].items() if k.startswith(f"layers.{MODEL.depth + 1}.")}
    assert first and last
    _close(first, single["model"])
    _close(last, single["model"])
    assert out[0]["bytes"]["send"] > 0 and out[1]["bytes"]["send"] > 0


def test_gradient_accumulation_computes_the_whole_batch_gradient() -> None:
    from strata.models.diffusion.config import build_diffusion
    from strata.models.diffusion.schedule import NoiseSchedule
    from strata.runtime.diffusion.engines import DataParallelEngine
    from strata.runtime.loop import micro_scales

    batch = global_batch(tiny_images(), 0, batch_size=16, seed=0, timesteps=100, null_label=4, label_dropout=0.2)
    grads, losses = [], []
    for parts in (1, 4):
        torch.manual_seed(0)
        engine = DataParallelEngine(build_diffusion(MODEL), NoiseSchedule(NOISE), Comm(0, 1), dataclasses.replace(TRAIN, grad_clip=0).optimizer)
        micro = batch.split(parts)
        losses.append(sum(engine.forward_backward(b, scale).loss for b, scale in zip(micro, micro_scales(micro))))
        grads.append({n: p.grad.clone() for n, p in engine.module.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    _close(grads[0], grads[1], atol=1e-6)


@pytest.mark.slow
def test_deepspeed_with_accumulation_on_two_ranks_reaches_the_single_process_parameters(tmp_path: Path, single: dict) -> None:
    out = run_workers(_worker, 2, str(tmp_path), dataclasses.replace(TRAIN, engine="deepspeed", zero_stage=1, grad_accum=2))
    _close(out[0]["model"], single["model"])
    assert out[0]["losses"] == pytest.approx(single["losses"], abs=1e-5)


def test_batch_that_does_not_split_over_ranks_is_a_config_error(tmp_path: Path) -> None:
    from strata.runtime.diffusion.engines import rank_rows

    with pytest.raises(ConfigError, match="split evenly over 3 processes"):
        rank_rows(16, 1, 0, 3)
    with pytest.raises(ConfigError, match="engine"):
        DiffusionTrainConfig(engine="horovod")


# -- the command line: kill and resume ----------------------------------------------------------

JOB = """
name: run
task: diffusion
data: {{store: {store}}}
diffusion_model: {{arch: dit, image_size: 8, channels: 1, num_classes: 10, hidden: 32, depth: 2, heads: 2}}
noise: {{timesteps: 100}}
diffusion: {{steps: {steps}, batch_size: 32, lr: 0.002, warmup_steps: 5, ema_decay: 0.9, log_every: 1, sample_per_class: 1, sample_steps: 2, seed: 5}}
checkpoint: {{every_steps: {every}, keep: 0}}
"""


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from strata.storage.ingest.images import ingest_digits

    url = str(tmp_path_factory.mktemp("digits") / "store")
    ingest_digits(url)
    return url


def _start(cfg: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "strata.launch.cli", "train", str(cfg), "-q", "--json", *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _steps(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "step"}


@pytest.mark.slow
def test_sigkill_and_resume_restores_ema_and_optimizer_and_continues_the_loss(tmp_path: Path, digits_store: str) -> None:
    steps, every = 40, 5
    cfg = tmp_path / "job.yaml"
    cfg.write_text(JOB.format(store=digits_store, steps=steps, every=every))
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    killed.mkdir(), reference.mkdir()
    ref = _start(cfg, reference)
    victim = _start(cfg, killed)
    ckpt_root = str(killed / "runs/run/checkpoints")
    deadline = time.time() + 300
    while (checkpoint.latest_step(ckpt_root) or 0) < 2 * every:
        assert victim.poll() is None, f"training ended before it could be killed:\n{victim.stderr.read()}"
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed_from = checkpoint.latest_step(ckpt_root)
    assert resumed_from is not None and resumed_from < steps

    resumed = _start(cfg, killed, "--resume")
    out, err = resumed.communicate(timeout=600)
    ref_out, ref_err = ref.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert ref.returncode == 0, ref_err

    # The loss after the resume is the uninterrupted run's, step by step.
    mine, theirs = _steps(killed / "runs/run"), _steps(reference / "runs/run")
    assert all(mine[s] == theirs[s] for s in range(resumed_from + 1, steps + 1))
    # EMA and optimizer state were restored, not restarted: the final ones are identical.
    a = checkpoint.read_shard(ckpt_root, steps, 0)
    b = checkpoint.read_shard(str(reference / "runs/run/checkpoints"), steps, 0)
    assert a["ema"]["updates"] == b["ema"]["updates"] == steps
    for name, tensor in b["ema"]["shadow"].items():
        assert torch.equal(a["ema"]["shadow"][name], tensor), name
    for key, state in b["optimizer"]["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["optimizer"]["state"][key]["exp_avg_sq"], state["exp_avg_sq"])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["samples"].endswith(".png") and (killed / result["samples"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _resume_worker(topology, run_dir: str, cfg: DiffusionTrainConfig, resume: bool) -> dict:
    torch.set_num_threads(1)
    comm = Comm(topology.rank, topology.world_size)
    metrics = TrainingMetrics(MetricsConfig(), rank=topology.rank, local_rank=topology.rank, executor="test", jsonl_url=None)
    cfg = dataclasses.replace(cfg, sample_per_class=1, sample_steps=2)
    fit(tiny_images(), MODEL, NOISE, cfg, CheckpointConfig(), comm=comm, metrics=metrics, run_dir=run_dir, resume=resume)
    metrics.close()
    return checkpoint.read_shard(f"{run_dir}/checkpoints", cfg.steps, comm.rank)


@pytest.mark.slow
def test_deepspeed_resume_restores_its_partitioned_optimizer_state(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TRAIN, engine="deepspeed", zero_stage=1, steps=4)
    straight = run_workers(_resume_worker, 2, str(tmp_path / "straight"), cfg, False)
    run_workers(_resume_worker, 2, str(tmp_path / "interrupted"), dataclasses.replace(cfg, steps=2), False)
    resumed = run_workers(_resume_worker, 2, str(tmp_path / "interrupted"), cfg, True)
    for rank in range(2):
        _close(resumed[rank]["model"], straight[rank]["model"], atol=1e-6)
        _close(resumed[rank]["ema"]["shadow"], straight[rank]["ema"]["shadow"], atol=1e-6)
    # (Adam's moments restarted at step 2 would move steps 3 and 4 elsewhere: the check above
    # fails if the ZeRO partitions were not restored.)
