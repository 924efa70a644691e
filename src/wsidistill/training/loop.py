"""Training the Teacher and distilling Students, resumable epoch by epoch.

One loop serves both: the Teacher is a CE-only model at the Teacher's
magnification; a Student is trained at a lower magnification with a weighted
sum of named loss terms from config (``{ce: 1, fm: 0.1, atplus: 10}``), the
Teacher's targets computed from the same patch at the Teacher's magnification
under the same augmentation.  Model selection is by validation quadratic kappa,
as in the reference code.  Every epoch writes a checkpoint, so a killed job
resumes from its last epoch and ends with the same weights as an uninterrupted
run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import __version__
from ..config import TEACHER, config_default, section_defaults
from ..device import Runtime
from ..distill import Distiller, d4_transform, student_input_from, teacher_targets
from ..errors import UnlabelledSlideError
from ..evaluation.inference import batch_probabilities
from ..evaluation.metrics import balanced_accuracy, quadratic_kappa
from ..evaluation.splits import absent_class_warning, absent_classes, class_counts
from ..io import atomic_path, save_figure
from ..models import build_model
from ..models.checkpoint import TEACHER_OUTPUT_STRIDE, ModelMeta, load_model, save_model, student_reads
from ..patches.dataset import BatchSources, StorePatches, batch_loader, to_tensor
from ..slides.grid import magnification_name
from .augment import hed_jitter
from .distributed import Distributed, average_batchnorm_statistics, batchnorm_layers, local_batchnorm, sync_batchnorm
from .teacher_cache import StaleCacheError, TeacherCache, describe_stores, file_sha256

#: The config's ``training`` keys with their defaults, declared once in the config schema.
TRAINING_DEFAULTS = section_defaults("training")


@dataclass(frozen=True)
class TrainSettings:
    """The config's ``training`` section (keys and defaults from the schema), its ``device`` and ``precision``."""

    epochs: int = TRAINING_DEFAULTS["epochs"]
    batch_size: int = TRAINING_DEFAULTS["batch_size"]
    lr: float = TRAINING_DEFAULTS["lr"]
    weight_decay: float = TRAINING_DEFAULTS["weight_decay"]
    patience: int | None = TRAINING_DEFAULTS["patience"]
    augment: str = TRAINING_DEFAULTS["augment"]
    stain_jitter: float = TRAINING_DEFAULTS["stain_jitter"]
    device: str = config_default("device")
    precision: str = config_default("precision")
    deterministic: bool = TRAINING_DEFAULTS["deterministic"]
    #: DataLoader worker processes reading (and decoding) streamed patches; 0 reads in the training process.
    loader_workers: int = TRAINING_DEFAULTS["loader_workers"]
    #: Patches are read into memory when their uint8 pixels (training and validation, every view) take at
    #: most this many MiB; above it they are streamed from the stores batch by batch. 0 always streams.
    memory_budget_mb: float = TRAINING_DEFAULTS["memory_budget_mb"]
    #: GPUs the workflow launches a job on (``torchrun`` ranks, see workflow/rules/common.smk); the Trainer
    #: takes its ranks from torchrun's environment (:class:`~wsidistill.training.distributed.Distributed`).
    gpus_per_job: int = TRAINING_DEFAULTS["gpus_per_job"]


#: Settings that change how patches are read or how a job is launched, never the weights: left out of the
#: checkpoint's fingerprint (the ranks a job ran on are in its provenance's ``runtime``).
READING_SETTINGS = ("epochs", "loader_workers", "memory_budget_mb", "gpus_per_job")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator; ``deterministic`` also selects deterministic GPU kernels.

    Otherwise cuDNN may pick its fastest kernels per input shape (ours are fixed), which on a GPU
    can differ between runs in the last bits. An op with no deterministic CUDA kernel (e.g. the
    backward of bilinear upsampling) warns, naming itself, rather than stopping the run. CPU runs
    are repeatable either way.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def augment_pair(images: list[torch.Tensor], generator: torch.Generator | None = None, *,
                 elements: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Apply the same random D4 element per sample (or the given ``elements``) to aligned batches
    (Teacher and Student views)."""
    if elements is None:
        elements = torch.randint(0, 8, (images[0].shape[0],), generator=generator)
    out = [x.clone() for x in images]
    for element in elements.unique().tolist():
        rows = elements == element
        for view, source in zip(out, images):
            view[rows] = d4_transform(source[rows], element)
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor], runtime: Runtime,
                          upsample_factor: float | None = None, distributed: Distributed | None = None) -> None:
    """Replace BatchNorm running statistics by exact averages over ``batches`` (float NCHW) ("precise BN").

    The running averages lag weights that move every step, and on the demo cohort they left a
    Teacher at 48% eval-mode accuracy on its own training patches (96% once recalibrated).
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021: recompute them with frozen weights.
    Under data-parallel training each rank passes its share of the batches, with per-batch statistics
    (:class:`~wsidistill.training.distributed.local_batchnorm`), and the ranks' averages are combined
    (:func:`~wsidistill.training.distributed.average_batchnorm_statistics`).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches
    model.train()
    with local_batchnorm(model):
        for batch in batches:
            with runtime.autocast():
                model(student_input_from(batch, "upsampled", upsample_factor) if upsample_factor else batch)
    if distributed is not None:
        average_batchnorm_statistics(model, distributed)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


@dataclass(frozen=True)
class TrainJob:
    """What one training run trains: data, network, objective and outputs.

    ``weights``: the method's loss terms (``{"ce": 1}`` for the Teacher); ``teacher_path``: the
    Teacher checkpoint a Student distils from; ``student_input``: "native" (the Student's own
    magnification) or "upsampled" (the Teacher's patches pooled to it and upsampled back);
    ``student_grid``: ``native`` | ``teacher``, the Student design
    (:func:`wsidistill.models.checkpoint.student_output_stride`); ``teacher_cache``: a Teacher-target cache (:mod:`wsidistill.training.teacher_cache`) of this
    Teacher and ``train_stores``, read instead of running the Teacher each batch; ``pretrained``: a
    local checkpoint the network starts from (:func:`wsidistill.models.load_pretrained`).
    """

    train_stores: list[str]
    val_stores: list[str]
    classes: list[str]
    magnification: float
    arch: str
    weights: dict[str, float]
    seed: int
    out_model: str | Path
    out_history: str | Path
    teacher_path: str | Path | None = None
    student_input: str = "native"
    student_grid: str = "native"
    distill_options: dict | None = None
    method: str = TEACHER
    teacher_cache: str | Path | None = None
    pretrained: str | Path | None = None


def train(*, settings: TrainSettings, threads: int = 1, progress: bool = True, **job) -> ModelMeta:
    """Train one model and write its best checkpoint, history CSV and curve PNG; return its metadata.

    ``job``: the fields of :class:`TrainJob`. ``threads``: intra-op threads (the float sums, and so
    the weights' last bits, depend on it). Resumes from ``checkpoint.pt`` beside ``out_model`` when
    that was written with the same settings and inputs (:attr:`Trainer.fingerprint`), else trains
    from scratch.
    """
    trainer = Trainer(TrainJob(**job), settings, threads=threads, progress=progress)
    trainer.resume()
    while trainer.epoch < settings.epochs and not trainer.stopped_early:
        trainer.train_epoch()
    return trainer.finish()


class Trainer:
    """One training run in pieces: set-up (the constructor), :meth:`resume`, :meth:`train_epoch` (one
    epoch, its validation and checkpoint), :meth:`finish` (the best model's checkpoint and curves)."""

    def __init__(self, job: TrainJob, settings: TrainSettings, *, threads: int = 1, progress: bool = True) -> None:
        torch.set_num_threads(threads)
        seed_everything(job.seed, settings.deterministic)
        self.job, self.settings = job, settings
        self.distributed = Distributed.from_environment()
        self.progress = progress and self.distributed.is_main
        runtime = Runtime.create(settings.device, settings.precision)
        if self.distributed.enabled and runtime.is_cuda:  # one GPU per rank
            runtime = Runtime(torch.device("cuda", self.distributed.local_rank), runtime.precision)
            torch.cuda.set_device(runtime.device)
        self.runtime = runtime
        self.distributed.init(runtime.device)
        self.checkpoint_path = Path(job.out_model).with_name("checkpoint.pt")

        self.teacher, self.teacher_meta = None, None
        if job.teacher_path is not None:
            self.teacher, self.teacher_meta = load_model(job.teacher_path, runtime)
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
        self.needs_teacher = any(term != "ce" for term in job.weights)
        if self.needs_teacher and self.teacher is None:
            raise ValueError(f"method {job.method!r} uses {sorted(job.weights)} and needs a Teacher checkpoint")
        self.teacher_magnification = self.teacher_meta.magnification if self.teacher_meta else job.magnification
        self.upsampled = job.student_input == "upsampled" and self.teacher is not None
        self.factor = self.teacher_magnification / job.magnification
        self.use_cache = job.teacher_cache is not None and self.needs_teacher

        views = [job.magnification]
        if self.teacher is not None and ((self.needs_teacher and not self.use_cache) or self.upsampled):
            views.append(self.teacher_magnification)
        self.view_magnifications = list(dict.fromkeys(views))
        self.val_magnification = self.teacher_magnification if self.upsampled else job.magnification
        self.train_set = StorePatches(job.train_stores, self.view_magnifications)
        self.val_set = StorePatches(job.val_stores, [self.val_magnification])
        labelled_slides = set(np.unique(self.train_set.slide_index).tolist())
        unlabelled = [path for index, path in enumerate(job.train_stores) if index not in labelled_slides]
        if unlabelled:  # stores extracted before the slide moved to the train split (extraction checks the rest)
            raise UnlabelledSlideError(
                f"training stores without a labelled patch: {', '.join(map(str, unlabelled))}. Annotate the slides "
                "and extract them again, move them to the test split, or drop them from the sample sheet")
        if self.distributed.is_main:  # issue 17, kind 8: a class no split's patch shows is warned about
            for split, patches in (("train", self.train_set), ("val", self.val_set)):
                if not len(patches):
                    warnings.warn(f"no labelled patch in the {split} split ({len(getattr(job, split + '_stores'))} "
                                  "slides): validation kappa is undefined; the epoch of lowest training loss is kept",
                                  stacklevel=2)
                    continue
                for name in absent_classes(job.classes, class_counts(patches.labels, job.classes)):
                    warnings.warn(absent_class_warning(name, split), stacklevel=2)
        self._choose_reading()

        teacher_stride = self.teacher.output_stride if self.teacher is not None else TEACHER_OUTPUT_STRIDE
        side = int(self.train_set.shapes[magnification_name(job.magnification)][0])  # the Student's patch side
        self.stride, self.reads = student_reads(job.arch, job.magnification, self.teacher_magnification, side=side,
                                                grid=job.student_grid, upsampled=self.upsampled,
                                                teacher_stride=teacher_stride)
        self.model = runtime.place(build_model(job.arch, len(job.classes), output_stride=self.stride,
                                               pretrained=job.pretrained))
        if self.distributed.enabled:
            self.model = sync_batchnorm(self.model, runtime.device)
        self.distiller = runtime.place(Distiller(self.model, job.weights, teacher=self.teacher,
                                                 num_classes=len(job.classes), options=job.distill_options))
        # Under DDP the distiller (the Student and any trained regressors) is what synchronises gradients;
        # batch norm is already global-batch, so buffers need no broadcast.
        self.step_module = self.distiller if not self.distributed.enabled else DistributedDataParallel(
            self.distiller, device_ids=[runtime.device.index] if runtime.is_cuda else None, broadcast_buffers=False)
        self.cache = None
        if self.use_cache:
            self.cache = TeacherCache.open(job.teacher_cache, stores=job.train_stores, teacher_path=job.teacher_path,
                                           terms=self.distiller.terms, teacher_options=self.distiller.teacher_options,
                                           student_sides=self.reads)
            if len(self.cache) != len(self.train_set):
                raise StaleCacheError(f"{job.teacher_cache} holds {len(self.cache)} patches, "
                                      f"the training set {len(self.train_set)}")
        trainable = [p for p in self.distiller.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scaler = runtime.grad_scaler()

        # The Student design realised: an upsampled Student reads the Teacher's input, so it is on the Teacher's grid.
        self.student_grid = None if self.teacher is None else ("teacher" if self.upsampled else job.student_grid)
        self.provenance = self._provenance(threads)
        self.fingerprint = hashlib.sha256(json.dumps(self.provenance, sort_keys=True, default=str).encode()).hexdigest()
        self.history: list[dict] = []
        self.best = {"kappa": -math.inf, "epoch": -1, "state_dict": None}
        self.epoch = 0  # the next epoch to train
        self.epochs_without_gain = 0

    def _provenance(self, threads: int) -> dict:
        """Every setting and input that shapes the weights, JSON-able: what :attr:`fingerprint` digests.

        ``epochs`` is left out: no schedule depends on it, so a run resumed to train longer ends with a
        straight run's weights. Stores are identified by slide id, labelled rows and a digest of their
        labels, coordinates and pixels (:func:`describe_stores`), not by path.
        """
        job = self.job

        def stores(paths, magnifications):
            return [{k: e[k] for k in ("slide_id", "rows", "digest")}
                    for m in magnifications for e in describe_stores(paths, magnification_name(m))]

        return {
            "settings": {k: v for k, v in asdict(self.settings).items() if k not in READING_SETTINGS},
            "runtime": {"device": self.runtime.device.type if self.distributed.enabled else str(self.runtime.device),
                        "precision": self.runtime.precision, "threads": threads,
                        **({"world_size": self.distributed.world_size} if self.distributed.enabled else {})},
            "method": job.method,
            "weights": {k: float(v) for k, v in job.weights.items()},
            "distill_options": self.distiller.options,
            "classes": list(job.classes),
            "arch": job.arch,
            "seed": job.seed,
            "magnification": job.magnification,
            "student_input": "upsampled" if self.upsampled else "native",
            "student_grid": self.student_grid,
            "teacher_sha256": None if job.teacher_path is None else file_sha256(job.teacher_path),
            "teacher_cache": self.cache.attrs["dtype"] if self.cache is not None else None,
            "pretrained_sha256": None if job.pretrained is None else file_sha256(job.pretrained),
            "train_stores": stores(job.train_stores, self.view_magnifications),
            "val_stores": stores(job.val_stores, [self.val_magnification]),
        }

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` if it was written with this run's :attr:`fingerprint`; a checkpoint of
        other settings or inputs is deleted (with a log line) and the run starts from scratch."""
        if not self.checkpoint_path.exists():
            return
        state = torch.load(self.checkpoint_path, map_location=self.runtime.device, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("provenance") or {}
            changed = sorted(k for k in self.provenance.keys() | old.keys() if old.get(k) != self.provenance.get(k))
            print(f"discarding {self.checkpoint_path}: it was written with other settings or inputs "
                  f"(changed: {', '.join(changed)}); training {self.job.out_model} from scratch", flush=True)
            self.checkpoint_path.unlink()
            return
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"] + 1
        self.epochs_without_gain = len(self.history) - 1 - self.best["epoch"] if self.history else 0
        print(f"resuming {self.job.out_model} from epoch {self.epoch}", flush=True)

    @property
    def stopped_early(self) -> bool:
        """``patience`` epochs have passed without a better validation score."""
        return self.settings.patience is not None and self.epochs_without_gain >= self.settings.patience

    def train_epoch(self) -> dict:
        """Train epoch :attr:`epoch`, validate, checkpoint; return its history row."""
        epoch, job = self.epoch, self.job
        started = time.perf_counter()
        totals = self._optimise(epoch)
        kappa, balanced = self.validate()
        row = {
            "epoch": epoch,
            **{f"train_{k}": v / len(self.train_set) for k, v in totals.items()},
            "val_kappa": kappa,
            "val_balanced_accuracy": balanced,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(row)
        score = kappa if not math.isnan(kappa) else -row["train_loss"]
        if score > self.best["kappa"]:
            self.best = {"kappa": score, "epoch": epoch,
                         "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
            self.epochs_without_gain = 0
        else:
            self.epochs_without_gain += 1
        if self.distributed.is_main:
            print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"), flush=True)
        # Checkpoint first: the history CSV never lists an epoch a resumed run would repeat. Rank 0 writes.
        if self.distributed.is_main:
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save({"distiller": self.distiller.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                            "history": self.history, "best": self.best, "epoch": epoch,
                            "fingerprint": self.fingerprint, "provenance": self.provenance}, tmp)
            _write_history(self.history, job.out_history)
        self.epoch += 1
        return row

    def _optimise(self, epoch: int) -> dict[str, float]:
        """One pass over the training set in a seeded order; per-term loss sums weighted by batch size.

        Under data-parallel training every rank draws the same global order, batches and augmentations
        and trains on its share of each batch (:mod:`wsidistill.training.distributed`); the sums are over
        every rank.
        """
        settings, job, runtime, device = self.settings, self.job, self.runtime, self.runtime.device
        teacher, distributed = self.teacher, self.distributed
        generator = torch.Generator().manual_seed(job.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=generator).numpy()
        self.distiller.train()
        if teacher is not None:
            teacher.eval()
        totals: dict[str, float] = {}
        batches = [np.sort(order[start : start + settings.batch_size])
                   for start in range(0, len(order), settings.batch_size)]
        # D4 elements drawn up front, in the order the batches used to draw them (same augmentations).
        elements = [torch.randint(0, 8, (len(rows),), generator=generator) if settings.augment == "d4"
                    else torch.zeros(len(rows), dtype=torch.int64) for rows in batches]
        shares = [distributed.share(len(rows)) for rows in batches]
        local_batches = [rows[share] for rows, share in zip(batches, shares)]
        self.sampler.batches = [("train", rows, None) for rows in local_batches]
        local_elements = [e[torch.from_numpy(share)] for e, share in zip(elements, shares)]
        cached = (self.cache.iterate(zip(local_elements, local_batches), device=device)
                  if self.cache is not None else None)
        description = (f"{job.method} {magnification_name(job.magnification)} seed{job.seed} "
                       f"epoch {epoch + 1}/{settings.epochs}")
        names = [magnification_name(m) for m in self.view_magnifications]
        for batch, rows, share, batch_elements in tqdm(zip(self.loader, batches, shares, local_elements),
                                                       total=len(batches), desc=description,
                                                       disable=not self.progress, leave=False):
            labels = batch["labels"].to(device, non_blocking=True)
            views = [to_tensor(batch["images"][name], device) for name in names]
            if settings.augment == "d4":
                views = augment_pair(views, elements=batch_elements)
            student_view = views[0]
            targets = next(cached) if cached is not None else None
            if teacher is not None and len(views) > 1:
                teacher_view = views[1]
                if self.needs_teacher and cached is None:
                    with runtime.autocast():
                        targets = teacher_targets(teacher, teacher_view, job.weights.keys(),
                                                  **self.distiller.teacher_options)
                if self.upsampled:
                    student_view = student_input_from(teacher_view, "upsampled", self.factor)
            # Only the trained model's view is stain-jittered: the Teacher's targets stay those of the
            # tissue as scanned, so cached targets remain exact.
            student_view = hed_jitter(student_view, settings.stain_jitter, generator,
                                      **({"positions": share, "batch": len(rows)} if distributed.enabled else {}))
            with runtime.autocast():
                loss, terms = self.step_module(student_view, labels, targets)
            for name, value in {"loss": loss.item(), **terms}.items():  # sums over this rank's samples
                totals[name] = totals.get(name, 0.0) + value * len(share)
            if distributed.enabled:  # DDP averages gradients over ranks: make that the global batch mean
                loss = loss * (distributed.world_size * len(share) / len(rows))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return distributed.sum(totals)

    def _choose_reading(self) -> None:
        """Patches in memory when their pixels fit ``memory_budget_mb``, else streamed from the stores (logged)."""
        settings = self.settings
        pixels = self.train_set.nbytes + self.val_set.nbytes
        self.in_memory = pixels <= settings.memory_budget_mb * 2**20
        if self.in_memory:
            self.train_set, self.val_set = self.train_set.load(), self.val_set.load()
        self.workers = 0 if self.in_memory else settings.loader_workers
        # One loader serves every read of the run (training epochs, precise BN, validation): its persistent
        # workers start once, and each opens the stores as it starts.
        self.sampler = EpochBatches()
        self.loader = batch_loader(BatchSources(train=self.train_set, val=self.val_set), self.sampler,
                                   workers=self.workers, pin_memory=self.runtime.is_cuda, persistent=True)
        if self.workers:  # start the persistent workers now, while the models are built, not at the first step
            state = torch.get_rng_state()  # the loader draws its workers' seed from it: leave the weights' init as is
            iter(self.loader)
            torch.set_rng_state(state)
        if self.distributed.is_main:
            how = "in memory" if self.in_memory else f"streamed from the stores by {self.workers} loader workers"
            print(f"patches {how}: {pixels / 2**20:.0f} MiB of pixels, training.memory_budget_mb "
                  f"{settings.memory_budget_mb:g}", flush=True)

    def _view_batches(self, split: str, magnification: float, *, share: bool = False) -> Iterator[torch.Tensor]:
        """Float NCHW batches of the ``split`` ("train" or "val") patches at ``magnification``, in row order,
        read by the run's loader (``share``: this rank's batches)."""
        name, size = magnification_name(magnification), self.settings.batch_size
        count = len(self.train_set if split == "train" else self.val_set)
        batches = [np.arange(start, min(start + size, count)) for start in range(0, count, size)]
        if share:
            batches = batches[self.distributed.rank :: self.distributed.world_size]
        self.sampler.batches = [(split, rows, [name]) for rows in batches]
        for batch in self.loader:
            yield to_tensor(batch["images"][name], self.runtime.device)

    def validate(self) -> tuple[float, float]:
        """Recalibrate batch norm on the training patches, then validation quadratic kappa and balanced accuracy
        (NaN without validation patches)."""
        classes, val_set, magnification = self.job.classes, self.val_set, self.val_magnification
        factor = self.factor if self.upsampled else None
        recalibrate_batchnorm(self.model, self._view_batches("train", magnification, share=True), self.runtime,
                              factor, self.distributed)
        if not len(val_set):
            return float("nan"), float("nan")
        # Every rank validates all of it (same weights and statistics, so the same kappa): no broadcast needed.
        inputs = (student_input_from(batch, "upsampled", factor) if factor else batch
                  for batch in self._view_batches("val", magnification))
        predicted = batch_probabilities(self.model, inputs, self.runtime).argmax(1)
        return (quadratic_kappa(val_set.labels, predicted, len(classes)),
                balanced_accuracy(val_set.labels, predicted, len(classes)))

    def finish(self) -> ModelMeta:
        """Write the best epoch's model with its metadata and the training curves; delete the checkpoint."""
        job, best = self.job, self.best
        meta = ModelMeta(
            arch=job.arch,
            pretrained=None if job.pretrained is None else str(job.pretrained),
            num_classes=len(job.classes),
            classes=list(job.classes),
            magnification=job.magnification,
            teacher_magnification=self.teacher_magnification,
            output_stride=self.stride,
            input_magnification=self.val_magnification,
            patch_side=int(self.train_set.shapes[magnification_name(self.val_magnification)][0]),
            student_input="upsampled" if self.upsampled else "native",
            student_grid=self.student_grid,
            teacher_cache=str(job.teacher_cache) if self.use_cache else None,
            method=job.method,
            weights=dict(job.weights),
            seed=job.seed,
            best_epoch=best["epoch"],
            val_kappa=best["kappa"],
            train_patches=len(self.train_set),
            train_patches_per_class=class_counts(self.train_set.labels, job.classes),
            val_patches=len(self.val_set),
            settings=asdict(self.settings),
            runtime={"device": str(self.runtime.device), "precision": self.runtime.precision},
            threads=torch.get_num_threads(),
            fingerprint=self.fingerprint,
            wsidistill_version=__version__,
        )
        if self.distributed.is_main:
            save_model(job.out_model, best["state_dict"], meta)
            _plot_history(self.history, Path(job.out_history).with_suffix(".png"),
                          title=f"{job.method} {magnification_name(job.magnification)} seed {job.seed}")
            self.checkpoint_path.unlink(missing_ok=True)
        self.distributed.barrier()
        return meta


class EpochBatches(torch.utils.data.Sampler):
    """The batches the run's loader reads next, ``(split, rows, names)`` items of
    :class:`~wsidistill.patches.dataset.BatchSources`, set by the Trainer before each pass: one loader, with
    persistent workers, serves every epoch's seeded order, the precise-BN pass and validation."""

    def __init__(self) -> None:
        self.batches: list[tuple] = []

    def __iter__(self) -> Iterator[tuple]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def _write_history(history: list[dict], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for column in [c for c in frame.columns if c.startswith("train_")]:
        left.plot(frame.epoch, frame[column], label=column.removeprefix("train_"))
    left.set(xlabel="epoch", ylabel="training loss", yscale="log")
    left.legend(fontsize=7)
    right.plot(frame.epoch, frame.val_kappa, marker="o", label="quadratic kappa")
    right.plot(frame.epoch, frame.val_balanced_accuracy, marker="s", label="balanced accuracy")
    right.set(xlabel="epoch", ylabel="validation", ylim=(min(0, frame.val_kappa.min()), 1))
    right.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
