import math

import numpy as np
import pandas as pd
import pytest
import torch

from wsidistill.device import Runtime, resolve_device, resolve_precision
from wsidistill.models.checkpoint import load_model
from wsidistill.patches.dataset import to_tensor
from wsidistill.training.loop import TrainSettings, train


def test_cpu_defaults_to_float32_without_autocast():
    runtime = Runtime.create("cpu", "auto")
    assert runtime.precision == "fp32" and not runtime.is_cuda
    with runtime.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert not runtime.grad_scaler().is_enabled()


def test_auto_precision_on_cuda_prefers_bf16_and_falls_back_to_fp16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"


def test_loss_scaling_only_for_fp16():
    cpu = torch.device("cpu")  # GradScaler disables itself on a CUDA device when no GPU is present
    assert Runtime(cpu, "fp16").grad_scaler().is_enabled()
    assert not Runtime(cpu, "bf16").grad_scaler().is_enabled()


def test_bad_device_and_precision_name_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*device: auto"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match=r"precision must be one of .*'bf16'.*got 'half'"):
        resolve_precision("half", torch.device("cpu"))


def test_patches_reach_the_model_channels_last_in_unit_range():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    tensor = to_tensor(images)
    assert tensor.shape == (2, 3, 5, 5) and tensor.dtype == torch.float32
    assert tensor.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), images / 255, atol=1e-7)


def test_bf16_autocast_trains_a_distilled_student_on_the_cpu_code_path(demo_stores, tmp_path):
    """The CUDA default (bf16 autocast) on the shared code path, here on CPU: every map term, finite losses."""
    settings = TrainSettings(epochs=1, batch_size=16, precision="bf16")
    common = dict(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=["NC", "G3", "G4", "G5"],
                  arch="smallcnn", seed=0, progress=False)
    train(magnification=40, weights={"ce": 1}, settings=settings, out_model=tmp_path / "t/model.pt",
          out_history=tmp_path / "t/h.csv", **common)
    weights = {"ce": 1, "fm": 0.1, "atplus": 10, "saliency": 10, "kd": 1}
    meta = train(magnification=10, weights=weights, settings=settings, teacher_path=tmp_path / "t/model.pt",
                 out_model=tmp_path / "s/model.pt", out_history=tmp_path / "s/h.csv", method="mixed", **common)
    assert meta.runtime == {"device": "cpu", "precision": "bf16"}
    history = pd.read_csv(tmp_path / "s/h.csv")
    assert all(math.isfinite(history[f"train_{term}"].iloc[0]) for term in weights)
    model, _ = load_model(tmp_path / "s/model.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 master weights
