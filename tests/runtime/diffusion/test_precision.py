"""diffusion.precision: bf16 autocasts the forward passes and keeps fp32 weights, gradients and
optimizer state; replicas on real processes stay identical; 'auto' is fp32 on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from strata.errors import ConfigError
from strata.models.diffusion.config import build_diffusion
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.diffusion.config import DiffusionTrainConfig
from strata.runtime.diffusion.engines import (
    DataParallelEngine,
    EngineContext,
    global_batch,
)
from strata.runtime.diffusion.registry import build_engine
from strata.runtime.diffusion.trainer import batch_rows, uses_bf16
from strata.runtime.dist.comm import Comm
from strata.runtime.loop import autocast
from tests.helpers.workers import run_workers
from tests.runtime.diffusion.test_training import MODEL, NOISE, TRAIN, tiny_images, train


def _output_dtypes(bf16: bool) -> tuple[set[torch.dtype], nn.Module]:
    torch.manual_seed(0)
    model = build_diffusion(MODEL)
    # Non-zero output weights, so the forward is not trivially zero at step 0.
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    engine = DataParallelEngine(model, NoiseSchedule(NOISE), Comm(0, 1), TRAIN.optimizer)
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in model.modules() if isinstance(m, nn.Linear)]
    batch = global_batch(tiny_images(), 0, batch_size=8, seed=0, timesteps=NOISE.timesteps, null_label=4, label_dropout=0.1)
    with autocast("cpu", bf16):  # as the loop runs every forward and backward
        engine.forward_backward(batch, 1.0)
    for hook in hooks:
        hook.remove()
    return seen, model


def test_bf16_autocasts_the_forward_and_keeps_fp32_weights_and_gradients() -> None:
    seen, model = _output_dtypes(bf16=True)
    assert seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    seen, _ = _output_dtypes(bf16=False)
    assert seen == {torch.float32}


def test_auto_is_fp32_on_cpu_and_bf16_is_asked_for_explicitly() -> None:
    assert not uses_bf16(TRAIN, "cpu")
    assert uses_bf16(dataclasses.replace(TRAIN, precision="bf16"), "cpu")
    assert not uses_bf16(dataclasses.replace(TRAIN, precision="fp32"), "cuda:0")
    assert not uses_bf16(dataclasses.replace(TRAIN, executor="pipeline"), "cuda:0")


def test_precision_config_errors() -> None:
    with pytest.raises(ConfigError, match="diffusion.precision must be one of auto, fp32, bf16, got 'fp16'"):
        DiffusionTrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="not supported by the pipeline executor"):
        DiffusionTrainConfig(precision="bf16", executor="pipeline")
    cfg = dataclasses.replace(TRAIN, precision="bf16", engine="deepspeed")
    with pytest.raises(ConfigError, match="engine=deepspeed needs a CUDA device"):
        comm = Comm(0, 1)
        build_engine(EngineContext(cfg, build_diffusion(MODEL), NoiseSchedule(NOISE), comm, "cpu", batch_rows(cfg, comm), True))


def _bf16_worker(topology, run_dir: str, cfg: DiffusionTrainConfig) -> dict:
    torch.set_num_threads(1)
    return train(Comm(topology.rank, topology.world_size), f"{run_dir}/rank-shared", cfg, topology.rank)


@pytest.mark.slow
def test_bf16_ddp_on_two_ranks_keeps_replicas_identical_and_follows_fp32(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TRAIN, steps=6, precision="bf16")
    out = run_workers(_bf16_worker, 2, str(tmp_path / "bf16"), cfg)
    for name, value in out[0]["model"].items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, out[1]["model"][name]), name
    assert out[0]["losses"] == out[1]["losses"]
    fp32 = train(Comm(0, 1), str(tmp_path / "fp32"), dataclasses.replace(cfg, precision="fp32"))
    # Rounded differently, so not the fp32 run bit for bit, but the same training within 2%.
    assert out[0]["losses"] != fp32["losses"]
    for got, want in zip(out[0]["losses"], fp32["losses"]):
        assert got == pytest.approx(want, rel=0.02)
