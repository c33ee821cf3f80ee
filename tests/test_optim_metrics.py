"""LR schedules, optimizer groups and the MFU peak-FLOPs table."""

import pytest

from titan_jepa.config import load_config
from titan_jepa.metrics import gpu_peak_flops
from titan_jepa.optim import lr_factor


def cfg(decay, steps=100, warmup=10, **kw):
    return load_config(extra={"training": {"steps": steps},
                              "lr_scheduler": {"decay_type": decay, "warmup_steps": warmup, "min_lr_ratio": 0.1, **kw}})


def test_warmup_then_cosine():
    c = cfg("cosine")
    assert lr_factor(0, c) == pytest.approx(1 / 11)
    assert lr_factor(9, c) == pytest.approx(10 / 11)
    assert lr_factor(10, c) == pytest.approx(1.0)
    assert lr_factor(55, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(100, c) == pytest.approx(0.1)


def test_linear_and_wsd():
    lin = cfg("linear")
    assert lr_factor(55, lin) == pytest.approx(0.1 + 0.9 * 0.5)
    wsd = cfg("wsd", decay_ratio=0.2)
    assert lr_factor(50, wsd) == 1.0 and lr_factor(79, wsd) == 1.0
    assert lr_factor(90, wsd) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, wsd) == pytest.approx(0.1)
    assert lr_factor(70, cfg("constant")) == 1.0


def test_peak_flops_table():
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("Some CPU") is None
