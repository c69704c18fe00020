"""The FFN network: layer order, parity with the published google/ffn FIB-25 model, checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

import neuroflood
from neuroflood.config import ModelConfig
from neuroflood.errors import CheckpointError, ConfigError
from neuroflood.model import ConvStack3D, build_model, import_tf, load_model, save_model


def test_fib25_parameter_count_and_golden_forward(fib25_model, fib25_golden):
    assert fib25_model.num_parameters() == 638_433
    assert fib25_model.config.fov_size == (33, 33, 33)
    assert fib25_model.config.deltas == (8, 8, 8)
    assert fib25_model.config.image_mean == 128 and fib25_model.config.image_stddev == 33
    assert fib25_model.provenance["global_step"] == 27_465_036
    assert not fib25_model.training
    g = fib25_golden
    image = torch.from_numpy(fib25_model.normalize(g["image_uint8"]))[:, None]
    np.testing.assert_allclose(image[:, 0].numpy(), g["image_normalized"], atol=1e-6)
    with torch.no_grad():
        logits = fib25_model(image, torch.from_numpy(g["seed_logits"])[:, None])
    assert logits.shape == (2, 1, 33, 33, 33)
    assert np.abs(logits[:, 0].numpy() - g["logits"]).max() <= 1e-4


def test_flops_per_voxel_matches_reference(fib25_model):
    assert fib25_model.flops_per_voxel() == 1_275_328


def _numpy_reference(model: ConvStack3D, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """An independent forward: scipy correlation per channel pair, SAME zero padding."""

    def conv(x, layer):
        w = layer.weight.detach().numpy().astype(np.float64)
        b = layer.bias.detach().numpy().astype(np.float64)
        out = np.zeros((w.shape[0],) + x.shape[1:])
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                out[o] += ndimage.correlate(x[i], w[o, i], mode="constant", cval=0.0)
            out[o] += b[o]
        return out

    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    L = model.layers
    x = np.stack([image, seed]).astype(np.float64)
    x = relu(conv(x, L["conv0_a"]))
    x = conv(x, L["conv0_b"])
    for i in range(1, model.depth):
        skip = x
        x = relu(conv(relu(x), L[f"conv{i}_a"]))
        x = conv(x, L[f"conv{i}_b"]) + skip
    return seed + conv(relu(x), L["conv_lom"])[0]


def test_layer_order_matches_independent_numpy_reference():
    torch.manual_seed(0)
    model = ConvStack3D(depth=3, features=[4, 5, 3, 5, 6, 5], fov_size=(7, 7, 7), deltas=(2, 2, 2))
    for p in model.parameters():  # non-zero biases so that their placement is tested too
        torch.nn.init.uniform_(p, -0.5, 0.5)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(7, 9, 8)).astype(np.float32)
    seed = rng.normal(size=(7, 9, 8)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(image)[None, None], torch.from_numpy(seed)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, _numpy_reference(model, image, seed), atol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_single_fov_through_onednn_equals_pytorchs_own_choice():
    # A batch of one goes through oneDNN (model/convstack.py:_conv); PyTorch itself would
    # pick its reference kernel for these shapes. Same values, same gradients.
    torch.manual_seed(0)
    model = ConvStack3D(depth=3, features=16, fov_size=(11, 11, 11), deltas=(3, 3, 3))
    image, seed = torch.randn(1, 1, 11, 11, 11), torch.randn(1, 1, 11, 11, 11)

    def run(mkldnn: bool):
        model.zero_grad()
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = mkldnn
        try:
            out = model(image, seed)
        finally:
            torch.backends.mkldnn.enabled = before
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out, grads = run(True)
    ref_out, ref_grads = run(False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # and as one element of a batch, which PyTorch sends to oneDNN
        batch = model(image.expand(2, -1, -1, -1, -1), seed.expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(out, batch[:1], atol=1e-5, rtol=1e-5)
    # under autocast every conv is left to PyTorch, which runs it in bf16
    dtypes = []
    hooks = [conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for conv in model.layers.values()]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(image, seed)
    for h in hooks:
        h.remove()
    assert dtypes == [torch.bfloat16] * len(model.layers)


def test_initialization_is_glorot_uniform_with_zero_biases():
    model = ConvStack3D(depth=12, features=32)
    w = model.layers["conv1_a"].weight
    limit = np.sqrt(6 / ((32 + 32) * 27))
    assert abs(limit - 0.0589) < 1e-3
    assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
    assert model.layers["conv_lom"].weight.abs().max() <= np.sqrt(6 / (32 + 1))
    assert all((layer.bias == 0).all() for layer in model.layers.values())


def test_features_list_must_fit_the_residual_sums():
    with pytest.raises(ConfigError, match="residual"):
        ConvStack3D(depth=2, features=[4, 5, 3, 6])
    with pytest.raises(ConfigError, match="entries"):
        ConvStack3D(depth=2, features=[4, 5])


def test_import_tf_round_trip_is_identical(fib25_ckpt, fib25_model, tmp_path):
    out = import_tf(fib25_ckpt, tmp_path / "fib25")
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"]["depth"] == 12 and meta["parameters"] == 638_433
    native = load_model(out)
    x = torch.randn(1, 1, 33, 33, 33, generator=torch.Generator().manual_seed(0))
    s = torch.full_like(x, -2.944439)
    with torch.no_grad():
        assert torch.equal(native(x, s), fib25_model(x, s))
    assert native.provenance["global_step"] == 27_465_036


def test_import_tf_cli(fib25_ckpt, tmp_path, capsys):
    from neuroflood.cli import main

    assert main(["import-tf", str(fib25_ckpt), str(tmp_path / "m")]) == 0
    assert "638,433 parameters" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_native_save_load_round_trip(tmp_path):
    cfg = ModelConfig(depth=2, features=4, fov_size=(9, 9, 9), deltas=(2, 2, 2), image_mean=100, image_stddev=20)
    model = build_model(cfg, seed=3)
    save_model(model, tmp_path / "ck")
    back = load_model(tmp_path / "ck")
    assert back.config == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    # saving again replaces atomically and leaves no temporary directories behind
    save_model(back, tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def _copy_ckpt(src, dst_dir):
    dst_dir.mkdir()
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(f"{src}{suffix}", dst_dir / f"m{suffix}")
    return dst_dir / "m"


def test_corrupt_tf_data_is_rejected(fib25_ckpt, tmp_path):
    prefix = _copy_ckpt(fib25_ckpt, tmp_path / "c")
    data = bytearray(open(f"{prefix}.data-00000-of-00001", "rb").read())
    data[1000] ^= 0xFF
    open(f"{prefix}.data-00000-of-00001", "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="CRC32C mismatch"):
        load_model(prefix)


def test_truncated_tf_data_and_index_are_rejected(fib25_ckpt, tmp_path):
    prefix = _copy_ckpt(fib25_ckpt, tmp_path / "t")
    path = f"{prefix}.data-00000-of-00001"
    open(path, "r+b").truncate(100_000)
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(prefix)
    prefix2 = _copy_ckpt(fib25_ckpt, tmp_path / "t2")
    idx = open(f"{prefix2}.index", "rb").read()
    open(f"{prefix2}.index", "wb").write(idx[: len(idx) // 2])
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index|corrupt|truncated"):
        load_model(prefix2)


def test_missing_checkpoint_and_missing_variable(tmp_path, fib25_ckpt, monkeypatch):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nothing")
    from neuroflood.model import checkpoint as ck

    real = ck.read_tf_checkpoint

    def drop_one(prefix):
        t = real(prefix)
        del t["seed_update/conv5_b/biases"]
        return t

    monkeypatch.setattr(ck, "read_tf_checkpoint", drop_one)
    with pytest.raises(CheckpointError, match="conv5_b"):
        load_model(fib25_ckpt)


def test_native_checkpoint_for_another_architecture_is_rejected(tmp_path):
    model = build_model(ModelConfig(depth=2, features=4), seed=0)
    save_model(model, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["model"]["depth"] = 3
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_model(tmp_path / "ck")


def test_truncated_safetensors_is_rejected(tmp_path):
    save_model(build_model(ModelConfig(depth=2, features=4), seed=0), tmp_path / "ck")
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "ck")


def test_model_spec_parsing():
    cfg = ModelConfig.parse_spec("depth=4,features=16,fov=17,17,17,deltas=4,4,4")
    assert (cfg.depth, cfg.features, cfg.fov_size, cfg.deltas) == (4, 16, (17, 17, 17), (4, 4, 4))
    with pytest.raises(ConfigError, match="odd"):
        ModelConfig.parse_spec("fov=16,16,16")
    with pytest.raises(ConfigError, match="unknown option"):
        ModelConfig.parse_spec("dpeth=3")


def test_public_api():
    assert neuroflood.load_model is load_model
