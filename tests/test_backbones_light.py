"""OSNet, MobileNetV3 and ViT backbones: shapes, options, published sizes, layouts, ONNX."""

import numpy as np
import pytest
import torch
from torch import nn

from reid_core.config import ModelConfig
from reid_core.modeling import create_model
from reid_core.modeling.backbones import BACKBONES, create_backbone
from reid_core.modeling.backbones.osnet import AggregationGate, LiteConv3x3, OSBlock
from reid_core.modeling.backbones.pretrained import load_backbone_weights
from reid_core.modeling.backbones.vit import DropPath, VisionTransformer


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("osnet_x1_0", 512),
        ("osnet_x0_25", 128),
        ("mobilenetv3_large", 960),
        ("mobilenetv3_small", 576),
        ("vit_small", 384),
        ("vit_tiny", 192),
    ],
)
def test_every_light_backbone_maps_64x32_images_to_a_4x2_grid(name, channels):
    assert name in BACKBONES
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 32))
    # OSNet: stride 16; MobileNetV3 with the default last_stride=1: 16; ViT: 16×16 patches.
    assert backbone.out_channels == channels
    assert out.shape == (2, channels, 4, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("osnet_x1_0", {"last_stride": 2}, "last_stride"),
        ("osnet_x0_25", {"se": True}, "se"),
        ("osnet_x0_25", {"ibn": "b"}, "ibn"),
        ("osnet_x0_25", {"base_width": 32}, "base_width"),
        ("mobilenetv3_large", {"ibn": True}, "ibn"),
        ("mobilenetv3_small", {"non_local": True}, "non_local"),
        ("mobilenetv3_small", {"base_width": 32}, "base_width"),
        ("mobilenetv3_small", {"last_stride": 3}, "last_stride"),
        ("vit_tiny", {"last_stride": 2}, "last_stride"),
        ("vit_tiny", {"ibn": "a"}, "ibn"),
        ("vit_small", {"se": True}, "se"),
        ("vit_small", {"non_local": True}, "non_local"),
        ("vit_tiny", {"base_width": 32}, "base_width"),
    ],
)
def test_unsupported_options_raise_naming_the_option(name, options, named):
    with pytest.raises(ValueError, match=named):
        create_backbone(name, **options)


FC512 = {"osnet_x1_0": 512 * 512 + 512 + 2 * 512, "osnet_x0_25": 128 * 512 + 512 + 2 * 512}


@pytest.mark.parametrize(
    ("name", "published", "excluded"),
    [
        # OSNet paper / torchreid zoo: 2.2M and 0.2M, counted with the FC-512 + BN embedding
        # layer that is the head's job here, so it is added back.
        ("osnet_x1_0", 2.2e6, FC512["osnet_x1_0"]),
        ("osnet_x0_25", 0.2e6, FC512["osnet_x0_25"]),
        # torchvision totals minus the classifier (960→1280→1000, 576→1024→1000).
        ("mobilenetv3_large", 5_483_032, 960 * 1280 + 1280 + 1280 * 1000 + 1000),
        ("mobilenetv3_small", 2_542_856, 576 * 1024 + 1024 + 1024 * 1000 + 1000),
        # DeiT-S / DeiT-Ti at 224 minus the 1000-way head; our grid is 16×8, not 14×14.
        ("vit_small", 22_050_664, 384 * 1000 + 1000),
        ("vit_tiny", 5_717_416, 192 * 1000 + 1000),
    ],
)
def test_parameter_counts_match_the_published_figures(name, published, excluded):
    measured = n_params(create_backbone(name))
    assert measured == pytest.approx(published - excluded, rel=0.03)


def test_osnet_blocks_have_four_streams_of_one_to_four_lite_convs_and_one_shared_gate():
    backbone = create_backbone("osnet_x0_25").eval()
    blocks = [m for m in backbone.modules() if isinstance(m, OSBlock)]
    assert len(blocks) == 6  # three stages of two blocks
    for block in blocks:
        gates = [m for m in block.modules() if isinstance(m, AggregationGate)]
        assert len(gates) == 1
        depths = [sum(isinstance(m, LiteConv3x3) for m in s.modules()) for s in block.streams()]
        assert depths == [1, 2, 3, 4]
    calls = []
    blocks[0].gate.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 32))
    assert len(calls) == 4  # the one gate weighs all four streams


@pytest.mark.parametrize(
    ("name", "widths"), [("osnet_x0_25", (16, 64, 96, 128)), ("osnet_x1_0", (64, 256, 384, 512))]
)
def test_osnet_stage_widths(name, widths):
    backbone = create_backbone(name)
    stage_out = [
        backbone.conv1.conv.out_channels,
        backbone.conv2[1].conv3.conv.out_channels,
        backbone.conv3[1].conv3.conv.out_channels,
        backbone.conv4[1].conv3.conv.out_channels,
    ]
    assert tuple(stage_out) == widths
    assert backbone.conv5.conv.out_channels == widths[3]
    # The bottleneck works at a quarter of the block width; the gate squeezes it 16×.
    assert backbone.conv4[0].conv1.conv.out_channels == widths[3] // 4
    assert backbone.conv4[0].gate.fc1.out_channels == max(widths[3] // 4 // 16, 1)


def test_osnet_ibn_has_instance_norm_in_conv1_and_conv2_only():
    def instance_norm_in(module: nn.Module) -> list[str]:
        return [n for n, m in module.named_modules() if isinstance(m, nn.InstanceNorm2d)]

    ibn = create_backbone("osnet_x0_25", ibn="a")
    assert isinstance(ibn.conv1.bn, nn.InstanceNorm2d)
    assert instance_norm_in(ibn.conv2) == ["0.IN", "1.IN"]  # after each block's residual sum
    for stage in (ibn.conv3, ibn.conv4, ibn.conv5):
        assert instance_norm_in(stage) == []
    assert instance_norm_in(create_backbone("osnet_x0_25")) == []
    assert create_backbone("osnet_x0_25", ibn=True).conv2[0].IN.affine  # bool form = "a"


@pytest.mark.parametrize("name", ["mobilenetv3_large", "mobilenetv3_small"])
def test_mobilenetv3_last_stride_one_doubles_the_final_map(name):
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        s1 = create_backbone(name, last_stride=1).eval()(x)
        s2 = create_backbone(name, last_stride=2).eval()(x)
    assert s2.shape[-2:] == (2, 1) and s1.shape[-2:] == (4, 2)


# Howard et al. 2019 tables as (kernel, expanded, out, SE), written out independently of the
# module under test, and torchvision's key layout (see mobilenetv3.py's docstring).
LARGE_TABLE = "3,16,16,0 3,64,24,0 3,72,24,0 5,72,40,1 5,120,40,1 5,120,40,1 3,240,80,0 \
3,200,80,0 3,184,80,0 3,184,80,0 3,480,112,1 3,672,112,1 5,672,160,1 5,960,160,1 5,960,160,1"
SMALL_TABLE = "3,16,16,1 3,72,24,0 3,88,24,0 5,96,40,1 5,240,40,1 5,240,40,1 5,120,48,1 \
5,144,48,1 5,288,96,1 5,576,96,1 5,576,96,1"
SQUEEZE = {16: 8, 72: 24, 96: 24, 120: 32, 144: 40, 240: 64, 288: 72, 480: 120, 576: 144,
           672: 168, 960: 240}  # fmt: skip


def torchvision_layout(table: str, last: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}

    def conv_bn(prefix: str, cout: int, cin: int, k: int) -> None:
        state[f"{prefix}.0.weight"] = torch.randn(cout, cin, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.1.{name}"] = torch.rand(cout) + 0.5
        state[f"{prefix}.1.num_batches_tracked"] = torch.tensor(7)

    conv_bn("features.0", 16, 3, 3)
    cin = 16
    rows = [tuple(int(v) for v in row.split(",")) for row in table.split()]
    for i, (k, exp, out, se) in enumerate(rows, start=1):
        j = 0
        if exp != cin:
            conv_bn(f"features.{i}.block.{j}", exp, cin, 1)
            j += 1
        conv_bn(f"features.{i}.block.{j}", exp, 1, k)
        j += 1
        if se:
            sq = SQUEEZE[exp]
            state[f"features.{i}.block.{j}.fc1.weight"] = torch.randn(sq, exp, 1, 1)
            state[f"features.{i}.block.{j}.fc1.bias"] = torch.randn(sq)
            state[f"features.{i}.block.{j}.fc2.weight"] = torch.randn(exp, sq, 1, 1)
            state[f"features.{i}.block.{j}.fc2.bias"] = torch.randn(exp)
            j += 1
        conv_bn(f"features.{i}.block.{j}", out, exp, 1)
        cin = out
    conv_bn(f"features.{len(rows) + 1}", last, cin, 1)
    return state


@pytest.mark.parametrize(
    ("name", "table", "last"),
    [("mobilenetv3_large", LARGE_TABLE, 960), ("mobilenetv3_small", SMALL_TABLE, 576)],
)
def test_torchvision_layout_state_dict_loads_strictly_into_mobilenetv3(name, table, last):
    state = torchvision_layout(table, last)
    backbone = create_backbone(name)
    backbone.load_state_dict(state, strict=True)
    for key in ("features.0.0.weight", "features.1.block.0.1.running_var"):
        torch.testing.assert_close(backbone.state_dict()[key], state[key])


def test_vit_keys_follow_the_timm_layout():
    backbone = create_backbone("vit_tiny")
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(12):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    expected |= {"norm.weight", "norm.bias"}
    assert set(backbone.state_dict()) == expected
    assert backbone.state_dict()["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    assert backbone.img_size == (256, 128) and backbone.grid_size == (16, 8)


def imagenet_pos_embed(dim: int) -> torch.Tensor:
    """A 224-model pos_embed (class + 14×14): channel 0 constant, 1 a ramp r + c, rest noise."""
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    grid = torch.randn(14, 14, dim)
    grid[..., 0] = 0.7
    grid[..., 1] = rows + cols
    return torch.cat([torch.randn(1, dim), grid.reshape(196, dim)]).unsqueeze(0)


def test_vit_pos_embed_remap_keeps_the_class_token_and_resizes_the_grid_smoothly():
    backbone = create_backbone("vit_tiny")
    state = backbone.state_dict()
    pos = imagenet_pos_embed(192)
    state["pos_embed"] = pos.clone()
    remapped = BACKBONES["vit_tiny"].remap(state, backbone)
    new = remapped["pos_embed"]
    assert new.shape == (1, 1 + 16 * 8, 192)
    torch.testing.assert_close(new[0, 0], pos[0, 0], rtol=0, atol=0)  # class token untouched
    grid = new[0, 1:].reshape(16, 8, 192)
    torch.testing.assert_close(grid[..., 0], torch.full((16, 8), 0.7))  # constant stays
    ramp = grid[..., 1]
    assert ramp[0, 0] == ramp.min() and ramp[-1, -1] == ramp.max()  # corners keep extremes
    assert (ramp.diff(dim=0) > 0).all() and (ramp.diff(dim=1) > 0).all()  # still monotone
    assert 0.0 <= ramp.min() < 1.5 and 24.5 < ramp.max() <= 26.0
    backbone.load_state_dict(remapped, strict=True)
    # A checkpoint already on the model's grid passes through unchanged.
    same = BACKBONES["vit_tiny"].remap({"pos_embed": new}, backbone)["pos_embed"]
    assert same is new


def test_timm_checkpoint_with_head_loads_through_the_pretrained_loader(tmp_path):
    donor = VisionTransformer(192, 12, 3, img_size=(224, 224))
    state = donor.state_dict()
    state["head.weight"], state["head.bias"] = torch.randn(1000, 192), torch.randn(1000)
    torch.save(state, tmp_path / "deit_tiny.pth")
    backbone = create_backbone("vit_tiny")
    report = load_backbone_weights("vit_tiny", backbone, tmp_path / "deit_tiny.pth")
    assert report.missing == () and report.unexpected == ()
    torch.testing.assert_close(backbone.blocks[3].mlp.fc1.weight, donor.blocks[3].mlp.fc1.weight)
    torch.testing.assert_close(backbone.pos_embed[:, 0], donor.pos_embed[:, 0])


def test_vit_runs_at_sizes_other_than_the_one_it_was_built_for():
    backbone = create_backbone("vit_tiny").eval()  # built for 256×128
    assert backbone.position_embedding((16, 8)) is backbone.pos_embed
    with torch.no_grad():
        for (h, w), grid in [((64, 32), (4, 2)), ((96, 64), (6, 4)), ((320, 160), (20, 10))]:
            out = backbone(torch.randn(2, 3, h, w))
            assert out.shape == (2, 192, *grid) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone(torch.randn(1, 3, 70, 32))
    overlapping = VisionTransformer(192, 1, 3, img_size=(64, 32), patch_stride=12).eval()
    assert overlapping.grid_size == (5, 2)  # (64 - 16) // 12 + 1, (32 - 16) // 12 + 1
    assert overlapping(torch.randn(1, 3, 64, 32)).shape == (1, 192, 5, 2)


def test_drop_path_drops_whole_samples_in_training_only():
    drop = DropPath(0.5).train()
    out = drop(torch.ones(2000, 3, 4))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    x = torch.randn(4, 3, 4)
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("name", ["osnet_x0_25", "mobilenetv3_small", "vit_tiny"])
def test_light_backbones_plug_into_the_reid_model(name):
    model = create_model(ModelConfig(backbone=name, pooling="avg"), num_classes=3)
    images = torch.rand(4, 3, 64, 32) * 255
    out = model.train()(images)
    assert out.logits.shape == (4, 3)
    with torch.no_grad():
        assert model.eval()(images).shape == (4, model.embedding_dim)


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> None:
    """Running stats from one batch, so eval-mode activations have realistic scales.

    Fresh BN stats (mean 0, var 1) let MobileNetV3's hardswish layers shrink the signal to
    ~1e-8, which would make any tolerance pass; exact batch stats on near-dead channels divide
    by ~sqrt(eps) and amplify float32 round-off past 1e-4 in PyTorch itself. Hence the floor.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the stats exactly
    with torch.no_grad():
        model.train()(x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.clamp_(min=0.1)
    model.eval()


ONNX_CASES = {
    "osnet_x0_25_ibn": lambda: create_backbone("osnet_x0_25", ibn="a"),
    "mobilenetv3_small": lambda: create_backbone("mobilenetv3_small"),
    # vit_tiny's widths with 2 of its 12 (identical) blocks, to keep the export quick. Built
    # for 256×128 and exported at 64×32, so the pos_embed resize is part of the graph.
    "vit_tiny_2_blocks": lambda: VisionTransformer(192, 2, 3, img_size=(256, 128)),
}


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_backbone_exports_to_onnx_with_dynamic_batch_and_matches_pytorch(name, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    backbone = ONNX_CASES[name]()
    calibrate_batch_norm(backbone, torch.randn(8, 3, 64, 32))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        backbone,
        (torch.randn(2, 3, 64, 32),),
        str(path),
        input_names=["images"],
        output_names=["features"],
        opset_version=18,
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 32)
        with torch.no_grad():
            expected = backbone(x).numpy()
        got = session.run(["features"], {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 0.1  # a real signal, not vanishing activations
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
