"""Distillation loss terms: one small pure function per term.

Conventions: Student tensors carry gradients; Teacher tensors are detached here (the Teacher is
never trained). A Teacher map or feature on another grid is first resampled to the Student's grid
with :func:`~wsidistill.distill.attention.align_map` (area average when shrinking, bilinear when
enlarging) and only then normalised: pool, then min-max (or L2). The two orders differ (see
:func:`~wsidistill.distill.attention.align_map`), and pool-then-normalise is the one that gives the
Student's grid a full ``[0, 1]`` target. Teacher targets therefore stay on the Teacher's own grid
(and in the Teacher-target cache) and every loss here pools them to whichever Student it meets.

Every root of a mean square goes through :func:`safe_sqrt`, so a term whose Student already matches
its target (identical maps, a flat map, a 1x1 grid) has a zero gradient, not NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import align_map, minmax_normalise

Match = Literal["l2", "bce", "dice"]
#: How AT+ normalises each map before matching (:func:`normalise_map`).
Normalise = Literal["minmax", "l2", "sum", "pearson"]
NORMALISATIONS: tuple[str, ...] = ("minmax", "l2", "sum", "pearson")


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0``, exact in value, with gradient 0 (not ``inf``) where ``x == 0``.

    ``d sqrt(x) / dx = 1 / (2 sqrt(x))`` is infinite at 0, and autograd multiplies it by the zero
    gradient of the mean square there, giving ``0 * inf = NaN`` whenever the Student matches its
    target exactly (identical maps, flat maps, a 1x1 grid after min-max). An ``eps`` inside the root
    would also avoid it but biases every value by up to ``sqrt(eps)``; instead the root is taken of
    1 where ``x == 0`` and masked back to 0 (the "double where"), so values are untouched and the
    gradient at 0 is 0: a valid subgradient of the RMSE (a norm) at its minimum. Works under double
    backpropagation too.
    """
    positive = x > 0
    root = torch.where(positive, x, torch.ones_like(x)).sqrt()
    return torch.where(positive, root, torch.zeros_like(x))


def rmse(student: Tensor, teacher: Tensor) -> Tensor:
    """Root mean squared error over all elements: ``sqrt(mean((s - t)^2))`` (root by :func:`safe_sqrt`)."""
    return safe_sqrt((student - teacher).pow(2).mean())


def rmse_per_sample(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-sample RMSE averaged over the batch: ``mean_b sqrt(mean_{c,i,j}(s_b - t_b)^2)`` (:func:`safe_sqrt`)."""
    return safe_sqrt((student - teacher).pow(2).flatten(1).mean(dim=1)).mean()


def ce(
    logits: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy ``-sum_c q_c w_c log softmax(z)_c`` with ``q = (1 - e) onehot(y) + e / C``.

    Label smoothing: Szegedy et al., "Rethinking the Inception architecture", CVPR 2016. With
    class weights the batch mean is normalised by the weights of the samples' labels (PyTorch).
    """
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)


def kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    t2_scaling: bool = True,
    form: Literal["kl", "cross_entropy"] = "kl",
) -> Tensor:
    """Knowledge distillation on softened probabilities ``p = softmax(z / T)``.

    ``form="kl"``: ``T^2 KL(p_t || p_s)``, batch mean (zero when the Student matches).
    ``form="cross_entropy"``: ``T^2 sum_c -p_t,c log p_s,c``, Hinton's soft-target cross-entropy,
    which exceeds the KL by the Teacher's entropy (same gradients). ``t2_scaling=False`` drops the
    ``T^2``; the reference code uses ``T=1``, cross-entropy, no ``T^2``.
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015.
    """
    teacher_p = torch.softmax(teacher_logits.detach() / temperature, dim=1)
    student_logp = torch.log_softmax(student_logits / temperature, dim=1)
    loss = -(teacher_p * student_logp).sum(dim=1)
    if form == "kl":
        loss = loss + (teacher_p * torch.log_softmax(teacher_logits.detach() / temperature, dim=1)).sum(dim=1)
    elif form != "cross_entropy":
        raise ValueError(f"kd form must be 'kl' or 'cross_entropy', got {form!r}")
    return loss.mean() * (temperature**2 if t2_scaling else 1.0)


def kd_ref(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """The AT+ reference code's knowledge distillation: ``mean_b sum_c -softmax(z_t)_c log softmax(z_s)_c``.

    ``(B, C)`` logits in, a scalar out. Temperature 1, the Teacher's soft targets against the
    Student's log-probabilities, no ``T^2`` factor: :func:`kd` with ``temperature=1``,
    ``t2_scaling=False``, ``form="cross_entropy"``. Not zero when the Student matches (it includes
    the Teacher's entropy); its gradient is that of the KL. Source: github.com/cvblab/kd_resolution,
    main.py (``alpha_kd`` branch) of del Amor et al., EUSIPCO 2023. Beside it, ``kd`` defaults to
    Hinton et al. (2015): ``T = 4``, KL, ``x T^2``.
    """
    return kd(student_logits, teacher_logits, temperature=1.0, t2_scaling=False, form="cross_entropy")


def fm(student_features: Tensor, teacher_features: Tensor, *, regressor: nn.Module | None = None) -> Tensor:
    """Feature matching: RMSE between last-block features, ``sqrt(mean((r(F_s) - F_t)^2))``.

    As in the AT+ reference code (del Amor et al., EUSIPCO 2023). When channel counts differ, ``r``
    is a learned 1x1 convolution (FitNets hint regressor: Romero et al., ICLR 2015); otherwise the
    identity. The Teacher features ``(B, K_t, H_t, W_t)`` are area-pooled to the Student's grid
    ``(H_s, W_s)`` (features are not normalised).
    """
    if regressor is not None:
        student_features = regressor(student_features)
    teacher_features = align_map(teacher_features.detach(), student_features.shape[-2:])
    return rmse(student_features, teacher_features)


def _normalised_map_rmse(student_map: Tensor, teacher_map: Tensor, start_dim: int, eps: float) -> Tensor:
    """Per-sample RMSE of min-max normalised maps: the Teacher's pooled to the Student's grid, then normalised."""
    teacher_map = align_map(teacher_map.detach(), student_map.shape[-2:])
    return rmse_per_sample(
        minmax_normalise(student_map, eps, start_dim), minmax_normalise(teacher_map, eps, start_dim)
    )


def normalise_map(x: Tensor, normalise: Normalise = "minmax", *, eps: float = 1e-8, start_dim: int = 1) -> Tensor:
    """Normalise maps ``x`` over dims ``start_dim..`` (``n`` elements per group); same shape out.

    ``"minmax"``: ``(x - min) / (max - min + eps)`` (del Amor et al., EUSIPCO 2023).
    ``"l2"``: ``x / (sqrt(mean x^2) + eps)``, unit root mean square: the L2 normalisation of
    attention transfer (Zagoruyko & Komodakis, ICLR 2017) times ``sqrt(n)``, so values are of order
    1 like min-max ones and an AT+ weight carries over. ``"sum"``: ``x / (mean x + eps)``, unit
    mean: the sum normalisation times ``n`` (AT+ maps are non-negative). ``"pearson"``: the z-score
    ``(x - mean x) / (sqrt(mean (x - mean x)^2) + eps)``; the mean of a product of two z-scores is
    their Pearson correlation. l2, sum and pearson are scale-free (``N(a x) = N(x)`` for ``a > 0``)
    and map every constant map to one map (ones; zeros for pearson). Roots by :func:`safe_sqrt`.
    """
    if normalise == "minmax":
        return minmax_normalise(x, eps, start_dim)
    shape = x.shape[:start_dim] + (1,) * (x.dim() - start_dim)
    flat = x.flatten(start_dim)
    if normalise == "l2":
        return x / (safe_sqrt(flat.pow(2).mean(dim=-1)) + eps).view(shape)
    if normalise == "sum":
        return x / (flat.mean(dim=-1) + eps).view(shape)
    if normalise == "pearson":
        centred = x - flat.mean(dim=-1).view(shape)
        return centred / (safe_sqrt(centred.flatten(start_dim).pow(2).mean(dim=-1)) + eps).view(shape)
    raise ValueError(f"AT+ normalisation must be one of {list(NORMALISATIONS)}, got {normalise!r}")


def atplus(
    student_map: Tensor,
    teacher_map: Tensor,
    *,
    start_dim: int = 1,
    eps: float = 1e-8,
    normalise: Normalise = "minmax",
) -> Tensor:
    """AT+ on AT+ maps ``(B, C, H, W)`` (the Teacher's pooled to the Student's grid, then normalised).

    ``normalise="minmax"`` (the paper): ``mean_b sqrt(mean_{c,i,j} (N(M_s) - N(M_t))^2)``, ``N``
    min-max per sample over classes and space (``start_dim=1``, the reference code) or per sample
    and class (``start_dim=2``). del Amor et al., "Attention to detail: inter-resolution knowledge
    distillation", EUSIPCO 2023.

    Min-max forces one cell of every normalised Student map to 1: a Student that cannot tell where
    the Teacher looks does best with a fixed spike where Teacher maps are often high, not with the
    mean map. The scale-free forms (:func:`normalise_map`) remove that incentive; an extension of the
    paper, not in it. ``"l2"`` and ``"sum"``: the same per-sample RMSE on unit-RMS or unit-mean maps.
    ``"pearson"``: ``1 - mean r``, ``r`` the Pearson correlation of Student and Teacher map per
    sample (per sample and class with ``start_dim=2``). For each, the input-independent map with the
    lowest expected squared loss is the mean normalised Teacher map (for l2 and pearson up to
    scale), and every constant map scores the same.
    """
    teacher_map = align_map(teacher_map.detach(), student_map.shape[-2:])
    student = normalise_map(student_map, normalise, eps=eps, start_dim=start_dim)
    teacher = normalise_map(teacher_map, normalise, eps=eps, start_dim=start_dim)
    if normalise == "pearson":
        return 1 - (student * teacher).flatten(start_dim).mean(dim=-1).mean()
    return rmse_per_sample(student, teacher)


def gradcam(student_map: Tensor, teacher_map: Tensor, *, start_dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Grad-CAM matching: the AT+ loss on Grad-CAM maps (ReLU after the channel sum).

    Maps: Selvaraju et al., ICCV 2017; matching as in del Amor et al., EUSIPCO 2023.
    """
    return _normalised_map_rmse(student_map, teacher_map, start_dim, eps)


def at(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """Attention transfer: ``mean_b || Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2 ||_2`` on ``at_map`` outputs.

    Zagoruyko & Komodakis, "Paying more attention to attention", ICLR 2017. The Teacher's map is
    pooled to the Student's grid, then L2-normalised again (pooling an L2-normalised map does not
    leave it of unit norm).
    """
    teacher_map = align_map(teacher_map.detach(), student_map.shape[-2:])
    student_q = F.normalize(student_map.flatten(1), dim=1)
    teacher_q = F.normalize(teacher_map.flatten(1), dim=1)
    return (student_q - teacher_q).norm(dim=1).mean()


def sr(
    student_pooled: Tensor,
    teacher_logits: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    *,
    regressor: nn.Module | None = None,
) -> Tensor:
    """Softmax regression: the Student's pooled feature through the frozen Teacher classifier.

    ``sqrt(mean((W_t r(GAP(F_s)) + b_t - z_t)^2))``, ``r`` a learned linear map when channel
    counts differ (else identity). Yang et al., "Knowledge distillation via softmax regression
    representation learning", ICLR 2021; RMSE and the "last" variant as in the AT+ reference code.
    """
    if regressor is not None:
        student_pooled = regressor(student_pooled)
    logits = F.linear(student_pooled, teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach())
    return rmse(logits, teacher_logits.detach())


def match_maps(
    student_map: Tensor, teacher_map: Tensor, *, match: Match = "l2", eps: float = 1e-8
) -> Tensor:
    """Match ``(B, C, H, W)`` maps after per-sample-and-map min-max normalisation ``N``, the
    Teacher's map pooled to the Student's grid first.

    ``"l2"``: per-sample RMSE. ``"bce"``: ``-mean(N_t log N_s + (1 - N_t) log(1 - N_s))``.
    ``"dice"``: soft Dice ``1 - mean_{b,c} (2 sum N_s N_t + eps) / (sum N_s + sum N_t + eps)``
    (Milletari et al., V-Net, 3DV 2016): the Teacher's normalised map as a soft segmentation target.
    """
    teacher = minmax_normalise(align_map(teacher_map.detach(), student_map.shape[-2:]), eps, start_dim=2)
    student = minmax_normalise(student_map, eps, start_dim=2)
    if match == "l2":
        return rmse_per_sample(student, teacher)
    if match == "bce":
        return F.binary_cross_entropy(student.clamp(eps, 1 - eps), teacher)
    if match == "dice":
        overlap = (student * teacher).flatten(2).sum(dim=2)
        total = student.flatten(2).sum(dim=2) + teacher.flatten(2).sum(dim=2)
        return 1 - ((2 * overlap + eps) / (total + eps)).mean()
    raise ValueError(f"map match must be 'l2', 'bce' or 'dice', got {match!r}")


def fma(student_map: Tensor, teacher_map: Tensor, *, match: Match = "l2", eps: float = 1e-8) -> Tensor:
    """Feature-map-average matching (maps from :func:`~wsidistill.distill.attention.fma_map`)."""
    return match_maps(student_map, teacher_map, match=match, eps=eps)


def mip(student_map: Tensor, teacher_map: Tensor, *, match: Match = "l2", eps: float = 1e-8) -> Tensor:
    """Maximum-intensity-projection matching (maps from :func:`~wsidistill.distill.attention.mip_map`)."""
    return match_maps(student_map, teacher_map, match=match, eps=eps)


def saliency(student_map: Tensor, teacher_map: Tensor, *, match: Match = "l2", eps: float = 1e-8) -> Tensor:
    """Saliency matching (maps from :func:`~wsidistill.distill.attention.saliency_map`), the
    Teacher's input-resolution map area-averaged to the Student's input grid."""
    return match_maps(student_map, teacher_map, match=match, eps=eps)
