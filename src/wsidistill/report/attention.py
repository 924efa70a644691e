"""Does the Student look where the Teacher looks?  AT+ maps side by side, and their agreement.

Maps come from :func:`wsidistill.distill.attention.atplus_maps`, the same
function training matched, for each patch's annotated class.  The Teacher's
map is area-resampled onto the Student's grid, both are min-max normalised, and
their agreement is the Pearson correlation over the grid: the quantitative form
of the paper's qualitative attention figure.
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


def attention_study(teacher_path, students: dict[str, str | Path], stores: list[str | Path], out_dir: str | Path,
                    *, panel_students: list[str], samples_per_class: int = 3, seed: int = 0) -> pd.DataFrame:
    """Write the agreement table (CSV, Markdown) and one attention panel PNG per class."""
    out_dir = Path(out_dir)
    teacher, teacher_meta = load_model(teacher_path)
    models = {name: load_model(path) for name, path in students.items()}
    magnifications = sorted({teacher_meta.input_magnification} | {m.input_magnification for _, m in models.values()},
                            reverse=True)
    patches = load_patches(stores, magnifications)
    classes = teacher_meta.classes
    teacher_maps = class_attention(teacher, teacher_meta,
                                   patches.images[magnification_name(teacher_meta.input_magnification)], patches.labels)
    rows, student_maps, correlations = [], {}, {}
    for name, (model, meta) in models.items():
        maps = class_attention(model, meta, patches.images[magnification_name(meta.input_magnification)],
                               patches.labels)
        student_maps[name], correlations[name] = maps, map_correlation(maps, teacher_maps)
        rows.append({"model": name, "method": meta.method, "magnification": meta.magnification,
                     "patches": len(maps), "grid": f"{maps.shape[-2]}x{maps.shape[-1]}",
                     "mean_correlation": float(np.nanmean(correlations[name])) if len(maps) else float("nan"),
                     "std_correlation": float(np.nanstd(correlations[name])) if len(maps) else float("nan")})
    frame = pd.DataFrame(rows).sort_values(["magnification", "method"], ascending=[False, True])
    write_text(out_dir / "agreement.csv", frame.to_csv(index=False))
    write_text(out_dir / "agreement.md", _agreement_markdown(frame))

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        rows_of_class = np.flatnonzero(patches.labels == index)
        chosen = np.sort(rng.choice(rows_of_class, min(samples_per_class, len(rows_of_class)), replace=False))
        _panel(patches, chosen, magnifications, teacher_maps, student_maps, correlations,
               [p for p in panel_students if p in models], f"{name}: Teacher vs Student AT+ attention",
               out_dir / f"{name}.png")
    return frame


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


def _panel(patches, chosen, magnifications, teacher_maps, student_maps, correlations, shown, title, path):
    columns = len(magnifications) + 1 + len(shown)
    figure, axes = plt.subplots(max(1, len(chosen)), columns, figsize=(1.9 * columns, 2.1 * max(1, len(chosen))),
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
                axis.set_xlabel(f"r = {correlation:.2f}", fontsize=8)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
