"""Training losses: VGG perceptual features against a plain re-computation from the weights file, the
temporal term's definition, consecutive event batches, and config checking."""

import pytest
import torch
import torch.nn.functional as F

from ssmir.train.config import ConfigError, validate
from ssmir.train.losses import CombinedLoss, LossError, VGGFeatures, parse_terms, temporal_loss, vgg_layer_names


def _random_vgg(path, network="vgg16"):
    """A torchvision-layout VGG state_dict with random weights (features.N.* plus a classifier entry)."""
    torch.manual_seed(0)
    sd, index, channels = {}, 0, 3
    layouts = {"vgg16": [[64, 64], [128, 128], [256, 256, 256]], "vgg19": [[64, 64], [128, 128], [256] * 4]}
    for widths in layouts[network]:
        for width in widths:
            sd[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3) * (2 / (9 * channels)) ** 0.5
            sd[f"features.{index}.bias"] = torch.randn(width) * 0.01
            channels, index = width, index + 2
        index += 1  # the pool
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(sd, path)
    return sd


def test_layer_names_follow_torchvision_indices():
    names = vgg_layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("relu3_4") == 17 and names.index("relu5_4") == 35 and len(names) == 37
    assert vgg_layer_names("vgg16").index("relu4_3") == 22


def test_vgg_features_equal_a_plain_computation_from_the_file(tmp_path):
    sd = _random_vgg(tmp_path / "vgg16.pth")
    vgg = VGGFeatures("vgg16", ["relu1_2", "relu2_1"], tmp_path / "vgg16.pth")
    x = torch.rand(2, 3, 16, 20)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    h = (x - mean) / std
    h = F.relu(F.conv2d(h, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    relu1_2 = F.relu(F.conv2d(h, sd["features.2.weight"], sd["features.2.bias"], padding=1))
    relu2_1 = F.relu(F.conv2d(F.max_pool2d(relu1_2, 2), sd["features.5.weight"], sd["features.5.bias"], padding=1))
    out = vgg(x)
    torch.testing.assert_close(out["relu1_2"], relu1_2)
    torch.testing.assert_close(out["relu2_1"], relu2_1)
    assert not any(p.requires_grad for p in vgg.parameters())
    gray = vgg(x[:, :1])["relu1_2"]
    torch.testing.assert_close(gray, vgg(x[:, :1].expand(-1, 3, -1, -1))["relu1_2"])


def test_perceptual_term_in_a_weighted_list(tmp_path):
    _random_vgg(tmp_path / "vgg19.pth", "vgg19")
    loss = CombinedLoss([{"type": "l1", "weight": 1.0},
                         {"type": "perceptual", "weight": 0.5, "network": "vgg19", "weights_file": "vgg19.pth",
                          "layers": {"relu2_2": 1.0, "relu3_4": 0.5}}], base=tmp_path)
    gt = torch.rand(2, 3, 16, 16)
    assert loss(gt.clone(), gt).item() == 0.0
    pred = (gt + 0.1 * torch.randn_like(gt)).requires_grad_()
    value = loss(pred, gt)
    value.backward()
    assert pred.grad.abs().sum() > 0 and loss.last["perceptual"] > 0
    assert value.item() == pytest.approx(F.l1_loss(pred, gt).item() + 0.5 * loss.last["perceptual"].item(), rel=1e-5)


def test_temporal_term_penalises_flicker_beyond_the_targets_changes():
    gt = torch.rand(4, 3, 8, 8)
    assert temporal_loss(gt + 0.2, gt).item() == pytest.approx(0.0, abs=1e-7)  # a constant offset does not flicker
    flicker = gt + torch.tensor([0.0, 0.1, 0.0, 0.1]).view(4, 1, 1, 1)
    assert temporal_loss(flicker, gt).item() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(LossError, match="at least 2"):
        temporal_loss(gt[:1], gt[:1])


def test_missing_weights_and_bad_terms_are_clear_errors(tmp_path):
    with pytest.raises(LossError, match="weights_file .*missing.pth not found.*downloads nothing"):
        CombinedLoss([{"type": "perceptual", "weights_file": str(tmp_path / "missing.pth")}])
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(LossError, match="not a torchvision vgg19 state_dict"):
        CombinedLoss([{"type": "perceptual", "weights_file": str(tmp_path / "bad.pth")}])
    with pytest.raises(LossError, match="not vgg16 layers"):
        VGGFeatures("vgg16", ["relu3_4"], tmp_path / "bad.pth")
    with pytest.raises(LossError, match="'ssim' is not one of"):
        parse_terms([{"type": "ssim"}])
    with pytest.raises(LossError, match="weights_file .* is required"):
        parse_terms([{"type": "perceptual"}])
    with pytest.raises(LossError, match="unknown key"):
        parse_terms([{"type": "l1", "layers": ["relu1_1"]}])
    base = {"train_dataset": {"dataset": {"name": "paired-dataset", "args": {}}, "batch_size": 1, "crop_size": 8},
            "model": {"name": "eamamba", "args": {}}, "optimizer": {"name": "AdamW", "args": {}},
            "lr_scheduler": {"name": "MultiStepLR", "args": {}}, "total_iter": 1}
    assert validate(dict(base, loss=[{"type": "l1"}, {"type": "temporal", "weight": 0.1}]))["loss"][1]["type"] == \
        "temporal"
    with pytest.raises(ConfigError, match=r"loss\[0\].type 'ssim'"):
        validate(dict(base, loss=[{"type": "ssim"}]))


def test_consecutive_event_batches_and_a_training_step_with_all_terms(tmp_path):
    pytest.importorskip("accelerate")
    from ssmir.train.trainer import Trainer, TrainingError
    from tests.train.test_training import _config, _sequences

    _sequences(tmp_path / "train", 2, 0, frames=10)
    _random_vgg(tmp_path / "vgg16.pth")
    args = {"sequence_dir": str(tmp_path / "train"), "frames_per_blur": 5, "bins": 6, "threshold_sigma": 0.0,
            "augment": True}
    terms = [{"type": "l1"}, {"type": "perceptual", "weight": 0.01, "network": "vgg16",
                              "weights_file": str(tmp_path / "vgg16.pth"), "layers": ["relu1_2"]},
             {"type": "temporal", "weight": 0.5}]
    model = {"name": "emambair", "args": {"wf": 8, "depth": 2, "num_heads": [1, 2]}}
    cfg = _config(tmp_path, 2, model=model, loss=terms, valid_dataset=None, progressive_train=None,
                  train_dataset={"dataset": {"name": "event-sequence-dataset", "args": dict(args, consecutive=True)},
                                 "batch_size": 3, "crop_size": 32})
    trainer = Trainer(cfg, tmp_path / "run", cpu=True, progress=False)
    data = trainer.train_data
    assert data.consecutive == 3
    from ssmir.data.io import read_image

    data.augment = False
    for it in (5, 6):
        targets = [data[(it, slot, None)][2] for slot in range(3)]  # whole frames: the middle of each window
        seqs = [[read_image(p) for p in seq] for seq in data.sequences]
        found = [(k, i) for k, seq in enumerate(seqs) for i, f in enumerate(seq) if torch.equal(f, targets[0])]
        assert len(found) == 1
        k, i = found[0]
        assert all(torch.equal(targets[j], seqs[k][i + j]) for j in range(3))  # one sequence, frames i, i+1, i+2
    data.augment = True
    trainer.fit()
    assert (tmp_path / "run" / "last.pth").is_file()
    cfg_bad = _config(tmp_path, 2, model=model, loss=terms, valid_dataset=None, progressive_train=None,
                      train_dataset={"dataset": {"name": "event-sequence-dataset", "args": args},
                                     "batch_size": 3, "crop_size": 32})
    with pytest.raises(TrainingError, match="consecutive: true"):
        Trainer(cfg_bad, tmp_path / "run2", cpu=True, progress=False)


def test_shipped_emambair_configs_load_and_list_entries_can_be_set():
    from pathlib import Path

    from ssmir.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "emambair"
    for task in ("deblur", "derain", "hdr"):
        tiny = load_config(root / f"{task}-simulated-tiny.yaml")
        assert tiny["train_dataset"]["dataset"]["args"]["task"] == task and tiny["total_iter"] <= 1100
        full = load_config(root / f"{task}-simulated.yaml", ["loss.1.weights_file=/data/vgg19.pth"])
        assert full["model"]["args"]["wf"] == 48 and full["loss"][1]["weights_file"] == "/data/vgg19.pth"
        assert [t["type"] for t in full["loss"]] == ["l1", "perceptual", "temporal"]
    with pytest.raises(ConfigError, match="not an index"):
        load_config(root / "deblur-simulated.yaml", ["loss.5.weight=1"])
