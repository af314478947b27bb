"""ssmir restore and ssmir.restore: formats, alpha, bit depth, EXIF, bad files, tiling, API types."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ssmir
import ssmir.models as M
from ssmir.cli import app
from ssmir.data.photos import Photo, load_photo
from ssmir.models.loading import save_model
from ssmir.restoration import restore_photo

runner = CliRunner()
CFG = {"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
       "expand": 1, "conv_2d": True}


def identity_model():
    model = M.create("eamamba", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mamba_cfg=CFG)
    with torch.no_grad():
        model.output.weight.zero_()  # output = input exactly
    return model.eval()


@pytest.fixture
def weights(tmp_path):
    return save_model(identity_model(), tmp_path / "identity.safetensors")


def _run(*args):
    return runner.invoke(app, ["restore", *map(str, args)])


def test_rgba_gray_and_16bit_round_trip(tmp_path, weights):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgba = (rng.random((20, 24, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(src / "a.png")
    gray = (rng.random((17, 19)) * 255).astype(np.uint8)
    Image.fromarray(gray, "L").save(src / "g.png")
    import png

    deep = (rng.random((9, 11, 3)) * 65535).astype(np.uint16)
    png.Writer(11, 9, bitdepth=16, greyscale=False).write(open(src / "d.png", "wb"), deep.reshape(9, -1).tolist())
    out = tmp_path / "out"
    r = _run(src, "-o", out, "--weights", weights, "--tile", 0)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), rgba)  # alpha carried, colours identical
    np.testing.assert_array_equal(np.asarray(Image.open(out / "g.png")), gray)
    back = load_photo(out / "d.png")
    assert back.bits == 16
    np.testing.assert_array_equal(np.rint(back.color * 65535).astype(np.uint16), deep)


def test_exif_orientation_is_honoured(tmp_path, weights):
    img = Image.fromarray((np.random.rand(10, 30, 3) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "p.jpg", exif=exif)
    r = _run(tmp_path / "p.jpg", "-o", tmp_path / "out", "--weights", weights)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out" / "p.png").size == (10, 30)


def test_bad_files_are_reported_and_the_rest_processed(tmp_path, weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(src / "good.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    r = _run(src, "-o", tmp_path / "out", "--weights", weights)
    assert r.exit_code == 1
    assert "broken.png" in r.output and "1 of 2 image(s)" in r.output
    assert (tmp_path / "out" / "good.png").is_file()


def test_existing_outputs_are_skipped_and_inputs_never_overwritten(tmp_path, weights):
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "x.png")
    r = _run(tmp_path / "x.png", "-o", out, "--weights", weights)
    assert r.exit_code == 0 and "skip" in r.output and Image.open(out / "x.png").size == (4, 4)
    r = _run(tmp_path / "x.png", "-o", out, "--weights", weights, "--overwrite")
    assert r.exit_code == 0 and Image.open(out / "x.png").size == (12, 12)
    r = _run(tmp_path / "x.png", "-o", tmp_path, "--weights", weights, "--overwrite")
    assert r.exit_code == 1 and "would overwrite the input" in r.output


def test_compare_strip_and_ground_truth_scores(tmp_path, weights):
    rng = np.random.default_rng(1)
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8)).save(gt / "p.png")
    r = _run(tmp_path / "p.png", "-o", tmp_path / "out", "--weights", weights, "--compare", "--ground-truth", gt)
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.output and "SSIM" in r.output
    assert Image.open(tmp_path / "out" / "p_compare.png").size == (96, 32)


def test_missing_model_and_bad_options_give_one_line_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    r = _run(tmp_path / "p.png", "--model", "eamamba-sidd")
    assert r.exit_code == 2 and "no bundled weights" in r.output
    r = _run(tmp_path / "nothing.png", "--model", "eamamba-sidd")
    assert r.exit_code == 2 and "no such file or folder" in r.output
    r = _run("-o", tmp_path / "out")
    assert r.exit_code == 2 and "give image files or folders" in r.output
    r = _run(tmp_path / "p.png", "--sample")
    assert r.exit_code == 2 and "give no input files with it" in r.output
    r = _run(tmp_path / "p.png", "--model", "no-such-model")
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.output


def test_bundled_default_model_denoises_the_bundled_sample(tmp_path):
    from ssmir.eval.metrics import psnr
    from ssmir.models.zoo import DEFAULT_MODEL, bundled_weights, get_entry

    entry = get_entry(DEFAULT_MODEL)
    net = ssmir.load_model(bundled_weights(DEFAULT_MODEL))
    assert net.ssmir_config == {"name": entry.arch, "args": entry.args}  # the file is the zoo entry's network
    assert bundled_weights(DEFAULT_MODEL).stat().st_size < 8 * 2**20
    out = tmp_path / "out"
    r = _run("--sample", "-o", out)  # no --model/--weights: the bundled default
    assert r.exit_code == 0, r.output
    assert f"restored: {out / 'astronaut.png'}" in r.output and str(out / "astronaut_compare.png") in r.output
    samples = Path(ssmir.__file__).parent / "samples"
    clean, noisy = (load_photo(samples / k / "astronaut.png").color for k in ("clean", "noisy"))
    restored = load_photo(out / "astronaut.png").color
    t = [torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in (clean, noisy, restored)]
    before, after = psnr(t[1], t[0]), psnr(t[2], t[0])
    assert 20.0 < before < 21.0  # sigma 25 noise, 8-bit
    assert after > before + 8.0, (before, after)  # the bundled model really denoises (card: docs/model-card-*)
    import re

    printed = re.search(r"astronaut.png: PSNR ([\d.]+) dB, SSIM [\d.]+ \(input: PSNR ([\d.]+) dB", r.output)
    assert printed, r.output
    assert abs(float(printed[1]) - after) < 0.05 and abs(float(printed[2]) - before) < 0.01  # file is 8-bit
    assert Image.open(out / "astronaut_compare.png").size == (3 * 256, 256)
    # and the API's default is the same model
    api = ssmir.restore(noisy, device="cpu")
    assert np.abs(api - restored).max() <= 0.5 / 255 + 1e-6


def test_tiled_restore_matches_the_whole_image():
    # a model whose receptive field is local: tiles with enough overlap reproduce the whole-image result
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1)).eval()
    photo = Photo(np.random.rand(70, 90, 3).astype(np.float32), None)
    whole = restore_photo(net, photo, torch.device("cpu"), tile=None)
    tiled = restore_photo(net, photo, torch.device("cpu"), tile=32, overlap=8, tile_batch=2)
    np.testing.assert_allclose(tiled.color, whole.color, atol=1e-5)


def test_api_returns_the_type_it_was_given(tmp_path):
    net = identity_model()
    arr8 = (np.random.rand(16, 16, 3) * 255).astype(np.uint8)
    out = ssmir.restore(arr8, net, device="cpu")
    assert out.dtype == np.uint8 and np.array_equal(out, arr8)
    t = torch.rand(3, 16, 16)
    assert torch.allclose(ssmir.restore(t, net, device="cpu"), t, atol=1e-6)
    pil = Image.fromarray(arr8)
    assert isinstance(ssmir.restore(pil, net, device="cpu"), Image.Image)
    Image.fromarray(arr8).save(tmp_path / "f.png")
    assert ssmir.restore(tmp_path / "f.png", net, device="cpu").shape == (16, 16, 3)
    rgba = np.concatenate([arr8, (np.random.rand(16, 16, 1) * 255).astype(np.uint8)], axis=2)
    out = ssmir.restore(rgba, net, device="cpu")
    assert out.shape == (16, 16, 4) and np.array_equal(out, rgba)  # identity model, alpha carried untouched
    with pytest.raises(ValueError, match=r"shape \(16, 16, 5\)"):
        ssmir.restore(np.zeros((16, 16, 5), np.uint8), net, device="cpu")


def test_outputs_get_ordinary_permissions(tmp_path, weights):
    import os
    import stat

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    assert _run(tmp_path / "p.png", "-o", tmp_path / "out", "--weights", weights).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "p.png").st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- frame + events (EmambaIR)

EVENT_MODEL = dict(in_chn=3, ev_chn=6, wf=16, depth=2, num_heads=[1, 2])


@pytest.fixture
def event_setup(tmp_path):
    torch.manual_seed(0)
    model = M.create("emambair", **EVENT_MODEL).eval()
    weights = save_model(model, tmp_path / "emambair.safetensors")
    rng = np.random.default_rng(1)
    frame = (rng.random((30, 34, 3)) * 255).astype(np.uint8)
    Image.fromarray(frame).save(tmp_path / "blurry.png")
    n = 400
    np.savez(tmp_path / "blurry.npz", x=rng.integers(0, 34, n), y=rng.integers(0, 30, n),
             t=np.sort(rng.random(n)), p=rng.integers(0, 2, n))
    return model, weights, frame


def test_restore_with_events_equals_the_model_on_frame_and_voxels(tmp_path, event_setup):
    from ssmir.data.events import events_to_voxel, read_events
    from ssmir.eval.inference import run_model

    model, weights, frame = event_setup
    out = tmp_path / "out"
    r = _run(tmp_path / "blurry.png", "-o", out, "--weights", weights, "--events", tmp_path / "blurry.npz",
             "--tile", 0)
    assert r.exit_code == 0, r.output
    voxel = events_to_voxel(read_events(tmp_path / "blurry.npz"), 6, 30, 34)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = run_model(model, x, voxel[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(out / "blurry.png")).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6
    # the same through the API, with a folder of events found by the image's stem and an exposure window
    api = ssmir.restore(frame, model, events=tmp_path / "blurry.npz", device="cpu", tile=None)
    assert np.abs(api.astype(np.float32) / 255 - want).max() <= 0.5 / 255 + 1e-6
    half = ssmir.restore(frame, model, events=tmp_path / "blurry.npz", exposure=(0.0, 0.5), device="cpu", tile=None)
    assert not np.array_equal(half, api)  # the window changes the voxels, hence the result
    (tmp_path / "evs").mkdir()
    (tmp_path / "blurry.npz").rename(tmp_path / "evs" / "blurry.npz")
    r = _run(tmp_path / "blurry.png", "-o", tmp_path / "out2", "--weights", weights, "--events", tmp_path / "evs",
             "--tile", 0)
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out2" / "blurry.png")), np.asarray(Image.open(
        out / "blurry.png")))


def test_tiles_and_flips_cut_the_voxels_with_the_frame(tmp_path, event_setup):
    from ssmir.restoration import event_voxel

    model, _, frame = event_setup
    photo = Photo(frame.astype(np.float32) / 255, None)
    voxel = event_voxel(tmp_path / "blurry.npz", 6, 30, 34)
    cpu = torch.device("cpu")
    whole = restore_photo(model, photo, cpu, tile=None, events=voxel)
    tiled = restore_photo(model, photo, cpu, tile=24, overlap=8, events=voxel)
    flips = restore_photo(model, photo, cpu, tile=None, ensemble=4, events=voxel)
    assert tiled.color.shape == flips.color.shape == whole.color.shape == (30, 34, 3)
    # a tile sees the events of its own pixels only: a voxel grid shifted against the frame changes the result
    shifted = restore_photo(model, photo, cpu, tile=None, events=torch.roll(voxel, 5, dims=2))
    assert np.abs(shifted.color - whole.color).max() > 1e-3


def test_event_options_are_checked_with_one_line_errors(tmp_path, event_setup, weights):
    _, ev_weights, _ = event_setup
    img = tmp_path / "blurry.png"
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights)
    assert r.exit_code == 2 and "takes the exposure's events as well" in r.output
    r = _run(img, "-o", tmp_path / "o", "--weights", weights, "--events", tmp_path / "blurry.npz")
    assert r.exit_code == 2 and "takes images only" in r.output
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights, "--events", tmp_path / "missing.npz")
    assert r.exit_code == 2 and "missing.npz: no such file or folder" in r.output
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights, "--events", tmp_path / "blurry.npz",
             "--event-reader", "magic")
    assert r.exit_code == 2 and "--event-reader 'magic'" in r.output
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights, "--events", tmp_path / "blurry.npz", "--timestamps",
             tmp_path / "t.csv")
    assert r.exit_code == 2 and "--timestamps gives the exposures of an event video" in r.output
    Image.fromarray(np.zeros((30, 34, 3), np.uint8)).save(tmp_path / "second.png")
    r = _run(img, tmp_path / "second.png", "-o", tmp_path / "o", "--weights", ev_weights, "--events",
             tmp_path / "blurry.npz", "--exposure", "0", "1")
    assert r.exit_code == 2 and "an event video takes --timestamps" in r.output
    # events outside the frame, and an image without events in the folder: reported per file, exit 1
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small.png")
    r = _run(tmp_path / "small.png", "-o", tmp_path / "o", "--weights", ev_weights, "--events",
             tmp_path / "blurry.npz")
    assert r.exit_code == 1 and "outside the 10x10 frame" in r.output
    (tmp_path / "evs").mkdir()
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights, "--events", tmp_path / "evs")
    assert r.exit_code == 1 and "no event file blurry.*" in r.output
    r = _run(img, "-o", tmp_path / "o", "--weights", ev_weights, "--events", tmp_path / "blurry.npz",
             "--exposure", "1", "0")
    assert r.exit_code == 1 and "the end must come after the start" in r.output


def test_event_video_restores_each_frame_from_its_exposure(tmp_path, event_setup):
    _, weights, _ = event_setup
    rng = np.random.default_rng(5)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.fromarray((rng.random((30, 34, 3)) * 255).astype(np.uint8)).save(frames / f"f{i}.png")
    stream = tmp_path / "blurry.npz"
    t = np.load(stream)["t"]
    out = tmp_path / "video"
    r = _run(frames, "-o", out, "--weights", weights, "--events", stream, "--tile", 0, "--fps", 10)
    assert r.exit_code == 0, r.output
    edges = np.linspace(t[0], t[-1], 5)  # the stream's span divided evenly, frames in name order
    for i in range(4):
        single = tmp_path / f"single{i}"
        r = _run(frames / f"f{i}.png", "-o", single, "--weights", weights, "--events", stream, "--tile", 0,
                 "--exposure", repr(float(edges[i])), repr(float(edges[i + 1])))
        assert r.exit_code == 0, r.output
        assert np.array_equal(np.asarray(Image.open(out / f"f{i}.png")), np.asarray(Image.open(single / f"f{i}.png")))
    assert not np.array_equal(np.asarray(Image.open(out / "f0.png")), np.asarray(Image.open(tmp_path / "single1" /
                                                                                              "f1.png")))
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        assert not (out / "video.mp4").exists() and "no MP4" in r.output
    else:
        reader = imageio.get_reader(str(out / "video.mp4"))
        video = [f for f in reader]
        assert len(video) == 4 and video[0].shape == (30, 34, 3) and reader.get_meta_data()["fps"] == 10
        first = np.asarray(Image.open(out / "f0.png")).astype(float)
        assert np.abs(video[0].astype(float) - first).mean() < 8  # lossy H.264 of the same frame

    csv = tmp_path / "exposures.csv"
    csv.write_text("frame,start,end\n" + "".join(f"f{i}.png,{0.5 - 0.1 * i},{0.9 - 0.1 * i}\n" for i in range(4)))
    r = _run(frames, "-o", tmp_path / "csv", "--weights", weights, "--events", stream, "--tile", 0,
             "--timestamps", csv, "--no-video")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "csv" / "video.mp4").exists()
    r = _run(frames / "f2.png", "-o", tmp_path / "one", "--weights", weights, "--events", stream, "--tile", 0,
             "--exposure", "0.3", "0.7")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "csv" / "f2.png")),
                          np.asarray(Image.open(tmp_path / "one" / "f2.png")))
    csv.write_text("f0.png,0,0.5\n")
    r = _run(frames, "-o", tmp_path / "bad", "--weights", weights, "--events", stream, "--timestamps", csv)
    assert r.exit_code == 2 and "no exposure for 3 frame(s), e.g. f1.png" in r.output
