"""Natural photographs from Debian's wallpaper packages, as denoising training images with their provenance.

    sudo apt-get install plasma-workspace-wallpapers               # or, without installing:
    apt-get download plasma-workspace-wallpapers && dpkg -x plasma-workspace-wallpapers_*.deb pkgroot
    python tools/wallpaper_photos.py --root pkgroot --out datasets/wallpapers      # --root / when installed

Only real photographs are taken, chosen by looking at every wallpaper of the package (the others are
renders, illustrations or abstract graphics): ``PHOTOS`` below. ukui-wallpapers (20.04.3) was looked at too
and holds graphics only. Each photo's largest image is downscaled by ``--factor`` (default 2, Lanczos) so that
its JPEG artefacts and sensor noise fall below the 8-bit step, and written as ``OUT/<package>-<name>.png``.
``OUT/manifest.json`` and ``OUT/MANIFEST.md`` record, per photo, the package and its version, the source file,
the author and licence from the wallpaper's ``metadata.json``, the package's copyright statement, and the
SHA-256 of the source file and of the written PNG. A photo whose file is missing is an error naming it.

The backgrounds of other desktop environments and the sample folders of libraries are not trained on: the
default model is also judged on held-out photos from such packages. ``--heldout`` writes one such set instead,
for evaluation only: the 12 nature photographs of Debian's ``mate-backgrounds`` (``HELDOUT``; each file's
author and licence from the package's machine-readable copyright file), e.g. downscaled by 4:

    apt-get download mate-backgrounds && dpkg -x mate-backgrounds_*.deb pkgroot
    python tools/wallpaper_photos.py --root pkgroot --out datasets/heldout-mate --heldout --factor 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from pathlib import Path

PHOTOS = {
    "plasma-workspace-wallpapers": ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                                    "FallenLeaf", "Grey", "OneStandsOut", "Path", "summer_1am"),
}

# Evaluation only, never in a training set: (package, its folder under usr/share/backgrounds, files in it as the
# package's copyright file names them).
HELDOUT = {
    "mate-backgrounds": ("mate", tuple(f"nature/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower"))),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_version(root: Path, package: str) -> str:
    """The installed version (dpkg), else the first entry of the package's Debian changelog under ``root``."""
    if root == Path("/"):
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout:
            return done.stdout
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    if changelog.is_file():
        import gzip

        first = gzip.open(changelog, "rt").readline()
        found = re.search(r"\(([^)]+)\)", first)
        if found:
            return found.group(1)
    return "unknown"


def copyright_of(root: Path, package: str) -> str:
    path = root / "usr/share/doc" / package / "copyright"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (is {package} installed or extracted under --root?)")
    text = path.read_text(errors="replace")
    block = re.search(r"Files: \*\s*\nCopyright: (.+)\nLicense: (.+)", text)
    return f"{block.group(1).strip()} ({block.group(2).strip()})" if block else "see " + str(path)


def file_rights(root: Path, package: str, relative: str) -> tuple[str, str]:
    """(copyright holders, licence) of one file from the package's machine-readable (DEP-5) copyright file."""
    text = (root / "usr/share/doc" / package / "copyright").read_text(errors="replace")
    for stanza in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*?)(?=^\S)", stanza + "\nX", re.S | re.M)
        if files and relative in files.group(1).split():
            holders = re.search(r"^Copyright:(.*?)(?=^\S)", stanza + "\nX", re.S | re.M)
            licence = re.search(r"^License:\s*(\S+)", stanza, re.M)
            return (" ".join(holders.group(1).split()) if holders else "unknown",
                    licence.group(1) if licence else "unknown")
    return "unknown", "unknown"


def largest_image(folder: Path) -> Path:
    from PIL import Image

    images = [p for p in (folder / "contents" / "images").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not images:
        raise SystemExit(f"{folder}: no contents/images/*.jpg|png (is the package installed under --root?)")

    def area(p):
        with Image.open(p) as im:
            return im.size[0] * im.size[1]

    return max(images, key=area)


def author_and_licence(folder: Path) -> tuple[str, str]:
    meta = folder / "metadata.json"
    if not meta.is_file():
        return "unknown", "unknown"
    plugin = json.loads(meta.read_text()).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "?") for a in plugin.get("Authors", [])) or "unknown"
    return authors, plugin.get("License", "unknown")


def write_photo(a, source: Path, name: str, package: str, version: str, author: str, licence: str,
                rights: str) -> dict:
    """Downscale ``source`` by ``a.factor`` into ``a.out / name`` (atomically) and return its manifest record."""
    from PIL import Image

    from ssmir.data.io import atomic_write

    with Image.open(source) as im:
        rgb = im.convert("RGB")
        size = (rgb.width // a.factor, rgb.height // a.factor)
        small = rgb.resize(size, Image.LANCZOS)
    target = atomic_write(a.out / name, lambda t: small.save(t, format="PNG"))
    record = {"file": target.name, "package": package, "version": version,
              "source": "/" + str(source.relative_to(a.root)), "author": author, "licence": licence,
              "package_copyright": rights, "source_sha256": sha256(source), "sha256": sha256(target),
              "size": list(size)}
    print(f"{target.name}: {size[0]}x{size[1]} from {record['source']} ({author}; {licence})")
    return record


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/"), help="system root or a dpkg -x folder [/]")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--factor", type=int, default=2, help="downscaling factor (Lanczos)")
    p.add_argument("--heldout", action="store_true", help="write the evaluation-only set (HELDOUT) instead")
    a = p.parse_args()

    a.out.mkdir(parents=True, exist_ok=True)
    records = []
    if a.heldout:
        for package, (folder, names) in HELDOUT.items():
            version, rights = package_version(a.root, package), copyright_of(a.root, package)
            for name in names:
                source = a.root / "usr/share/backgrounds" / folder / name
                if not source.is_file():
                    raise SystemExit(f"{source}: missing (expected in {package})")
                author, licence = file_rights(a.root, package, name)
                records.append(write_photo(a, source, f"{package}-{Path(name).stem}.png", package, version, author,
                                           licence, rights))
    else:
        for package, names in PHOTOS.items():
            version, rights = package_version(a.root, package), copyright_of(a.root, package)
            for name in names:
                folder = a.root / "usr/share/wallpapers" / name
                if not folder.is_dir():
                    raise SystemExit(f"{folder}: missing (expected in {package})")
                author, licence = author_and_licence(folder)
                records.append(write_photo(a, largest_image(folder), f"{package}-{name}.png", package, version,
                                           author, licence, rights))
    (a.out / "manifest.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = ["| file | package (version) | source | author | licence | SHA-256 (png) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['package']} ({r['version']}) | {r['source']} | {r['author']} | {r['licence']} | "
              f"{r['sha256'][:16]}… |" for r in records]
    (a.out / "MANIFEST.md").write_text("\n".join(lines) + "\n")
    print(f"{len(records)} photos and their manifest in {a.out}")


if __name__ == "__main__":
    main()
