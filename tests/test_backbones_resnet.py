"""ResNet / ResNeXt / ResNeSt backbones and pretrained-weight loading from public layouts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from reid_core.modeling.backbones import BACKBONES, create_backbone, load_pretrained
from reid_core.modeling.backbones.blocks import IBN, NonLocal, SqueezeExcitation
from reid_core.modeling.backbones.pretrained import load_backbone_weights
from reid_core.modeling.backbones.resnest import ResNeStBottleneck, SplitAttentionConv

FAMILY = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnest50",
]
EXPANSION = {"resnet18": 1, "resnet34": 1}
X = torch.rand(2, 3, 64, 32)


def bn_keys(prefix: str) -> list[str]:
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return [f"{prefix}.{s}" for s in stats]


def torchvision_resnet_keys(layers: tuple[int, ...], bottleneck: bool) -> list[str]:
    """The state-dict keys of torchvision's resnet*/resnext* without `fc`, written out."""
    keys = ["conv1.weight", *bn_keys("bn1")]
    for i, count in enumerate(layers, start=1):
        for j in range(count):
            p = f"layer{i}.{j}"
            for c in range(1, 4 if bottleneck else 3):
                keys += [f"{p}.conv{c}.weight", *bn_keys(f"{p}.bn{c}")]
            if j == 0 and (i > 1 or bottleneck):
                keys += [f"{p}.downsample.0.weight", *bn_keys(f"{p}.downsample.1")]
    return keys


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial norms (zero-initialised last BNs included) so outputs depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
            elif isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
            elif isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.normal_(0, 0.5 / m.weight[0].numel() ** 0.5, generator=g)
        for m in model.modules():
            if isinstance(m, NonLocal):
                m.W[1].weight.uniform_(0.05, 0.15, generator=g)
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize("name", FAMILY)
def test_every_family_backbone_gives_the_expected_map_and_last_stride_one_doubles_it(name):
    stride2 = create_backbone(name, base_width=16, last_stride=2)
    stride1 = create_backbone(name, base_width=16, last_stride=1)
    channels = 16 * 8 * EXPANSION.get(name, 4)
    assert stride2.out_channels == stride1.out_channels == channels
    assert outputs(stride2).shape == (2, channels, 2, 1)
    assert outputs(stride1).shape == (2, channels, 4, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
@pytest.mark.parametrize(
    "options",
    [{"ibn": "a", "se": True}, {"ibn": "b", "non_local": True}, {"se": True, "non_local": True}],
)
def test_resnet_and_resnext_build_with_every_option(name, options):
    model = create_backbone(name, base_width=16, **options)
    assert outputs(model).shape == (2, model.out_channels, 4, 2)


def test_ceil_stem_pool_takes_the_max_of_each_unpadded_window_as_fastreid_does():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 8)
    got = create_backbone("resnet18", base_width=8, stem_pool="ceil").maxpool(x)
    # windows start every 2 pixels and are cut at the border; the last may be partial
    rows, cols = range(0, 9 - 1, 2), range(0, 8 - 1, 2)
    expected = torch.tensor(
        [[[x[0, c, i : i + 3, j : j + 3].max() for j in cols] for i in rows] for c in range(2)]
    )
    torch.testing.assert_close(got[0], expected)


@pytest.mark.parametrize("size", [(128, 64), (256, 128), (384, 128)])
def test_both_stem_pools_give_the_same_feature_map_size(size):
    x = torch.zeros(1, 3, *size)
    maps = [create_backbone("resnet18", base_width=8, stem_pool=pool).eval()(x).shape
            for pool in ("padded", "ceil")]  # fmt: skip
    assert maps[0] == maps[1]


def test_published_names_are_all_registered():
    assert set(FAMILY) <= set(BACKBONES)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"se": True}, "se"),
        ({"non_local": True}, "non_local"),
        ({"stem_pool": "ceil"}, "stem_pool"),
    ],
)
def test_resnest_rejects_options_it_cannot_honour(options, named):
    with pytest.raises(ValueError, match=named):
        create_backbone("resnest50", base_width=16, **options)


def test_resnest_rejects_ibn_b_but_takes_ibn_a():
    with pytest.raises(ValueError, match="ibn"):
        create_backbone("resnest50", base_width=16, ibn="b")
    model = create_backbone("resnest50", base_width=16, ibn="a")
    assert isinstance(model.layer3[0].bn1, IBN) and isinstance(model.layer4[0].bn1, nn.BatchNorm2d)


def test_bool_ibn_still_means_ibn_a():
    model = create_backbone("resnet18", base_width=8, ibn=True)
    assert isinstance(model.layer1[0].bn1, IBN)


def test_ibn_a_puts_half_instance_norm_in_the_first_norm_of_layers_one_to_three():
    model = create_backbone("resnet50", base_width=8, ibn="a")
    for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for block in stage:
            if i < 3:
                assert isinstance(block.bn1, IBN)
                assert block.bn1.IN.num_features == block.bn1.BN.num_features == 8 * 2**i // 2
            else:
                assert isinstance(block.bn1, nn.BatchNorm2d)
    instance = [n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(instance) == 3 + 4 + 6 and all(n.endswith("bn1.IN") for n in instance)


def test_ibn_b_normalises_the_stem_and_the_sums_ending_layers_one_and_two():
    model = create_backbone("resnet50", base_width=8, ibn="b")
    instance = {n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    assert instance == {"bn1", "layer1.2.IN", "layer2.3.IN"}
    assert not any(isinstance(m, IBN) for m in model.modules())


def test_ibn_b_makes_the_output_invariant_to_image_contrast_scaling():
    """The stem's instance norm divides out a global scale of the input; plain BN does not."""
    ibn_b = randomise(create_backbone("resnet18", base_width=8, ibn="b"), 0)
    plain = randomise(create_backbone("resnet18", base_width=8), 0)
    with torch.no_grad():
        torch.testing.assert_close(ibn_b(3 * X), ibn_b(X), rtol=1e-3, atol=1e-3)
        assert not torch.allclose(plain(3 * X), plain(X), rtol=1e-2, atol=1e-2)


def test_resnext_uses_grouped_convs_with_32_groups():
    model = create_backbone("resnext50_32x4d", base_width=16)
    convs = [block.conv2 for stage in (model.layer1, model.layer4) for block in stage]
    assert all(conv.groups == 32 for conv in convs)
    assert model.layer1[0].conv2.in_channels == 32  # 4 channels per group at base 64 → 1 at 16


def test_resnext_refuses_a_base_width_without_whole_groups():
    with pytest.raises(ValueError, match="multiple of 16"):
        create_backbone("resnext50_32x4d", base_width=8)


def test_se_gates_every_block_and_scales_its_residual_branch():
    # unit-scale last norms (the default): zero-scaled ones would leave the gates nothing to scale
    plain = create_backbone("resnet50", base_width=8)
    se = create_backbone("resnet50", base_width=8, se=True)
    assert sum(isinstance(m, SqueezeExcitation) for m in se.modules()) == 3 + 4 + 6 + 3
    assert se.layer1[0].se.fc[0].weight.shape == (32 // 16, 32)
    se.load_state_dict(plain.state_dict(), strict=False)
    assert not torch.allclose(outputs(se), outputs(plain), atol=1e-4)
    for block in (b for stage in (se.layer1, se.layer2, se.layer3, se.layer4) for b in stage):
        block.se = nn.Identity()
    torch.testing.assert_close(outputs(se), outputs(plain))


def test_residual_backbones_start_as_fastreid_initialises_them_by_default():
    """Every norm at scale 1 and shift 0 and Kaiming-normal (fan-out) convolutions, as
    FastReID's ResNet and ResNeSt."""
    for name in ("resnet18", "resnet50", "resnest50"):
        model = create_backbone(name, base_width=16)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.weight, torch.ones_like(m.weight)), name
                assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        conv = max((m for m in model.modules() if isinstance(m, nn.Conv2d)),
                   key=lambda m: m.weight.numel())  # fmt: skip
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert abs(conv.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.05, name


def test_zero_init_residual_starts_residual_blocks_as_identities():
    """Each residual branch's last norm at zero scale, every other norm at one, so a block
    without a projection shortcut computes relu(x) at initialisation."""
    for name, last in (("resnet18", "last_bn"), ("resnet50", "last_bn"), ("resnest50", "bn3")):
        model = create_backbone(name, base_width=16, zero_init_residual=True)
        blocks = [m for m in model.modules() if hasattr(m, last) and hasattr(m, "conv1")]
        zeroed = {id(getattr(b, last)) for b in blocks}
        assert blocks, name
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                scale = 0.0 if id(m) in zeroed else 1.0
                assert torch.equal(m.weight, torch.full_like(m.weight, scale)), name
        block = model.layer1[1]
        x = torch.randn(2, block.conv1.in_channels, 8, 4)
        assert torch.equal(block(x), torch.relu(x)), name


def test_non_local_blocks_follow_the_last_blocks_of_layers_two_and_three():
    model = create_backbone("resnet50", base_width=8, non_local=True)
    assert set(model.non_local) == {"layer2", "layer3"}
    assert len(model.non_local["layer2"]) == 2 and len(model.non_local["layer3"]) == 3
    order: list[str] = []
    for name, module in model.named_modules():
        if re.fullmatch(r"(non_local\.)?layer2\.\d", name):
            module.register_forward_hook(lambda *_, name=name: order.append(name))
    outputs(model)
    assert order == [
        "layer2.0",
        "layer2.1",
        "layer2.2",
        "non_local.layer2.0",
        "layer2.3",
        "non_local.layer2.1",
    ]


def test_non_local_starts_as_identity_and_acts_once_its_output_norm_moves():
    plain = randomise(create_backbone("resnet50", base_width=8), 0)
    with_nl = create_backbone("resnet50", base_width=8, non_local=True)
    with_nl.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(outputs(with_nl), outputs(plain))
    with torch.no_grad():
        with_nl.non_local["layer3"][0].W[1].weight.fill_(0.1)
    assert not torch.allclose(outputs(with_nl), outputs(plain), atol=1e-4)


def test_non_local_fits_the_short_stages_of_resnet18():
    model = create_backbone("resnet18", base_width=8, non_local=True)
    assert [len(model.non_local[k]) for k in ("layer2", "layer3")] == [1, 1]


@pytest.mark.parametrize(
    ("name", "published"),
    [("resnet50", 23_508_032), ("resnext50_32x4d", 22_979_904), ("resnest50", 25_434_240)],
)
def test_full_width_parameter_counts_match_the_published_nets_without_fc(name, published):
    model = create_backbone(name, base_width=64)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(published, rel=0.01)


def test_full_width_resnet50_has_the_torchvision_key_layout():
    state = create_backbone("resnet50", base_width=64).state_dict()
    assert list(state) == torchvision_resnet_keys((3, 4, 6, 3), bottleneck=True)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)


def test_resnet18_and_resnext_have_the_torchvision_key_layout():
    resnet18 = create_backbone("resnet18", base_width=8).state_dict()
    assert list(resnet18) == torchvision_resnet_keys((2, 2, 2, 2), bottleneck=False)
    resnext = create_backbone("resnext50_32x4d", base_width=16).state_dict()
    assert list(resnext) == torchvision_resnet_keys((3, 4, 6, 3), bottleneck=True)


def test_resnest50_has_the_official_key_layout():
    state = create_backbone("resnest50", base_width=64).state_dict()
    expected_shapes = {
        "conv1.0.weight": (32, 3, 3, 3),
        "conv1.1.running_var": (32,),
        "conv1.3.weight": (32, 32, 3, 3),
        "conv1.4.weight": (32,),
        "conv1.6.weight": (64, 32, 3, 3),
        "bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.conv.weight": (128, 32, 3, 3),  # radix 2: two groups
        "layer1.0.conv2.bn0.weight": (128,),
        "layer1.0.conv2.fc1.weight": (32, 64, 1, 1),
        "layer1.0.conv2.fc1.bias": (32,),
        "layer1.0.conv2.bn1.running_mean": (32,),
        "layer1.0.conv2.fc2.weight": (128, 32, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256, 64, 1, 1),
        "layer1.0.downsample.2.weight": (256,),
        "layer2.0.downsample.1.weight": (512, 256, 1, 1),
        "layer4.2.conv2.fc1.weight": (256, 512, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".downsample.0." in k or "avd" in k for k in state)


@pytest.mark.parametrize("cardinality", [1, 2])
def test_split_attention_weights_each_split_by_a_softmax_over_the_radix(cardinality):
    conv = randomise(SplitAttentionConv(8, 8, radix=2, cardinality=cardinality), 0)
    x = torch.randn(2, 8, 6, 4)
    with torch.no_grad():
        feats = conv.relu(conv.bn0(conv.conv(x)))
        splits = [feats[:, :8], feats[:, 8:]]
        pooled = (splits[0] + splits[1]).mean((2, 3), keepdim=True)
        logits = conv.fc2(conv.relu(conv.bn1(conv.fc1(pooled)))).flatten(1)
        # fc2 channels per cardinal group g: [radix 0 of g's channels, radix 1 of g's channels]
        step = 8 // cardinality
        expected = torch.zeros_like(splits[0])
        for g in range(cardinality):
            block = logits[:, g * 2 * step : (g + 1) * 2 * step]
            weights = torch.stack([block[:, :step], block[:, step:]]).softmax(dim=0)
            for r in range(2):
                part = splits[r][:, g * step : (g + 1) * step]
                expected[:, g * step : (g + 1) * step] += weights[r][:, :, None, None] * part
        torch.testing.assert_close(conv(x), expected)


# --- pretrained loading -------------------------------------------------------------------------


def source_and_target(name: str, **options) -> tuple[nn.Module, nn.Module]:
    """A randomised source backbone and a freshly initialised one of the same shape."""
    width = 16 if name.startswith("resnext") else 8
    source = randomise(create_backbone(name, base_width=width, **options), 1)
    return source, create_backbone(name, base_width=width, **options)


def with_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "fc.weight": torch.zeros(1000, 4), "fc.bias": torch.zeros(1000)}


def test_loads_a_torchvision_checkpoint_and_reproduces_its_outputs(tmp_path):
    source, target = source_and_target("resnet50")
    state = with_classifier(source.state_dict())
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # old files
    torch.save(state, tmp_path / "resnet50-imagenet.pth")
    report = load_pretrained(target, tmp_path / "resnet50-imagenet.pth")
    torch.testing.assert_close(outputs(target), outputs(source))
    assert report.loaded == len(state) - 2
    assert set(report.ignored) == {"fc.weight", "fc.bias"} and not report.unexpected
    assert all(k.endswith("num_batches_tracked") for k in report.missing)


def test_loads_a_resnext_checkpoint(tmp_path):
    source, target = source_and_target("resnext50_32x4d")
    torch.save(with_classifier(source.state_dict()), tmp_path / "resnext.pth")
    load_pretrained(target, tmp_path / "resnext.pth")
    torch.testing.assert_close(outputs(target), outputs(source))


def test_loads_an_ibn_net_ibn_a_checkpoint_wrapped_by_data_parallel(tmp_path):
    source, target = source_and_target("resnet50", ibn="a")
    state = source.state_dict()
    assert {"layer1.0.bn1.IN.weight", "layer3.5.bn1.BN.running_var"} <= set(state)
    wrapped = {f"module.{k}": v for k, v in with_classifier(state).items()}
    torch.save({"state_dict": wrapped, "epoch": 100}, tmp_path / "resnet50_ibn_a.pth.tar")
    load_pretrained(target, tmp_path / "resnet50_ibn_a.pth.tar")
    torch.testing.assert_close(outputs(target), outputs(source))


def test_loads_an_ibn_net_ibn_b_checkpoint(tmp_path):
    source, target = source_and_target("resnet18", ibn="b")
    state = source.state_dict()
    assert {"bn1.weight", "layer1.1.IN.weight", "layer2.1.IN.bias"} <= set(state)
    assert "bn1.running_mean" not in state  # the stem norm is an affine instance norm
    torch.save(with_classifier(state), tmp_path / "resnet18_ibn_b.pth")
    load_pretrained(target, tmp_path / "resnet18_ibn_b.pth")
    torch.testing.assert_close(outputs(target), outputs(source))


def test_loads_a_fastreid_checkpoint_with_se_and_non_local_keys(tmp_path):
    source, target = source_and_target("resnet50", ibn="a", se=True, non_local=True)
    state = source.state_dict()
    assert {"layer1.0.se.fc.0.weight", "layer4.2.se.fc.2.weight"} <= set(state)
    fastreid = {"backbone." + k.replace("non_local.layer", "NL_"): v for k, v in state.items()}
    assert "backbone.NL_2.0.g.weight" in fastreid and "backbone.NL_3.2.W.1.weight" in fastreid
    fastreid |= {"heads.bottleneck.0.weight": torch.ones(256), "pixel_mean": torch.zeros(3)}
    torch.save({"model": fastreid, "iteration": 9}, tmp_path / "model_final.pth")
    report = load_backbone_weights("resnet50", target, tmp_path / "model_final.pth")
    torch.testing.assert_close(outputs(target), outputs(source))
    assert report.loaded == len(state) and not report.missing and not report.unexpected
    assert {"heads.bottleneck.0.weight", "pixel_mean"} <= set(report.ignored)


def test_loads_an_official_resnest_checkpoint(tmp_path):
    source, target = source_and_target("resnest50")
    torch.save(with_classifier(source.state_dict()), tmp_path / "resnest50-528c19ca.pth")
    load_backbone_weights("resnest50", target, tmp_path / "resnest50-528c19ca.pth")
    torch.testing.assert_close(outputs(target), outputs(source))


def test_loads_safetensors_and_file_urls(tmp_path):
    source, target = source_and_target("resnet18")
    save_file(source.state_dict(), tmp_path / "resnet18.safetensors")
    load_pretrained(target, tmp_path / "resnet18.safetensors")
    torch.testing.assert_close(outputs(target), outputs(source))
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    fresh = create_backbone("resnet18", base_width=8)
    load_pretrained(fresh, (tmp_path / "resnet18.pth").as_uri())
    torch.testing.assert_close(outputs(fresh), outputs(source))


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def weight_server(tmp_path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on 127.0.0.1 serving a folder; yields (base URL, folder, request paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []
    handler = type("Handler", (CountingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_downloads_over_http_once_into_the_cache(tmp_path, weight_server):
    base, folder, requests = weight_server
    source, target = source_and_target("resnet18")
    save_file(source.state_dict(), folder / "resnet18.safetensors")
    cache = tmp_path / "cache"
    load_pretrained(target, f"{base}/resnet18.safetensors", cache_dir=cache)
    torch.testing.assert_close(outputs(target), outputs(source))
    fresh = create_backbone("resnet18", base_width=8)
    load_pretrained(fresh, f"{base}/resnet18.safetensors", cache_dir=cache)
    torch.testing.assert_close(outputs(fresh), outputs(source))
    assert requests == ["/resnet18.safetensors"]  # the second load used the cached copy
    assert [p.name.endswith("-resnet18.safetensors") for p in cache.iterdir()] == [True]


def test_download_cache_defaults_under_reidflow_cache(tmp_path, weight_server, monkeypatch):
    base, folder, _ = weight_server
    source, target = source_and_target("resnet18")
    torch.save(source.state_dict(), folder / "r18.pth")
    monkeypatch.setenv("REIDFLOW_CACHE", str(tmp_path / "rf"))
    load_pretrained(target, f"{base}/r18.pth")
    assert len(list((tmp_path / "rf" / "weights").glob("*-r18.pth"))) == 1


def test_a_missing_url_is_a_clear_error(tmp_path, weight_server):
    base, _, _ = weight_server
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="could not download"):
        load_pretrained(create_backbone("resnet18", base_width=8), f"{base}/nope.pth", None, cache)
    assert not list(cache.iterdir())  # no partial file left behind


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    torch.save(create_backbone("resnet18", base_width=8).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"'conv1\.weight'.*\(8, 3, 7, 7\).*\(16, 3, 7, 7\)"):
        load_pretrained(create_backbone("resnet18", base_width=16), tmp_path / "small.pth")


calls: list[str] = []


def record_call() -> str:
    calls.append("unpickled")
    return "ran"


class Payload:
    """Pickles as a call to `record_call`: code an unsafe loader would run."""

    def __reduce__(self):
        return (record_call, ())


def test_a_pickle_with_non_tensor_objects_is_refused_without_running_it(tmp_path):
    state = create_backbone("resnet18", base_width=8).state_dict()
    torch.save({**state, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pretrained(create_backbone("resnet18", base_width=8), tmp_path / "evil.pth")
    assert calls == []


def test_an_unrelated_checkpoint_is_an_error(tmp_path):
    torch.save({"encoder.embed.weight": torch.zeros(3, 4)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained(create_backbone("resnet18", base_width=8), tmp_path / "other.pth")


def test_a_plain_checkpoint_leaves_se_and_non_local_at_init_and_says_so(tmp_path):
    source, _ = source_and_target("resnet50")
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    target = create_backbone("resnet50", base_width=8, se=True, non_local=True)
    report = load_backbone_weights("resnet50", target, tmp_path / "plain.pth")
    assert report.loaded == len(source.state_dict())
    assert report.missing and all(".se." in k or "non_local." in k for k in report.missing)


def test_a_checkpoint_without_the_ibn_norms_is_an_error_unless_allowed(tmp_path):
    source, _ = source_and_target("resnet50")
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"uninitialised: layer1\.0\.bn1\.IN\.weight"):
        load_pretrained(create_backbone("resnet50", base_width=8, ibn="a"), tmp_path / "plain.pth")
    target = create_backbone("resnet50", base_width=8, ibn="a")
    report = load_pretrained(target, tmp_path / "plain.pth", allow_missing=True)
    assert "layer1.0.bn1.IN.weight" in report.missing
    assert "layer1.0.bn1.weight" in report.unexpected


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(create_backbone("resnet18", base_width=8), tmp_path / "nope.pth")


def test_the_new_layers_export_to_onnx(tmp_path):
    """IBN, split attention with avd and avg-down shortcut, SE, non-local and instance norm."""
    import onnxruntime as ort

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        IBN(16),
        ResNeStBottleneck(16, 8, 2, avd=True),
        SqueezeExcitation(32),
        NonLocal(32),
        nn.InstanceNorm2d(32, affine=True),
    )
    randomise(model, 2)
    torch.onnx.export(
        model,
        (torch.zeros(2, 3, 16, 8),),
        str(tmp_path / "m.onnx"),
        input_names=["images"],
        output_names=["features"],
        opset_version=18,
        dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=64)}},
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 16, 8)
    got = session.run(["features"], {"images": images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(images).numpy(), rtol=1e-4, atol=1e-5)


def test_a_download_pinned_to_another_digest_is_refused_and_not_kept(tmp_path, weight_server):
    base, folder, _ = weight_server
    source, target = source_and_target("resnet18")
    save_file(source.state_dict(), folder / "r18.safetensors")
    digest = hashlib.sha256((folder / "r18.safetensors").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="is not the pinned"):
        load_pretrained(target, f"{base}/r18.safetensors#sha256={'0' * 64}", cache_dir=cache)
    assert not list(cache.iterdir())
    load_pretrained(target, f"{base}/r18.safetensors#sha256={digest}", cache_dir=cache)
    torch.testing.assert_close(outputs(target), outputs(source))
    with pytest.raises(ValueError, match="#sha256=<64 hex digits>"):
        load_pretrained(target, f"{base}/r18.safetensors#md5=abc", cache_dir=cache)


def test_a_download_over_the_size_cap_is_refused_and_not_kept(tmp_path, weight_server,
                                                               monkeypatch):  # fmt: skip
    from reid_core.modeling.backbones import pretrained

    base, folder, _ = weight_server
    (folder / "big.pth").write_bytes(b"\0" * 5_000)
    monkeypatch.setattr(pretrained, "MAX_DOWNLOAD_BYTES", 4_096)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="larger than 4,096 bytes"):
        load_pretrained(create_backbone("resnet18", base_width=8), f"{base}/big.pth",
                        cache_dir=cache)  # fmt: skip
    assert not list(cache.iterdir())


def test_a_downloaded_file_that_is_not_weights_is_dropped_from_the_cache(tmp_path, weight_server):
    base, folder, _ = weight_server
    (folder / "page.pth").write_text("<html>login required</html>")
    cache = tmp_path / "cache"
    with pytest.raises(Exception):  # noqa: B017 (torch's own error for a file that is no archive)
        load_pretrained(create_backbone("resnet18", base_width=8), f"{base}/page.pth",
                        cache_dir=cache)  # fmt: skip
    assert not list(cache.iterdir())


def test_a_token_in_a_weights_url_never_reaches_a_message(tmp_path, weight_server):
    base, _, _ = weight_server
    url = f"{base}/nope.pth?token=hunter2secret"
    with pytest.raises(OSError) as caught:
        load_pretrained(create_backbone("resnet18", base_width=8), url, cache_dir=tmp_path / "c")
    assert "hunter2secret" not in str(caught.value) and "token=***" in str(caught.value)


def test_create_model_starts_from_the_configured_weights_for_every_stage(tmp_path):
    """train, distill (its student) and the ablation all build through create_model; a
    checkpoint's weights replace them, so loading one reads no weights file."""
    from reid_core.config import ModelConfig
    from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
    from reid_core.modeling import create_model

    source = create_backbone("resnet18", base_width=8)
    save_file(source.state_dict(), tmp_path / "r18.safetensors")
    config = ModelConfig(
        backbone="resnet18", base_width=8, pretrained=str(tmp_path / "r18.safetensors")
    )
    model = create_model(config, 4)
    assert model.pretrained_report.loaded == len(source.state_dict())
    torch.testing.assert_close(outputs(model.backbone), outputs(source))
    assert create_model(config, 4, pretrained=False).pretrained_report is None
    save_checkpoint(tmp_path / "ckpt", model, {"height": 64, "width": 32})
    (tmp_path / "r18.safetensors").unlink()  # a load that fetched it would fail now
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(outputs(loaded.backbone), outputs(source))
