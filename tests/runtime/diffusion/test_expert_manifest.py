"""A job whose configs disagree with an expert set's manifest is refused with the keys that differ,
not with both whole config dicts."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.runtime.diffusion.experts import check_manifest_agrees
from strata.runtime.diffusion.model_loading import ExpertSetManifest, write_manifest

MODEL = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=10, hidden=32, depth=2, heads=2, patch_size=2)


def _manifest(model: DiffusionModelConfig = MODEL, noise: NoiseConfig | None = None, k: int = 2) -> ExpertSetManifest:
    return ExpertSetManifest(
        num_experts=k, image_shape=[1, 8, 8], num_classes=10, store="stores/digits", store_checksum="abc",
        clusters="clusters.npz", experts=[f"expert-{i:03d}/checkpoints" for i in range(k)], router="router/checkpoints",
        router_num_clusters=k, router_hidden=64, router_num_classes=10, diffusion_model=asdict(model),
        noise=asdict(noise or NoiseConfig()),
    )


def test_a_refused_job_is_told_only_the_keys_that_differ(tmp_path: Path) -> None:
    url = str(tmp_path / "manifest.json")
    write_manifest(url, _manifest())
    check_manifest_agrees(url, _manifest())  # the same configs: welcome

    with pytest.raises(ConfigError) as refused:
        check_manifest_agrees(url, _manifest(dataclasses.replace(MODEL, hidden=16), NoiseConfig(schedule="linear")))
    message = str(refused.value)
    assert "diffusion_model.hidden: set has 32, this job 16" in message
    assert "noise.schedule: set has 'cosine', this job 'linear'" in message
    # Neither whole config is dumped: keys that agree are not mentioned.
    assert "depth" not in message and "patch_size" not in message and "timesteps" not in message
    assert "use the set's config, or another run_dir" in message


def test_no_manifest_yet_is_a_new_set(tmp_path: Path) -> None:
    check_manifest_agrees(str(tmp_path / "none.json"), _manifest())
