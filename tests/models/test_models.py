"""Model contract: ModelOutput, ordered features, output stride, local checkpoints."""

import pytest
import torch
import torchvision
from torch import nn

from wsidistill.models import MODELS, ModelOutput, build_model

torch.set_num_threads(2)


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param, 3).eval()


def test_every_model_returns_ordered_features_and_gap_linear_logits(built):
    name, model = built
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, ModelOutput)
    assert tuple(out.features) == model.feature_names
    sizes = [f.shape[-1] for f in out.features.values()]
    assert sizes == sorted(sizes, reverse=True), "features must run shallow to deep"
    last = out.features[model.feature_names[-1]]
    assert last.shape[:2] == (2, model.num_features)
    assert last.shape[-1] == 32 // model.output_stride
    assert isinstance(model.classifier, nn.Linear)
    expected = last.mean(dim=(2, 3)) @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(out.logits, expected)


def test_atplus_maps_of_nonnegative_features_commute_with_pooling(built):
    """``nonnegative_features``: the last block ends with a ReLU, so ``sum_k ReLU(a_k A_k) = sum_k ReLU(a_k) A_k`` is
    linear in A and the pooled map is the map of the pooled features (what a Teacher-target cache relies on to
    derive AT+ maps); VGG16's signed last block is not, and its maps do not commute."""
    from wsidistill.distill.attention import align_map, atplus_maps

    name, model = built
    with torch.no_grad():
        last = list(model(torch.randn(2, 3, 64, 64)).features.values())[-1]
    weight, (height, width) = model.classifier.weight, last.shape[-2:]
    pooled_map = align_map(atplus_maps(last, classifier_weight=weight), (height // 2, width // 2))
    derived = torch.einsum("ck,bkhw->bchw", weight.clamp(min=0) / (height * width), align_map(last, pooled_map.shape[-2:]))
    assert model.nonnegative_features == (name != "vgg16")
    if model.nonnegative_features:
        assert last.min() >= 0
        torch.testing.assert_close(derived, pooled_map, rtol=1e-5, atol=1e-7)
    else:
        assert last.min() < 0 and not torch.allclose(derived, pooled_map, rtol=1e-3)


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16])
def test_smallcnn_honours_output_stride(stride):
    model = build_model("smallcnn", 2, output_stride=stride)
    assert model.output_stride == stride
    out = model(torch.randn(1, 3, 32, 32))
    assert out.features["block4"].shape[-2:] == (32 // stride, 32 // stride)


def test_smallcnn_default_stride_is_8():
    assert build_model("smallcnn", 2).output_stride == 8


@pytest.mark.parametrize(("name", "stride"), [("smallcnn", 3), ("smallcnn", 32), ("vgg16", 8), ("resnet18", 16)])
def test_unsupported_output_stride_raises(name, stride):
    with pytest.raises(ValueError, match="output_stride|output stride"):
        build_model(name, 2, output_stride=stride)


def test_unknown_model_names_valid_ones():
    with pytest.raises(ValueError, match="smallcnn"):
        build_model("alexnet", 2)


@pytest.mark.parametrize("wrap", [False, True])
def test_pretrained_loads_local_checkpoint(tmp_path, wrap):
    torch.manual_seed(1)
    source = build_model("smallcnn", 3).eval()
    path = tmp_path / "model.pt"
    torch.save({"model": source.state_dict()} if wrap else source.state_dict(), path)
    loaded = build_model("smallcnn", 3, pretrained=path).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, source(x).logits)


def test_backbone_checkpoint_keeps_fresh_head_with_warning(tmp_path):
    source = build_model("smallcnn", 5)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier"):
        loaded = build_model("smallcnn", 3, pretrained=path)
    torch.testing.assert_close(loaded.stem[0].weight, source.stem[0].weight)
    assert loaded.classifier.out_features == 3


def test_checkpoint_missing_backbone_weights_raises(tmp_path):
    state = build_model("smallcnn", 3).state_dict()
    del state["blocks.3.0.0.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="blocks.3.0.0.weight"):
        build_model("smallcnn", 3, pretrained=path)


def test_torchvision_resnet18_state_dict_loads_into_backbone(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="fc"):
        model = build_model("resnet18", 4, pretrained=path)
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_torchvision_vgg16_feature_indices_load_into_backbone(tmp_path):
    config = torchvision.models.vgg.cfgs["D"]
    features = torchvision.models.vgg.make_layers(config)
    path = tmp_path / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = build_model("vgg16", 4, pretrained=path)
    torch.testing.assert_close(model.features[28].weight, features[28].weight)
    assert isinstance(model.features[28], nn.Conv2d), "block5 ends with the conv, as the reference's features[24:29]"
