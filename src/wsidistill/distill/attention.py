"""Attention maps of a network's activations: pure functions of tensors.

Shared by training (the maps the distillation terms match) and by the heatmap/report stages, so
that what is drawn is what was distilled. Shapes: features ``A`` are ``(B, K, H, W)``; class maps
are ``(B, C, H, W)`` for all ``C`` classes, or ``(B, 1, H, W)`` for one target class per sample.

Every map here is computed pointwise over the spatial grid (or by an input gradient), so it is
equivariant under flips and 90-degree rotations of the input whenever the network's features are;
the global min-max and L2 normalisations are invariant to such permutations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def minmax_normalise(x: Tensor, eps: float = 1e-8, start_dim: int = 1) -> Tensor:
    """Min-max normalisation ``(x - min) / (max - min + eps)`` over dims ``start_dim..``.

    ``start_dim=1`` scales each sample jointly over classes and space, as the AT+ reference code
    does (del Amor et al., EUSIPCO 2023); ``start_dim=2`` scales each (sample, class) map apart.
    """
    flat = x.flatten(start_dim)
    low = flat.min(dim=-1).values
    high = flat.max(dim=-1).values
    shape = low.shape + (1,) * (x.dim() - start_dim)
    return (x - low.view(shape)) / (high - low + eps).view(shape)


def align_map(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resample ``(B, C, H, W)`` maps (or features) to grid ``size`` ``(H', W')``: ``(B, C, H', W')``.

    Shrinking uses adaptive average pooling: each target cell averages the cells it covers, i.e. the
    Teacher's finer grid integrated over the Student's cell (exact area pooling when ``H / H'`` and
    ``W / W'`` are whole, as for every power-of-two stride here; overlapping windows otherwise).
    Enlarging uses bilinear interpolation (``align_corners=False``). A map already on ``size`` is
    returned as is.

    Resampling does **not** commute with normalisation: pooling lowers a map's maximum and raises its
    minimum, so min-max normalising and then pooling leaves the Student's grid a target that no longer
    spans ``[0, 1]`` (and L2-normalising then pooling a target of norm below 1). The losses therefore
    pool first, then normalise (:mod:`wsidistill.distill.losses`). Resampling is linear and maps
    constants to constants, so an already-normalised map becomes the pooled-then-normalised one only
    when normalised *again* after pooling.
    """
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def gradcam_weights(
    features: Tensor,
    *,
    classifier_weight: Tensor | None = None,
    logits: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Grad-CAM channel weights ``a_k^c = 1/(HW) sum_ij d y_c / d A_k(i, j)`` as ``(B|1, C, K)``.

    Closed form (``classifier_weight`` ``W`` of shape ``(C, K)``): when ``y = W GAP(A) + b``,
    ``d y_c / d A_k(i, j) = W[c, k] / (HW)`` at every position, hence ``a_k^c = W[c, k] / (HW)``:
    no backward pass, and differentiable in ``W``. Autograd (``logits`` computed from ``features``):
    one gradient per class, for any head; ``create_graph=True`` keeps the weights differentiable
    (double backpropagation), as the Student needs. Selvaraju et al., ICCV 2017, eq. 1.
    """
    if (classifier_weight is None) == (logits is None):
        raise ValueError("pass exactly one of classifier_weight (closed form) or logits (autograd)")
    if classifier_weight is not None:
        return (classifier_weight / (features.shape[-2] * features.shape[-1])).unsqueeze(0)
    grads = [
        torch.autograd.grad(logits[:, c].sum(), features, retain_graph=True, create_graph=create_graph)[0]
        for c in range(logits.shape[1])
    ]
    return torch.stack(grads, dim=1).mean(dim=(-2, -1))


def _select_target(weights: Tensor, target: Tensor | None) -> Tensor:
    """Keep all classes (``target`` None) or each sample's ``target`` class: ``(B, 1, K)``."""
    if target is None:
        return weights
    weights = weights.expand(target.shape[0], -1, -1)
    return weights.gather(1, target.view(-1, 1, 1).expand(-1, 1, weights.shape[-1]))


def _class_maps(combine):
    """Turn ``combine(weights (B|1, C|1, K), features (B, K, H, W)) -> (B, C|1, H, W)`` into a map function.

    The function returned takes ``features`` and the Grad-CAM weights' source (``classifier_weight`` or
    ``logits``, as in :func:`gradcam_weights`), keeps every class or each sample's ``target`` class, and
    combines weights and features as ``combine`` says; its name and docstring are ``combine``'s.
    """

    def maps(
        features: Tensor,
        *,
        classifier_weight: Tensor | None = None,
        logits: Tensor | None = None,
        target: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        weights = gradcam_weights(
            features, classifier_weight=classifier_weight, logits=logits, create_graph=create_graph
        )
        return combine(_select_target(weights, target), features)

    maps.__name__, maps.__qualname__, maps.__doc__ = combine.__name__, combine.__qualname__, combine.__doc__
    return maps


@_class_maps
def gradcam_maps(weights: Tensor, features: Tensor) -> Tensor:
    """Grad-CAM ``L^c = ReLU(sum_k a_k^c A_k)``: ReLU after the channel sum.

    ``gradcam_maps(features, *, classifier_weight=None, logits=None, target=None, create_graph=False)``:
    features ``(B, K, H, W)`` -> ``(B, C, H, W)``, or ``(B, 1, H, W)`` for each sample's ``target`` class.
    Selvaraju et al., "Grad-CAM", ICCV 2017, eq. 2. Weights as in :func:`gradcam_weights`.
    """
    return torch.relu(torch.einsum("bck,bkhw->bchw", weights, features))


@_class_maps
def atplus_maps(weights: Tensor, features: Tensor) -> Tensor:
    """AT+ map ``M^c = sum_k ReLU(a_k^c A_k)``: ReLU per channel, before the sum ("strictly positive").

    ``atplus_maps(features, *, classifier_weight=None, logits=None, target=None, create_graph=False)``:
    shapes and weights as :func:`gradcam_maps`.
    del Amor et al., "Attention to detail: inter-resolution knowledge distillation", EUSIPCO 2023.
    Computed without the ``(B, C, K, H, W)`` product through the identity
    ``ReLU(a A) = ReLU(a) ReLU(A) + ReLU(-a) ReLU(-A)``, i.e. two channel contractions.
    ``M^c >= ReLU(sum_k a_k^c A_k)`` (Grad-CAM), with equality when every ``a_k^c A_k >= 0``.
    """
    positive = torch.einsum("bck,bkhw->bchw", torch.relu(weights), torch.relu(features))
    negative = torch.einsum("bck,bkhw->bchw", torch.relu(-weights), torch.relu(-features))
    return positive + negative


def at_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention ``Q = vec(sum_k |A_k|^p) / ||vec(sum_k |A_k|^p)||_2`` as ``(B, 1, H, W)``.

    Zagoruyko & Komodakis, "Paying more attention to attention", ICLR 2017 (p = 2).
    """
    energy = features.abs().pow(p).sum(dim=1, keepdim=True)
    return F.normalize(energy.flatten(1), dim=1).view_as(energy)


def fma_map(features: Sequence[Tensor]) -> Tensor:
    """Feature-map average: channel mean of the first and of the last layer, then their mean.

    ``M = (mean_k A^first_k + mean_k A^last_k) / 2`` as ``(B, 1, H, W)`` on the last layer's grid
    (the first layer's mean map is resampled with :func:`align_map`).
    """
    first, last = features[0], features[-1]
    size = last.shape[-2:]
    return (align_map(first.mean(dim=1, keepdim=True), size) + last.mean(dim=1, keepdim=True)) / 2


def mip_map(features: Sequence[Tensor]) -> Tensor:
    """Maximum intensity projection: channel sum within each layer, then the maximum across layers.

    ``M = max_l sum_k A^l_k`` as ``(B, 1, H, W)`` on the last layer's grid (maps resampled with
    :func:`align_map`).
    """
    size = features[-1].shape[-2:]
    maps = [align_map(a.sum(dim=1, keepdim=True), size) for a in features]
    return torch.stack(maps, dim=0).amax(dim=0)


def saliency_map(
    logits: Tensor,
    images: Tensor,
    *,
    target: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Saliency ``S^c(i, j) = max_channel |d y_c / d x(channel, i, j)|`` as ``(B, C|1, H, W)``.

    Simonyan et al., "Deep inside convolutional networks", ICLR workshop 2014. ``logits`` must be
    computed from ``images`` (which require grad); ``create_graph=True`` keeps the map
    differentiable for the Student.
    """
    if target is None:
        scores = [logits[:, c].sum() for c in range(logits.shape[1])]
    else:
        scores = [logits.gather(1, target.view(-1, 1)).sum()]
    grads = [torch.autograd.grad(s, images, retain_graph=True, create_graph=create_graph)[0] for s in scores]
    return torch.stack([g.abs().amax(dim=1) for g in grads], dim=1)
