from pathlib import Path

import pytest
import torch

CLASSES = ("NC", "G3", "G4", "G5")
CLASS_MAP = {"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"}
TEACHER_MAGNIFICATION = 40
PATCH_SIZE = 128  # px at 40x: 16 px at 5x


def save_checkpoint(path: Path, magnification: float, *, arch: str = "smallcnn", seed: int = 0,
                    patch_size: int = PATCH_SIZE, fit_on: Path | None = None, steps: int = 40) -> Path:
    """A model saved as training saves it (state_dict + meta), native input, with the Student stride rule.

    Randomly initialised, or with ``fit_on`` a patch store: ``steps`` full-batch Adam steps of
    cross-entropy on its labelled patches at ``magnification``, then batch norm's statistics recomputed
    on them (a few steps' running averages would collapse eval-mode predictions to one class): confident,
    class-varying predictions (a random network's near-uniform probabilities flip class on rounding noise).
    """
    from wsidistill.models import build_model
    from wsidistill.models.checkpoint import student_output_stride
    from wsidistill.patches.dataset import load_patches, to_tensor
    from wsidistill.slides.grid import magnification_name

    torch.manual_seed(seed)
    teacher = magnification == TEACHER_MAGNIFICATION
    side = int(patch_size * magnification / TEACHER_MAGNIFICATION)
    stride = None if teacher else student_output_stride(arch, magnification, TEACHER_MAGNIFICATION, side=side)
    model = build_model(arch, len(CLASSES), output_stride=stride)
    if fit_on is not None:
        patches = load_patches([fit_on], [magnification])
        images = to_tensor(patches.images[magnification_name(magnification)])
        labels = torch.from_numpy(patches.labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(images).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for module in model.modules():  # batch statistics of the whole store, not a few steps' running average
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        with torch.no_grad():
            model(images)
        model.eval()
    meta = {
        "arch": arch, "pretrained": None, "num_classes": len(CLASSES), "classes": list(CLASSES),
        "magnification": magnification, "teacher_magnification": TEACHER_MAGNIFICATION, "output_stride": stride,
        "input_magnification": magnification, "patch_side": side,
        "student_input": "native", "student_grid": None if teacher else "native", "teacher_cache": None, "method": "teacher" if teacher else "ce",
        "weights": {"ce": 1.0}, "seed": seed, "best_epoch": 0, "val_kappa": 0.0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


@pytest.fixture(scope="session")
def make_checkpoint():
    """:func:`save_checkpoint`: test modules run in importlib mode and cannot import conftest."""
    return save_checkpoint


@pytest.fixture(scope="session")
def test_slide(tmp_path_factory) -> dict[str, Path]:
    """One demo SVS (40x, pyramid 40/10/2.5x) with its annotations and its patch store at 40/20/10/5x."""
    from wsidistill.demo import plan_cohort, write_slide
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    root = tmp_path_factory.mktemp("predict_slide")
    slide = next(s for s in plan_cohort(6, 1) if s.split == "test")
    files = write_slide(slide, root, width=2048, height=1536)
    settings = ExtractionSettings(classes=CLASSES, class_map=CLASS_MAP, magnifications=(40, 20, 10, 5),
                                  teacher_magnification=TEACHER_MAGNIFICATION, patch_size=PATCH_SIZE)
    store = root / f"{slide.slide_id}.zarr"
    extract_slide(files["slide"], store, settings, slide_id=slide.slide_id, annotations=files["annotations"],
                  progress=False)
    return {**files, "store": store, "slide_id": slide.slide_id}
