"""tools/skimage_denoise_data.py: the default model's data split and the shipped demo sample are reproducible."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("skimage_denoise_data", ROOT / "tools" / "skimage_denoise_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_keeps_the_heldout_photos_out_of_training_and_rebuilds_the_shipped_sample(tmp_path):
    pytest.importorskip("sklearn")
    tool = _tool()
    tool.main(["--out", str(tmp_path / "data"), "--extra", "--sample", str(tmp_path / "sample")])
    names = {split: sorted(p.stem for p in (tmp_path / "data" / split).glob("*.png"))
             for split in ("train", "heldout", "train-plus")}
    assert names["heldout"] == ["astronaut", "coffee", "rocket"]
    assert len(names["train"]) == 6 and len(names["train-plus"]) == 9
    assert set(names["train"]) < set(names["train-plus"])
    assert not set(names["heldout"]) & set(names["train-plus"])
    # no held-out photo hides in training under another name (pixel identity, not only file names)
    held = [np.asarray(Image.open(tmp_path / "data" / "heldout" / f"{n}.png")) for n in names["heldout"]]
    for n in names["train-plus"]:
        train = np.asarray(Image.open(tmp_path / "data" / "train-plus" / f"{n}.png"))
        assert all(h.shape != train.shape or not np.array_equal(h, train) for h in held), n
    for folder in ("clean", "noisy"):
        ours = np.asarray(Image.open(tmp_path / "sample" / folder / "astronaut.png"))
        shipped = np.asarray(Image.open(ROOT / "ssmir" / "samples" / folder / "astronaut.png"))
        np.testing.assert_array_equal(ours, shipped)


def test_wallpaper_tool_records_provenance_and_downscales(tmp_path):
    import gzip
    import hashlib
    import json
    import subprocess
    import sys

    root = tmp_path / "pkgroot"
    doc = root / "usr/share/doc/plasma-workspace-wallpapers"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: x\n\nFiles: *\nCopyright: 2014 KDE Visual Design Group\nLicense: GPL-2+\n")
    with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
        f.write("plasma-workspace-wallpapers (4:5.27.5-2) unstable; urgency=medium\n")
    rng = np.random.default_rng(0)
    spec = importlib.util.spec_from_file_location("wallpaper_photos", ROOT / "tools" / "wallpaper_photos.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name in tool.PHOTOS["plasma-workspace-wallpapers"]:
        folder = root / "usr/share/wallpapers" / name
        (folder / "contents/images").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(folder / "contents/images/big.jpg")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "contents/images/small.png")
        (folder / "metadata.json").write_text(json.dumps({"KPlugin": {"Authors": [{"Name": "A. Photographer"}],
                                                                     "License": "LGPLv3"}}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "wallpaper_photos.py"), "--root", str(root), "--out",
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads((out / "manifest.json").read_text())
    assert len(records) == len(tool.PHOTOS["plasma-workspace-wallpapers"]) == 10
    r = records[0]
    assert r["version"] == "4:5.27.5-2" and r["licence"] == "LGPLv3" and r["author"] == "A. Photographer"
    assert r["package_copyright"] == "2014 KDE Visual Design Group (GPL-2+)"
    assert r["source"].endswith("contents/images/big.jpg") and r["size"] == [32, 20]  # the largest, halved
    png = out / r["file"]
    assert Image.open(png).size == (32, 20)
    assert r["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    src = root / r["source"].lstrip("/")
    assert r["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert "| file | package (version) |" in (out / "MANIFEST.md").read_text()
    (root / "usr/share/wallpapers/Path/contents/images/big.jpg").unlink()
    (root / "usr/share/wallpapers/Path/contents/images/small.png").unlink()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "wallpaper_photos.py"), "--root", str(root), "--out",
                           str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "Path" in done.stderr


def test_wallpaper_tool_writes_the_evaluation_only_set_with_each_files_rights(tmp_path):
    import json
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("wallpaper_photos", ROOT / "tools" / "wallpaper_photos.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert not set(tool.HELDOUT) & set(tool.PHOTOS)  # never a training package
    package, (folder, names) = next(iter(tool.HELDOUT.items()))
    root = tmp_path / "pkgroot"
    doc = root / "usr/share/doc" / package
    doc.mkdir(parents=True)
    first, rest = names[0], names[1:]
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2008 The Team\nLicense: GPL-2+\n\n"
        f"Files: {first}\n       other/X.png\nCopyright: 2008, A. Photographer <a@example.org>\n"
        "           2009, B. Editor\nLicense: CC-BY-SA-3.0\nComment: a comment\n\n"
        + "Files: " + "\n       ".join(rest) + "\nCopyright: 2007, C. Lens\nLicense: GPL-2+\n")
    rng = np.random.default_rng(1)
    images = root / "usr/share/backgrounds" / folder
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "wallpaper_photos.py"), "--root", str(root), "--out", str(out),
           "--heldout", "--factor", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads((out / "manifest.json").read_text())
    assert [r["source"] for r in records] == [f"/usr/share/backgrounds/{folder}/{n}" for n in names]
    assert records[0]["author"] == "2008, A. Photographer <a@example.org> 2009, B. Editor"
    assert records[0]["licence"] == "CC-BY-SA-3.0"
    assert {(r["author"], r["licence"]) for r in records[1:]} == {("2007, C. Lens", "GPL-2+")}
    assert records[0]["size"] == [20, 12] and Image.open(out / records[0]["file"]).size == (20, 12)
    (images / names[-1]).unlink()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode != 0 and names[-1] in done.stderr
