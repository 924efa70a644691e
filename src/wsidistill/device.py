"""Where and in what precision models run: one code path for CPU and CUDA.

On CPU everything stays float32 and contiguous, so CPU results do not depend
on this module.  On CUDA the defaults are what makes a convolutional network
fast there: bf16 autocast (fp16 with loss scaling on GPUs without bf16),
channels_last weights (our NHWC patch arrays already arrive in that layout)
and pinned host memory for asynchronous host-to-device copies.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .config import config_default

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available here; set `device: auto` or `cpu`")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass(frozen=True)
class Runtime:
    """A device and a numeric precision, with the helpers every training and inference loop needs."""

    device: torch.device
    precision: str = "fp32"

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        resolved = resolve_device(device)
        return cls(resolved, resolve_precision(precision, resolved))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, enabled only for fp16 (bf16 has float32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.is_cuda else module


@dataclass(frozen=True)
class InferenceSettings:
    """How a batch inference job runs (``evaluate``, ``teacher-cache``).

    ``batch_size`` patches per forward pass; ``device`` and ``precision`` as :meth:`Runtime.create`;
    ``threads`` torch intra-op threads (float sums, hence results, depend on it on CPU); ``progress``
    shows progress bars.
    """

    batch_size: int = 64
    device: str = config_default("device")
    precision: str = config_default("precision")
    threads: int = 1
    progress: bool = True

    def runtime(self) -> Runtime:
        """Set torch's thread count to ``threads`` and resolve device and precision."""
        torch.set_num_threads(self.threads)
        return Runtime.create(self.device, self.precision)
