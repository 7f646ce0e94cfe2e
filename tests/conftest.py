from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _has_cuda() -> bool:
    try:
        from vlmserve import _native

        return _native.lib().vlm_cuda_device_count() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(family, **overrides) -> directory of a seeded-random checkpoint (built once per args)."""
    from tiny_models import write_text_model

    made: dict = {}

    def make(family: str, seed: int = 0, **overrides):
        key = (family, seed, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in made:
            d = tmp_path_factory.mktemp(family)
            made[key] = write_text_model(d, family, seed, **overrides)
        return made[key]

    return make


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct checkpoint (built from its GGUF on first use, then cached)."""
    from vlmserve.default_model import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # Tests run on 2 cores: keep torch from oversubscribing next to the engine's threads.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
