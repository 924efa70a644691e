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

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import __version__
from ..device import Runtime
from ..distill import Distiller, d4_transform, student_input_from, teacher_targets
from ..evaluation.inference import predict_probabilities
from ..evaluation.metrics import balanced_accuracy, quadratic_kappa
from ..io import atomic_path, save_figure
from ..models import build_model
from ..models.checkpoint import TEACHER_OUTPUT_STRIDE, load_model, student_output_stride
from ..patches.dataset import load_patches, to_tensor
from ..slides.grid import magnification_name
from .augment import hed_jitter
from .teacher_cache import StaleCacheError, TeacherCache


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int | None = None
    augment: str = "d4"
    stain_jitter: float = 0.0
    device: str = "auto"
    precision: str = "auto"
    deterministic: bool = False


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
def recalibrate_batchnorm(model: torch.nn.Module, images: np.ndarray, batch_size: int, runtime: Runtime,
                          upsample_factor: float | None = None) -> None:
    """Replace BatchNorm running statistics by exact averages over ``images`` ("precise BN").

    The running averages lag weights that move every step, and on the demo cohort they left a
    Teacher at 48% eval-mode accuracy on its own training patches (96% once recalibrated).
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021: recompute them with frozen weights.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches
    model.train()
    for start in range(0, len(images), batch_size):
        batch = to_tensor(images[start : start + batch_size], runtime.device)
        with runtime.autocast():
            model(student_input_from(batch, "upsampled", upsample_factor) if upsample_factor else batch)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


def train(
    *,
    train_stores: list[str],
    val_stores: list[str],
    classes: list[str],
    magnification: float,
    arch: str,
    weights: dict[str, float],
    settings: TrainSettings,
    seed: int,
    out_model: str | Path,
    out_history: str | Path,
    teacher_path: str | Path | None = None,
    student_input: str = "native",
    student_grid: str = "native",
    distill_options: dict | None = None,
    threads: int = 1,
    method: str = "teacher",
    progress: bool = True,
    teacher_cache: str | Path | None = None,
    pretrained: str | Path | None = None,
) -> dict:
    """Train one model and write its best checkpoint, history CSV and curve PNG.

    ``teacher_cache``: a Teacher-target cache (:mod:`wsidistill.training.teacher_cache`) of this Teacher and
    ``train_stores``; the Teacher's targets are then read from it instead of computed each batch.
    ``pretrained``: a local checkpoint the network starts from (:func:`wsidistill.models.load_pretrained`).
    ``student_grid``: ``native`` | ``teacher``, the Student design (:func:`wsidistill.models.checkpoint.student_output_stride`).
    """
    torch.set_num_threads(threads)
    seed_everything(seed, settings.deterministic)
    runtime = Runtime.create(settings.device, settings.precision)
    device = runtime.device
    out_model = Path(out_model)
    work_checkpoint = out_model.with_name("checkpoint.pt")

    teacher, teacher_meta = (None, None)
    if teacher_path is not None:
        teacher, teacher_meta = load_model(teacher_path, runtime)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
    needs_teacher = any(term != "ce" for term in weights)
    if needs_teacher and teacher is None:
        raise ValueError(f"method {method!r} uses {sorted(weights)} and needs a Teacher checkpoint")
    teacher_magnification = teacher_meta["magnification"] if teacher_meta else magnification
    upsampled = student_input == "upsampled" and teacher is not None

    use_cache = teacher_cache is not None and needs_teacher
    view_magnifications = [magnification]
    if teacher is not None and ((needs_teacher and not use_cache) or upsampled):
        view_magnifications.append(teacher_magnification)
    view_magnifications = list(dict.fromkeys(view_magnifications))
    train_set = load_patches(train_stores, view_magnifications)
    val_set = load_patches(val_stores, [teacher_magnification if upsampled else magnification])
    if len(train_set) == 0:
        raise ValueError(f"no labelled training patches in {train_stores}")

    teacher_stride = teacher.output_stride if teacher is not None else TEACHER_OUTPUT_STRIDE
    side = int(train_set.images[magnification_name(magnification)].shape[1])
    stride = None if upsampled else student_output_stride(arch, magnification, teacher_magnification, side=side,
                                                          grid=student_grid, teacher_stride=teacher_stride)
    if upsampled and arch == "smallcnn":
        stride = teacher_stride
    model = runtime.place(build_model(arch, len(classes), output_stride=stride, pretrained=pretrained))
    distiller = runtime.place(Distiller(model, weights, teacher=teacher, num_classes=len(classes), options=distill_options))
    cache = None
    if use_cache:
        cache = TeacherCache.open(teacher_cache, stores=train_stores, teacher_path=teacher_path,
                                  terms=distiller.terms, teacher_options=distiller.teacher_options)
        if len(cache) != len(train_set):
            raise StaleCacheError(f"{teacher_cache} holds {len(cache)} patches, the training set {len(train_set)}")
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = runtime.grad_scaler()

    history: list[dict] = []
    best = {"kappa": -math.inf, "epoch": -1, "state_dict": None}
    start_epoch = 0
    if work_checkpoint.exists():
        state = torch.load(work_checkpoint, map_location=device, weights_only=False)
        distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        print(f"resuming {out_model} from epoch {start_epoch}", flush=True)

    factor = teacher_magnification / magnification
    student_name = magnification_name(magnification)
    teacher_name = magnification_name(teacher_magnification)
    epochs_without_gain = len(history) - 1 - best["epoch"] if history else 0
    for epoch in range(start_epoch, settings.epochs):
        if settings.patience is not None and epochs_without_gain >= settings.patience:
            break
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=generator).numpy()
        distiller.train()
        if teacher is not None:
            teacher.eval()
        totals: dict[str, float] = {}
        batches = [np.sort(order[start : start + settings.batch_size])
                   for start in range(0, len(order), settings.batch_size)]
        # D4 elements drawn up front, in the order the batches used to draw them (same augmentations).
        elements = [torch.randint(0, 8, (len(rows),), generator=generator) if settings.augment == "d4"
                    else torch.zeros(len(rows), dtype=torch.int64) for rows in batches]
        cached = cache.iterate(zip(elements, batches), device=device) if cache is not None else None
        for rows, batch_elements in tqdm(list(zip(batches, elements)),
                                         desc=f"{method} {student_name} seed{seed} epoch {epoch + 1}/{settings.epochs}",
                                         disable=not progress, leave=False):
            labels = torch.from_numpy(train_set.labels[rows]).to(device)
            views = [to_tensor(train_set.images[magnification_name(m)][rows], device) for m in view_magnifications]
            if settings.augment == "d4":
                views = augment_pair(views, elements=batch_elements)
            student_view = views[0]
            targets = next(cached) if cached is not None else None
            if teacher is not None and len(views) > 1:
                teacher_view = views[1]
                if needs_teacher and cached is None:
                    with runtime.autocast():
                        targets = teacher_targets(teacher, teacher_view, weights.keys(), **distiller.teacher_options)
                if upsampled:
                    student_view = student_input_from(teacher_view, "upsampled", factor)
            # Only the trained model's view is stain-jittered: the Teacher's targets stay those of the
            # tissue as scanned, so cached targets remain exact.
            student_view = hed_jitter(student_view, settings.stain_jitter, generator)
            with runtime.autocast():
                loss, terms = distiller(student_view, labels, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for name, value in {"loss": loss.item(), **terms}.items():
                totals[name] = totals.get(name, 0.0) + value * len(rows)

        input_view = teacher_name if upsampled else student_name
        recalibrate_batchnorm(model, train_set.images[input_view], settings.batch_size, runtime,
                              factor if upsampled else None)
        val_probs = predict_probabilities(model, val_set.images[input_view], settings.batch_size, runtime,
                                          factor if upsampled else None) if len(val_set) else np.zeros((0, len(classes)))
        val_pred = val_probs.argmax(1) if len(val_set) else np.zeros(0, int)
        kappa = quadratic_kappa(val_set.labels, val_pred, len(classes)) if len(val_set) else float("nan")
        row = {
            "epoch": epoch,
            **{f"train_{k}": v / len(order) for k, v in totals.items()},
            "val_kappa": kappa,
            "val_balanced_accuracy": balanced_accuracy(val_set.labels, val_pred, len(classes)) if len(val_set) else float("nan"),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        score = kappa if not math.isnan(kappa) else -row["train_loss"]
        if score > best["kappa"]:
            best = {"kappa": score, "epoch": epoch,
                    "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"), flush=True)
        # Checkpoint first: the history CSV never lists an epoch a resumed run would repeat.
        with atomic_path(work_checkpoint) as tmp:
            torch.save({"distiller": distiller.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "history": history, "best": best, "epoch": epoch}, tmp)
        _write_history(history, out_history)

    meta = {
        "arch": arch,
        "pretrained": None if pretrained is None else str(pretrained),
        "num_classes": len(classes),
        "classes": list(classes),
        "magnification": magnification,
        "teacher_magnification": teacher_magnification,
        "output_stride": stride,
        # Student design realised: an upsampled Student reads the Teacher's input, so it is on the Teacher's grid.
        "student_grid": None if teacher is None else ("teacher" if upsampled else student_grid),
        "input_magnification": teacher_magnification if upsampled else magnification,
        "patch_side": int(train_set.images[teacher_name if upsampled else student_name].shape[1]),
        "student_input": "upsampled" if upsampled else "native",
        "teacher_cache": str(teacher_cache) if use_cache else None,
        "method": method,
        "weights": dict(weights),
        "seed": seed,
        "best_epoch": best["epoch"],
        "val_kappa": best["kappa"],
        "train_patches": len(train_set),
        "val_patches": len(val_set),
        "settings": asdict(settings),
        "runtime": {"device": str(runtime.device), "precision": runtime.precision},
        "wsidistill_version": __version__,
    }
    with atomic_path(out_model) as tmp:
        torch.save({"state_dict": best["state_dict"], "meta": meta}, tmp)
    _plot_history(history, Path(out_history).with_suffix(".png"), title=f"{method} {student_name} seed {seed}")
    work_checkpoint.unlink(missing_ok=True)
    return meta


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
