"""Does the Student look where the Teacher looks?  AT+ maps side by side, and their agreement.

Maps come from :func:`wsidistill.distill.attention.atplus_maps`, the same
function training matched, for each patch's annotated class.  The Teacher's
map is area-resampled onto the Student's grid, both are min-max normalised, and
their agreement is the Pearson correlation over the grid: the quantitative form
of the paper's qualitative attention figure.  :func:`spike_share` measures how
often a model's maps peak in one fixed cell (the AT+ spike of issue 19).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ..distill.attention import align_map, atplus_maps, minmax_normalise  # noqa: E402
from ..io import save_figure, write_text  # noqa: E402
from ..models.checkpoint import ModelMeta, load_model, model_view  # noqa: E402
from ..patches.dataset import load_patches, to_tensor  # noqa: E402
from ..slides.grid import magnification_name  # noqa: E402


@torch.no_grad()
def class_attention(model, meta: ModelMeta, images: np.ndarray, classes: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, H, W) AT+ map of each patch for its given class, unnormalised, on the model's grid (N may be 0: test
    slides without labels give no patch)."""
    maps = []
    for start in range(0, max(len(images), 1), batch_size):  # one empty batch for no images: the grid's shape
        output = model(model_view(to_tensor(images[start : start + batch_size]), meta))
        target = torch.as_tensor(classes[start : start + batch_size])
        maps.append(atplus_maps(list(output.features.values())[-1], classifier_weight=model.classifier.weight,
                                target=target)[:, 0])
    return torch.cat(maps)


def map_correlation(student: torch.Tensor, teacher: torch.Tensor) -> np.ndarray:
    """Per-patch Pearson correlation of normalised maps after putting the Teacher's on the Student's grid."""
    teacher = align_map(teacher[:, None], student.shape[-2:])[:, 0]
    s = minmax_normalise(student).flatten(1)
    t = minmax_normalise(teacher).flatten(1)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    denominator = s.norm(dim=1) * t.norm(dim=1)
    return torch.where(denominator > 0, (s * t).sum(1) / denominator.clamp_min(1e-12), torch.nan).numpy()


def spike_share(maps: torch.Tensor) -> tuple[float, tuple[int, int] | None]:
    """How fixed a model's attention peak is: the share of maps whose maximum lies in the modal cell.

    ``maps``: ``(N, H, W)``, one map per patch on the model's grid. Each non-flat map's maximum
    (first cell on a tie) falls in one cell; the modal cell is the most frequent of those (the
    first in row-major order on a tie); the share is the number of maps peaking there over ``N``.
    A flat map (max == min, e.g. all zero) has no peak and counts against the share. Returns
    ``(share, (row, column))``, ``(nan, None)`` without maps and ``(0.0, None)`` when every map is
    flat. Maxima scattered uniformly give about ``1 / (H W)``; 1 is the fixed spike an AT+
    Student learns when min-max RMSE rewards it (issue 19).
    """
    if len(maps) == 0:
        return float("nan"), None
    flat = maps.flatten(1)
    peaked = flat.amax(1) > flat.amin(1)
    if not peaked.any():
        return 0.0, None
    counts = torch.bincount(flat[peaked].argmax(1), minlength=flat.shape[1])
    cell = int(counts.argmax())
    return float(counts[cell]) / len(maps), divmod(cell, maps.shape[-1])


def attention_study(teacher_path, students: dict[str, str | Path], stores: list[str | Path], out_dir: str | Path,
                    *, panel_students: list[str], samples_per_class: int = 3, seed: int = 0,
                    spike_md: str | Path | None = None) -> pd.DataFrame:
    """Write the agreement table (CSV, Markdown), one attention panel PNG per class and, with
    ``spike_md``, the spike table (:func:`spike_share` per model, Markdown, and CSV beside it)."""
    out_dir = Path(out_dir)
    teacher, teacher_meta = load_model(teacher_path)
    models = {name: load_model(path) for name, path in students.items()}
    magnifications = sorted({teacher_meta.input_magnification} | {m.input_magnification for _, m in models.values()},
                            reverse=True)
    patches = load_patches(stores, magnifications)
    classes = teacher_meta.classes
    teacher_maps = class_attention(teacher, teacher_meta,
                                   patches.images[magnification_name(teacher_meta.input_magnification)], patches.labels)
    rows, student_maps, correlations, spikes = [], {}, {}, {}
    for name, (model, meta) in models.items():
        maps = class_attention(model, meta, patches.images[magnification_name(meta.input_magnification)],
                               patches.labels)
        student_maps[name], correlations[name] = maps, map_correlation(maps, teacher_maps)
        spikes[name] = spike_share(maps)
        teacher_share = spike_share(align_map(teacher_maps[:, None], maps.shape[-2:])[:, 0])[0] if len(maps) else np.nan
        rows.append({"model": name, "method": meta.method, "magnification": meta.magnification,
                     "patches": len(maps), "grid": f"{maps.shape[-2]}x{maps.shape[-1]}",
                     "mean_correlation": float(np.nanmean(correlations[name])) if len(maps) else float("nan"),
                     "std_correlation": float(np.nanstd(correlations[name])) if len(maps) else float("nan"),
                     "spike_share": spikes[name][0], "modal_cell": _cell_name(spikes[name][1]),
                     "teacher_spike_share": teacher_share})
    frame = pd.DataFrame(rows).sort_values(["magnification", "method"], ascending=[False, True])
    write_text(out_dir / "agreement.csv", frame.to_csv(index=False))
    write_text(out_dir / "agreement.md", _agreement_markdown(frame))
    if spike_md is not None:
        share, cell = spike_share(teacher_maps)
        teacher_row = {"model": "teacher", "method": "teacher", "magnification": teacher_meta.magnification,
                       "patches": len(teacher_maps), "grid": f"{teacher_maps.shape[-2]}x{teacher_maps.shape[-1]}",
                       "spike_share": share, "modal_cell": _cell_name(cell), "teacher_spike_share": share}
        spike_frame = pd.concat([pd.DataFrame([teacher_row]), frame[list(teacher_row)]], ignore_index=True)
        write_text(Path(spike_md).with_suffix(".csv"), spike_frame.to_csv(index=False))
        write_text(spike_md, _spike_markdown(spike_frame))

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        rows_of_class = np.flatnonzero(patches.labels == index)
        chosen = np.sort(rng.choice(rows_of_class, min(samples_per_class, len(rows_of_class)), replace=False))
        _panel(patches, chosen, magnifications, teacher_maps, student_maps, correlations,
               [p for p in panel_students if p in models], f"{name}: Teacher vs Student AT+ attention",
               out_dir / f"{name}.png", spikes)
    return frame


def _percent(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.1%}"


def _cell_name(cell: tuple[int, int] | None) -> str:
    return "" if cell is None else f"({cell[0]}, {cell[1]})"


def _spike_markdown(frame: pd.DataFrame) -> str:
    """One row per model: the share of test patches whose map peaks in the model's modal cell."""
    table = frame.assign(
        magnification=frame.magnification.map(lambda m: f"{m:g}x"),
        spike_share=frame.spike_share.map(_percent),
        teacher_on_grid=frame.teacher_spike_share.map(_percent),
        chance=frame.grid.map(lambda g: f"{1 / np.prod([int(v) for v in g.split('x')]):.1%}"),
    )[["model", "magnification", "grid", "patches", "spike_share", "modal_cell", "teacher_on_grid", "chance"]]
    lines = ["# Fixed attention spike", "",
             "Share of labelled test patches whose AT+ map (for the annotated class) has its maximum in the model's "
             "modal cell, the same cell for every patch. Near 100%: a fixed spike, the same peak whatever the tissue. "
             "`teacher_on_grid`: the same share for the Teacher's maps area-pooled to the model's grid (what a Student "
             "that copied the Teacher would show); `chance`: 1 / cells, the share if peaks were scattered uniformly. "
             "Flat maps (no peak) count against the share.", "",
             table.to_markdown(index=False, colalign=("left", *["right"] * 7), disable_numparse=True)]
    return "\n".join(lines) + "\n"


def _agreement_markdown(frame: pd.DataFrame) -> str:
    table = frame.pivot_table(index="method", columns="magnification", values="mean_correlation")
    table = table[sorted(table.columns, reverse=True)]
    cells = table.map(lambda v: "" if np.isnan(v) else f"{v:.3f}").rename(columns=lambda m: f"{m:g}x")
    lines = ["# Teacher-Student attention agreement", "",
             "Mean Pearson correlation between the Teacher's and the Student's AT+ map of each labelled test patch "
             "for its annotated class (1: the Student looks exactly where the Teacher looks).", "",
             cells.rename_axis(index="method", columns=None).to_markdown(
                 colalign=("left", *["right"] * len(cells.columns)), disable_numparse=True)]
    return "\n".join(lines) + "\n"


def _panel(patches, chosen, magnifications, teacher_maps, student_maps, correlations, shown, title, path, spikes):
    columns = len(magnifications) + 1 + len(shown)
    figure, axes = plt.subplots(max(1, len(chosen)), columns, figsize=(1.9 * columns, 2.35 * max(1, len(chosen))),
                                squeeze=False)
    for row, patch in enumerate(chosen):
        teacher_image = patches.images[magnification_name(magnifications[0])][patch]
        for column, magnification in enumerate(magnifications):
            axes[row, column].imshow(patches.images[magnification_name(magnification)][patch])
            axes[row, column].set_title(f"{magnification:g}x", fontsize=8)
        maps = [("Teacher AT+", teacher_maps[patch], None)] + [
            (name, student_maps[name][patch], correlations[name][patch]) for name in shown]
        for column, (name, attention, correlation) in enumerate(maps, start=len(magnifications)):
            axis = axes[row, column]
            axis.imshow(teacher_image)
            axis.imshow(minmax_normalise(attention[None])[0].numpy(), cmap="jet", alpha=0.5,
                        extent=(0, teacher_image.shape[1], teacher_image.shape[0], 0), interpolation="bilinear")
            axis.set_title(name, fontsize=8)
            if correlation is not None:
                share, cell = spikes[name]
                axis.set_xlabel(f"r = {correlation:.2f}, spike {share:.0%}", fontsize=8)
                if cell is not None:  # the modal cell, where this model's maps most often peak
                    height = teacher_image.shape[0] / attention.shape[0]
                    width = teacher_image.shape[1] / attention.shape[1]
                    axis.add_patch(plt.Rectangle((cell[1] * width, cell[0] * height), width, height, fill=False,
                                                 edgecolor="white", linestyle="--", linewidth=1))
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
