"""The trained model ``wsidistill predict`` applies, and what it needs to know from the checkpoint.

Every read of the checkpoint's metadata happens here (:meth:`PredictModel.load`), so a change of the
checkpoint format touches one function.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ..device import Runtime
from ..models.checkpoint import CheckpointError, ModelMeta, load_model, model_view


@dataclass(frozen=True)
class PredictModel:
    """A trained Teacher or Student, ready for inference.

    ``input_magnification`` is the objective magnification of the patches the network reads and
    ``patch_side`` their side in pixels there; ``magnification`` is the one it was trained for (they
    differ only for an upsampled Student, which reads Teacher-magnification patches).
    """

    path: str
    network: torch.nn.Module
    classes: tuple[str, ...]
    arch: str
    method: str
    seed: int | None
    magnification: float
    input_magnification: float
    patch_side: int
    _meta: ModelMeta

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> PredictModel:
        """Load ``path``; raises :class:`CheckpointError` naming the file when it is not a model checkpoint."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: model checkpoint not found. Give the model.pt a training rule wrote "
                                  "(results/models/NAME/seedN/model.pt).")
        try:
            network, meta = load_model(path, runtime)
            return cls(path=str(path), network=network, classes=tuple(meta.classes), arch=meta.arch,
                       method=meta.method or "unknown", seed=meta.seed,
                       magnification=float(meta.magnification),
                       input_magnification=float(meta.input_magnification),
                       patch_side=int(meta.patch_side), _meta=meta)
        except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError, ValueError, AttributeError,
                IndexError) as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise CheckpointError(f"{path}: not a wsidistill model checkpoint ({reason}). Give the model.pt that "
                                  "`wsidistill train-teacher` or `wsidistill distill` wrote.") from err

    def view(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch as the network saw its training input (:func:`wsidistill.models.checkpoint.model_view`)."""
        return model_view(batch, self._meta)
