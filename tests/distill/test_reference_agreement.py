"""Agreement with the reference formulation of del Amor et al. (EUSIPCO 2023).

VGG16 Teacher and Student (five conv blocks, GAP, linear head) with fixed random weights, a fixed
batch, and the reference's Student input: Teacher patches average-pooled by the magnification
factor, then bilinearly upsampled (corners aligned) back to the Teacher's size. The reference
quantities are written out below from the paper's definitions.
"""

import pytest
import torch
from torch import nn

from wsidistill.distill import Distiller, student_input_from, teacher_targets
from wsidistill.models import build_model

NUM_CLASSES = 4
FACTOR = 4


def reference_forward(model, x):
    """Last conv block A (pre-pool) and logits y = W GAP(A) + b."""
    features = model.forward_features(x)["block5"]
    return features, model.classifier(features.mean(dim=(2, 3)))


def reference_atplus_maps(features, logits, create_graph):
    """Per class c: a_k = mean_ij d(sum_b y_c)/dA_k(i,j); M_c = sum_k ReLU(a_k A_k); maps stacked."""
    maps = []
    for c in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=True, create_graph=create_graph)
        a = grad.mean(dim=(2, 3))[:, :, None, None]
        maps.append(torch.relu(a * features).sum(dim=1))
    return torch.stack(maps, dim=1)


def reference_minmax(m):
    """(m - min) / (max - min), min and max over each sample's whole map stack."""
    flat = m.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    return (m - low[:, None, None, None]) / (high - low)[:, None, None, None]


def test_atplus_fm_kd_sr_equal_the_reference_formulas():
    torch.manual_seed(0)
    teacher = build_model("vgg16", NUM_CLASSES).double().eval()
    student = build_model("vgg16", NUM_CLASSES).double()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([1, 3])

    # Reference Student input: AvgPool2d(factor), then UpsamplingBilinear2d to the Teacher size.
    reference_input = nn.UpsamplingBilinear2d(size=32)(nn.AvgPool2d(FACTOR)(images))
    student_input = student_input_from(images, "upsampled", FACTOR)
    torch.testing.assert_close(student_input, reference_input)

    feat_t, logits_t = reference_forward(teacher, images)
    feat_s, logits_s = reference_forward(student, reference_input)
    feat_t, logits_t_detached = feat_t.detach(), logits_t.detach()

    maps_t = reference_atplus_maps(feat_t.requires_grad_(True), teacher.classifier(feat_t.mean(dim=(2, 3))), False)
    maps_s = reference_atplus_maps(feat_s, logits_s, True)
    diff = reference_minmax(maps_s) - reference_minmax(maps_t.detach())
    atplus = diff.pow(2).flatten(1).mean(dim=1).sqrt().mean()
    fm = (feat_s - feat_t).pow(2).mean().sqrt()
    p_t = torch.softmax(logits_t_detached, dim=1)
    kd = (-(p_t * torch.log_softmax(logits_s, dim=1)).sum(dim=1)).mean()
    sr = (teacher.classifier(feat_s.mean(dim=(2, 3))) - logits_t_detached).pow(2).mean().sqrt()

    distiller = Distiller(
        student,
        {"ce": 1.0, "kd_ref": 1.0, "fm": 0.1, "atplus": 10.0, "sr": 1.0},
        teacher=teacher,
        num_classes=NUM_CLASSES,
    )
    total, logs = distiller(student_input, labels, teacher_targets(teacher, images, distiller.terms))

    for name, reference in {"atplus": atplus, "fm": fm, "kd_ref": kd, "sr": sr}.items():
        assert reference.item() > 1e-3, f"degenerate reference value for {name}"
        assert logs[name] == pytest.approx(reference.item(), abs=1e-5), name
    ce = nn.CrossEntropyLoss()(logits_s, labels)
    expected_total = ce + kd + 0.1 * fm + 10.0 * atplus + sr
    assert total.item() == pytest.approx(expected_total.item(), abs=1e-5)

    # The Student receives the reference's AT+ gradient (double backpropagation vs closed form).
    params = [student.classifier.weight, student.features[28].weight, student.features[0].weight]
    reference_grads = torch.autograd.grad(atplus, params)
    atplus_only = Distiller(student, {"atplus": 1.0}, teacher=teacher, num_classes=NUM_CLASSES, options={"eps": 0.0})
    ours, _ = atplus_only(student_input, labels, teacher_targets(teacher, images, ["atplus"]))
    for ours_grad, reference_grad in zip(torch.autograd.grad(ours, params), reference_grads):
        assert reference_grad.abs().sum() > 0
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-6, atol=1e-9)
