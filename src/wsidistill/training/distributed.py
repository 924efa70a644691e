"""Data-parallel training over several processes: PyTorch's DistributedDataParallel, as torchrun or SLURM starts it.

A run started by ``torchrun --nproc-per-node N`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` set by torchrun) or by ``srun`` with several tasks (``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_LOCALID``) trains one model on N processes, one GPU each (NCCL), or on CPU
processes (gloo).  What makes N processes train the model one process would:

- **Batches.** Every rank draws the same seeded global epoch order, batches and D4 elements as a
  single process does; rank ``r`` takes positions ``r, r + N, ...`` of each (sorted) global batch
  (:meth:`Distributed.share`), so the ranks together see exactly the single process's batches.
- **Loss.** Each rank's batch-mean loss is scaled by ``N * n_r / n`` (``n_r`` of the global batch's
  ``n`` rows), so DDP's average of the ranks' gradients is the gradient of the global batch mean, also
  for a last batch that does not split evenly.  Exact for terms that are means over samples (CE, KD,
  AT+, AT, per-sample RMSE); FM and SR take one RMSE over the whole batch, which no per-rank loss
  decomposes: under DDP they are the mean of the ranks' RMSEs.
- **Batch norm.** Batch statistics are those of the global batch: ``torch.nn.SyncBatchNorm`` on CUDA;
  on CPU, where PyTorch's SyncBatchNorm has no kernel (``batch_norm_stats`` is CUDA-only),
  :class:`AllReduceBatchNorm` all-reduces each layer's sums and sums of squares (differentiably).
  The precise-BN recalibration (:func:`~wsidistill.training.loop.recalibrate_batchnorm`) runs per rank
  on its share of the batches, with per-batch statistics as one process computes them, and
  :func:`average_batchnorm_statistics` then weights each rank's averages by its batch count: every rank
  ends with the statistics a single process computes, up to float summation order.
- **Writes.** Only rank 0 writes checkpoints, history and the model (atomically, as a single process
  does); every rank reads the same ``checkpoint.pt`` to resume.

Results equal a single process's up to the float summation order of the gradient all-reduce and of
the batch statistics (tests/training/test_distributed.py states the tolerance).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError


class DistributedSetupError(InputError, RuntimeError):
    """A multi-process launch whose rendezvous cannot be set up (the message says which variable to set)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> Distributed:
        """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, else SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/
        ``SLURM_LOCALID`` (several tasks of one ``srun``), else a single process."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" in env and "RANK" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU) unless already joined."""
        if not self.enabled or dist.is_initialized():
            return
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = _slurm_first_host()
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", 0)) % 1000))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                device_id=device if device.type == "cuda" else None)

    def share(self, count: int) -> np.ndarray:
        """Positions of a global batch of ``count`` rows this rank trains on: ``rank::world_size``."""
        return np.arange(self.rank, count, self.world_size)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` summed over the ranks (float64), the same dict on every rank."""
        if not self.enabled or not values:
            return values
        names = sorted(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return dict(zip(names, tensor.tolist()))

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()


def _slurm_first_host() -> str:
    """The first host of the SLURM job (the rendezvous), via ``scontrol show hostnames``."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if nodes:
        try:
            return subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                  check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    raise DistributedSetupError("a multi-process run needs MASTER_ADDR (the rank-0 host) and MASTER_PORT: "
                                "launch it with torchrun, or export them in the SLURM batch script")


class AllReduceBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the batch over every rank (CPU, gloo).

    The per-channel sum, sum of squares and count are all-reduced with
    :func:`torch.distributed.nn.functional.all_reduce`, whose backward all-reduces the gradients, so
    the gradient is that of the global batch's normalisation (as ``torch.nn.SyncBatchNorm``, which
    has CUDA kernels only).  Eval mode, and a single process, are plain BatchNorm2d.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        count = torch.tensor([input.numel() / channels], dtype=input.dtype)
        stats = all_reduce(torch.cat([input.sum((0, 2, 3)), input.pow(2).sum((0, 2, 3)), count]))
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean.pow(2)).clamp_min(0)  # biased, as batch norm uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (total.detach() / (total.detach() - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased, momentum)
        shape = (1, channels, 1, 1)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` with every BatchNorm computing global-batch statistics: SyncBatchNorm on CUDA,
    :class:`AllReduceBatchNorm` on CPU. State dict keys are unchanged (a saved model loads as before)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            replacement = AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                             child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.to(next(iter(child.state_dict().values())).device)
            setattr(module, name, replacement)
        else:
            sync_batchnorm(child, device)
    return module


def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class local_batchnorm:
    """Within the block, every synchronised batch norm of ``module`` computes per-process statistics
    (plain BatchNorm2d): for the precise-BN recalibration, where each rank runs its own batches."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.layers = [(m, type(m)) for m in batchnorm_layers(module) if type(m) is not torch.nn.BatchNorm2d]

    def __enter__(self) -> None:
        for layer, _ in self.layers:
            layer.__class__ = torch.nn.BatchNorm2d

    def __exit__(self, *exc) -> None:
        for layer, kind in self.layers:
            layer.__class__ = kind


def average_batchnorm_statistics(module: torch.nn.Module, distributed: Distributed) -> None:
    """Running statistics of cumulative averages (momentum None) over each rank's batches, combined into the
    average over every rank's batches (weighted by each rank's ``num_batches_tracked``), on every rank."""
    if not distributed.enabled:
        return
    for layer in batchnorm_layers(module):
        if not layer.track_running_stats:
            continue
        batches = layer.num_batches_tracked.to(layer.running_mean.dtype)
        stacked = torch.cat([layer.running_mean * batches, layer.running_var * batches, batches.view(1)])
        dist.all_reduce(stacked)
        channels = layer.running_mean.numel()
        total = stacked[-1].clamp_min(1)
        layer.running_mean.copy_(stacked[:channels] / total)
        layer.running_var.copy_(stacked[channels : 2 * channels] / total)
        layer.num_batches_tracked.fill_(int(stacked[-1].item()))
