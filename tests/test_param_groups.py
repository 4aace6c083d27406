"""Freezing and optimizer parameter groups on a tiny ViT and a tiny ResNet."""

import pytest
import torch

from tl_hub.backbone import load_backbone
from tl_hub.errors import ConfigError
from tl_hub.param_groups import (
    count_parameters,
    discriminative_param_groups,
    freeze_all_but,
    full_param_groups,
    group_depths,
    groups_to_unfreeze,
    head_param_groups,
    layer_decay_param_groups,
    no_weight_decay,
)

LR, WD = 1e-3, 0.05
ARCHS = ["vit", "resnet"]


@pytest.fixture(params=ARCHS, ids=ARCHS)
def backbone(request, tiny_model_dir):
    """A freshly loaded backbone (tests change requires_grad, so not shared)."""
    return load_backbone(tiny_model_dir(request.param), ["a", "b", "c"])


def _names(model):
    return {id(p): n for n, p in model.named_parameters()}


def _group_prefix(group):
    return group["name"].rsplit("/", 1)[0]


def _all_params(groups):
    return [p for g in groups for p in g["params"]]


def test_group_depths(backbone):
    parts = backbone.parts
    n = len(parts.blocks)
    depths = group_depths(parts)
    assert depths[f"block.{n - 1}"] == 1
    assert depths["block.0"] == n
    assert depths["embeddings"] == n + 1
    expected = {f"block.{i}": n - i for i in range(n)}
    expected["embeddings"] = n + 1
    if any(g.kind == "norm" for g in parts.groups):
        expected["norm"] = 1
    assert depths == expected


def test_groups_to_unfreeze(backbone):
    parts = backbone.parts
    n = len(parts.blocks)
    has_norm = any(g.kind == "norm" for g in parts.groups)
    assert groups_to_unfreeze(parts, "all") == list(parts.groups)
    assert groups_to_unfreeze(parts) == list(parts.groups)
    top = [g.name for g in groups_to_unfreeze(parts, 1)]
    assert top == [f"block.{n - 1}"] + (["norm"] if has_norm else [])
    two = [g.name for g in groups_to_unfreeze(parts, 2)]
    assert two == [f"block.{n - 2}", f"block.{n - 1}"] + (["norm"] if has_norm else [])
    every_block = [g.name for g in groups_to_unfreeze(parts, n)]
    assert "embeddings" not in every_block
    assert every_block == [g.name for g in parts.groups if g.kind != "embeddings"]

    with pytest.raises(ConfigError) as info:
        groups_to_unfreeze(parts, n + 1)
    msg = str(info.value)
    assert f"only {n} encoder blocks" in msg and f"up to {n}" in msg and "'all'" in msg
    for bad in (0, -1, "two"):
        with pytest.raises(ConfigError) as info:
            groups_to_unfreeze(parts, bad)
        assert "'all' or a positive number" in str(info.value)


def test_head_param_groups_only_head(backbone):
    model, parts = backbone.model, backbone.parts
    groups = head_param_groups(model, parts, LR, WD)
    names = _names(model)
    got = [names[id(p)] for p in _all_params(groups)]
    assert sorted(got) == sorted(parts.head_params(model))
    assert all(n.startswith("classifier.") for n in got)
    for g in groups:
        assert g["name"].startswith("head/")
        assert g["lr"] == LR and g["lr_scale"] == 1.0


def test_discriminative_param_groups_lrs(backbone):
    model, parts = backbone.model, backbone.parts
    ratio = 0.1
    groups = discriminative_param_groups(model, parts, LR, ratio, WD)
    assert any(g["name"].startswith("head/") for g in groups)
    pretrained_prefixes = set()
    for g in groups:
        if g["name"].startswith("head/"):
            assert g["lr"] == LR and g["lr_scale"] == 1.0
        else:
            assert g["lr"] == pytest.approx(LR * ratio)
            assert g["lr_scale"] == ratio
            pretrained_prefixes.add(_group_prefix(g))
    assert pretrained_prefixes == {g.name for g in parts.groups}


def test_layer_decay_param_groups_lrs(backbone):
    model, parts = backbone.model, backbone.parts
    decay = 0.5
    depths = group_depths(parts)
    groups = layer_decay_param_groups(model, parts, LR, decay, WD)
    seen = set()
    for g in groups:
        prefix = _group_prefix(g)
        if prefix == "head":
            assert g["lr"] == LR and g["lr_scale"] == 1.0
            continue
        seen.add(prefix)
        assert g["lr"] == pytest.approx(LR * decay ** depths[prefix])
        assert g["lr_scale"] == pytest.approx(decay ** depths[prefix])
    assert seen == set(depths)
    n = len(parts.blocks)
    by_prefix = {_group_prefix(g): g["lr"] for g in groups}
    assert by_prefix["embeddings"] == pytest.approx(LR * decay ** (n + 1))
    assert by_prefix[f"block.{n - 1}"] == pytest.approx(LR * decay)
    assert by_prefix["block.0"] < by_prefix[f"block.{n - 1}"] < by_prefix["head"]


@pytest.mark.parametrize("make", ["discriminative", "layer_decay", "full"])
def test_weight_decay_and_every_param_once(backbone, make):
    model, parts = backbone.model, backbone.parts
    if make == "discriminative":
        groups = discriminative_param_groups(model, parts, LR, 0.1, WD)
    elif make == "layer_decay":
        groups = layer_decay_param_groups(model, parts, LR, 0.7, WD)
    else:
        groups = full_param_groups(model, LR, WD)
    names = _names(model)
    params = _all_params(groups)
    assert len(params) == len({id(p) for p in params}), "a parameter is in two groups"
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}

    wd_of = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith(".bias") or p.ndim <= 1 or "cls_token" in name or "position_embeddings" in name:
            assert wd_of[name] == 0.0, name
        else:
            assert p.ndim >= 2
            assert wd_of[name] == WD, name
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith("/no_decay") else WD)
    if backbone.source.endswith("vit"):
        for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "vit.layernorm.weight",
                     "vit.layernorm.bias", "classifier.bias"):
            assert wd_of[name] == 0.0, name
        assert model.get_parameter("vit.embeddings.cls_token").ndim == 3  # decayed by ndim alone otherwise
        assert wd_of["vit.embeddings.patch_embeddings.projection.weight"] == WD
        assert wd_of["classifier.weight"] == WD
    if make == "full":
        assert all(g["lr"] == LR and g["lr_scale"] == 1.0 for g in groups)


def test_no_weight_decay_rule():
    assert no_weight_decay("blocks.0.fc.bias", torch.zeros(4))
    assert no_weight_decay("norm.weight", torch.ones(4))
    assert no_weight_decay("embeddings.cls_token", torch.zeros(1, 1, 4))
    assert no_weight_decay("embeddings.position_embeddings", torch.zeros(1, 5, 4))
    assert no_weight_decay("layers.0.attention.relative_position_bias_table", torch.zeros(9, 2))
    assert not no_weight_decay("blocks.0.fc.weight", torch.zeros(4, 4))
    assert not no_weight_decay("embeddings.patch.weight", torch.zeros(4, 3, 2, 2))


def test_unfreeze_top_block_groups_and_freeze_all_but(backbone):
    model, parts = backbone.model, backbone.parts
    groups = discriminative_param_groups(model, parts, LR, 0.1, WD, unfreeze=1)
    names = _names(model)
    expected = set(parts.head_params(model))
    for g in groups_to_unfreeze(parts, 1):
        expected |= set(g.params)
    got = [names[id(p)] for p in _all_params(groups)]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert not any(n in got for n in parts.group("embeddings").params)
    assert not any(n in got for n in parts.group("block.0").params)

    freeze_all_but(model, groups)
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in expected), name

    counts = count_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(model.get_parameter(n).numel() for n in expected)
    assert counts == {"trainable": trainable, "frozen": total - trainable, "total": total}
    assert 0 < counts["trainable"] < counts["total"]

    # and back: everything trainable again
    freeze_all_but(model, full_param_groups(model, LR))
    assert all(p.requires_grad for p in model.parameters())
    assert count_parameters(model)["frozen"] == 0


def test_head_only_freezes_encoder(backbone):
    model, parts = backbone.model, backbone.parts
    freeze_all_but(model, head_param_groups(model, parts, LR))
    head = set(parts.head_params(model))
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in head)
    counts = count_parameters(model)
    assert counts["trainable"] == sum(model.get_parameter(n).numel() for n in head)
    assert counts["trainable"] + counts["frozen"] == counts["total"]


def test_adamw_reads_back_group_lrs(backbone):
    model, parts = backbone.model, backbone.parts
    decay = 0.6
    groups = layer_decay_param_groups(model, parts, LR, decay, WD, unfreeze=2)
    depths = group_depths(parts)
    optimizer = torch.optim.AdamW(groups, lr=123.0, weight_decay=0.9)  # defaults must not override the groups
    assert len(optimizer.param_groups) == len(groups)
    for pg in optimizer.param_groups:
        prefix = _group_prefix(pg)
        expected = LR if prefix == "head" else LR * decay ** depths[prefix]
        assert pg["lr"] == pytest.approx(expected)
        assert pg["weight_decay"] == (0.0 if pg["name"].endswith("/no_decay") else WD)
        assert prefix != "embeddings"

    disc = torch.optim.AdamW(discriminative_param_groups(model, parts, LR, 0.25, WD), lr=123.0)
    lrs = {_group_prefix(pg): pg["lr"] for pg in disc.param_groups}
    assert lrs["head"] == pytest.approx(LR)
    assert all(lr == pytest.approx(LR * 0.25) for k, lr in lrs.items() if k != "head")

    # one step moves trainable parameters only
    freeze_all_but(model, groups)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    out.loss.backward()
    head_weight = next(n for n in parts.head_params(model) if n.endswith("weight"))
    before = model.get_parameter(head_weight).detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.get_parameter(head_weight))
    for n, value in frozen.items():
        assert torch.equal(model.get_parameter(n), value), n


def _readable(model, groups):
    """Groups as comparable data: name, lr, weight decay and parameter names."""
    names = _names(model)
    return [(g["name"], pytest.approx(g["lr"]), g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in groups]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("settings", [
    {"layer_decay": 0.75, "unfreeze": 2}, {"backbone_lr_ratio": 0.1}, {"backbone_lr_ratio": 0.5, "unfreeze": 1}],
    ids=["layer-decay top-2", "ratio all", "ratio top-1"])
def test_public_param_groups_equal_the_recipes_groups(arch, settings, tiny_model_dir):
    """`tl_hub.param_groups` on a plain transformers model = the fine-tune period of `FineTuneRecipe`."""
    from transformers import AutoModelForImageClassification

    import tl_hub

    folder = tiny_model_dir(arch)
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    public = tl_hub.param_groups(model, lr=LR, weight_decay=WD, **settings)
    recipe = tl_hub.FineTuneRecipe(folder, lr=LR, weight_decay=WD, epochs=4, head_epochs=1, **settings)
    backbone = load_backbone(folder, ["a", "b", "c"])
    period = recipe.periods(backbone, recipe.config)[-1]
    assert _readable(model, public) == _readable(backbone.model, period.param_groups)
    # any optimizer takes them, and keeps their learning rates
    optimizer = torch.optim.SGD(public, lr=99.0)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in public]
    assert all(g["weight_decay"] == 0.0 for g in public if g["name"].endswith("/no_decay"))


def test_public_param_groups_head_only_and_bad_settings(tiny_model_dir):
    from transformers import AutoModelForImageClassification

    import tl_hub

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir("vit"))
    head = tl_hub.param_groups(model, lr=LR, unfreeze=0)
    assert {_group_prefix(g) for g in head} == {"head"}
    for kwargs, match in [({"lr": 0}, "lr"), ({"lr": LR, "backbone_lr_ratio": 0.1, "layer_decay": 0.8}, "not both"),
                          ({"lr": LR, "backbone_lr_ratio": 2.0}, "backbone_lr_ratio"),
                          ({"lr": LR, "layer_decay": 0}, "layer_decay"), ({"lr": LR, "weight_decay": -1}, "weight"),
                          ({"lr": LR, "unfreeze": 99}, "encoder blocks")]:
        with pytest.raises(ConfigError, match=match):
            tl_hub.param_groups(model, **kwargs)
