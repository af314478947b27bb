"""The ``ssmir`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

from pathlib import Path

import typer

import ssmir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Image restoration with visual state-space (Mamba-family) models.")


def _version(value: bool):
    if value:
        typer.echo(f"ssmir {ssmir.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")):
    """ssmir: EAMamba, MambaIRv2 and EmambaIR with a selective scan that needs no CUDA build.

    Freed tensor memory is kept in the process for reuse (faster on CPU, ~20 % higher peak memory; set
    SSMIR_RETAIN_FREED_MEMORY=0 to turn it off).
    """
    from ssmir.runtime import apply_from_environment

    apply_from_environment()


@app.command("models")
def models_cmd():
    """List the architectures and the model-zoo entries (task, architecture, parameters, weights)."""
    import ssmir.models as M
    from ssmir.models.zoo import entries

    typer.echo("Architectures (ssmir.models.create):")
    for name in M.list():
        doc = (M.get(name).__doc__ or "").strip().splitlines()[0]
        typer.echo(f"  {name:15s} {doc}")
    typer.echo("\nZoo entries (--model NAME; official weights are user-supplied with --weights FILE):")
    typer.echo(f"  {'name':30s} {'architecture':15s} {'parameters':>12s}  {'weights':10s} task")
    for e in entries().values():
        weights = "bundled" if e.bundled_weights else "user"
        typer.echo(f"  {e.name:30s} {e.arch:15s} {e.parameters():12,d}  {weights:10s} {e.task}")


@app.command("inspect")
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint: official .pth, BasicSR .pth or ssmir .safetensors."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name, for files that do not say."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON with the architecture args "
                                          "(a `model: {name, args}` section or the args themselves)."),
    raw: bool = typer.Option(False, "--raw", help="Load the raw weights instead of the EMA ones."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                          help="Allow full unpickling (only for files you trust)."),
):
    """Load a checkpoint, check it fits its architecture, and print what it is."""
    from ssmir.models.loading import CheckpointError, load_model

    name, args = arch, None
    if config is not None:
        name, args = _read_model_config(config, name)
    try:
        model = load_model(checkpoint, name=name, args=args, ema=not raw, trust_pickle=trust_checkpoint)
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    cfg = model.ssmir_config
    n = sum(p.numel() for p in model.parameters())
    typer.echo(f"{checkpoint}: {cfg['name']}, {n:,} parameters, weights load strictly")
    typer.echo(f"args: {cfg['args']}")


def _read_model_config(path: Path, name: str | None):
    import yaml

    if not path.is_file():
        _fail(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        _fail(f"--config {path}: not valid YAML/JSON ({e})")
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return data["model"].get("name", name), data["model"].get("args", {})
    if not isinstance(data, dict):
        _fail(f"--config {path}: expected a mapping of architecture args")
    return name, data


def _fail(message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _model_spec(config: Path | None, model: str | None, weights: Path | None, trust: bool) -> dict:
    """A picklable description of the model to build: {name, args} or {weights, ...}."""
    given = [x for x in (config, model, weights) if x is not None]
    if len(given) != 1:
        _fail("give exactly one of --config FILE, --model NAME, --weights CKPT")
    if config is not None:
        name, args = _read_model_config(config, None)
        if name is None:
            _fail(f"--config {config}: no `model: {{name, args}}` section")
        return {"name": name, "args": args or {}, "label": config.stem}
    if model is not None:
        import ssmir.models as M
        from ssmir.models.zoo import entries

        table = entries()
        if model in table:
            return {"name": table[model].arch, "args": table[model].args, "label": model}
        if model in M.list():
            return {"name": model, "args": {}, "label": model}
        _fail(f"--model {model}: unknown; `ssmir models` lists the architectures and zoo entries")
    if not weights.is_file():
        _fail(f"--weights {weights}: no such file")
    return {"weights": str(weights), "trust": trust, "label": weights.stem}


def _build(spec: dict):
    from ssmir.models.loading import CheckpointError, load_model
    from ssmir.models.registry import create

    try:
        if "weights" in spec:
            return load_model(spec["weights"], trust_pickle=spec.get("trust", False))
        return create(spec["name"], **spec["args"]).eval()
    except (CheckpointError, ValueError, TypeError) as e:
        _fail(str(e))


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x")) if "x" in text.lower() else (int(text), int(text))
    except ValueError:
        _fail(f"--size {text!r}: expected HxW, e.g. 256x256")
    if h < 1 or w < 1:
        _fail(f"--size {text!r}: sizes must be positive")
    return h, w


@app.command("profile")
def profile_cmd(
    config: Path | None = typer.Option(None, "--config", help="YAML with a `model: {name, args}` section."),
    model: str | None = typer.Option(None, "--model", help="Zoo entry or architecture (default args)."),
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint whose file names its architecture."),
    size: str = typer.Option("256x256", "--size", help="Input size HxW (low-resolution size for SR models)."),
    var: bool = typer.Option(False, "--var", help="Sweep sizes 32, 64, ... --max-size; plot growth."),
    max_size: int = typer.Option(1024, "--max-size", help="Largest side of the --var sweep."),
    simple: bool = typer.Option(False, "--simple", help="Totals only, no per-module table."),
    depth: int = typer.Option(2, "--depth", help="Depth of the per-module table."),
    device: str = typer.Option("cpu", "--device", help="Device for latency and memory: cpu, cuda, mps."),
    repeat: int = typer.Option(5, "--repeat", help="Timed runs (median reported) after one warm-up."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of the --var sweep [profile-<model>.png]."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files)."),
):
    """Parameters, FLOPs (multiply-adds), latency and peak memory of one forward pass; --var sweeps the size."""
    from ssmir.profiling.flops import count_flops, module_table
    from ssmir.profiling.measure import MeasureError, doubling_sizes, measure_in_subprocess, sweep

    spec = _model_spec(config, model, weights, trust_checkpoint)
    net = _build(spec)
    label = spec["label"]
    worker_spec = {k: v for k, v in spec.items() if k != "label"}
    params = sum(p.numel() for p in net.parameters())
    typer.echo(f"{label}: {net.ssmir_config['name']}, {params:,} parameters")
    typer.echo("FLOPs: multiply-adds (fvcore convention) from torch.utils.flop_counter; selective scans counted "
               "as 9*B*L*D*N + B*D*L")

    def measure(h, w):
        report = count_flops(net, h, w)
        row = {"gmacs": report.total / 1e9, "scan_gmacs": report.scan / 1e9}
        t = measure_in_subprocess(worker_spec, h, w, device=device, repeat=repeat)
        row.update(latency_ms=t.latency_ms, memory_mib=t.peak_memory_bytes / 2**20)
        return row, report

    from ssmir.eval.inference import min_size, size_multiple

    mult, lo = size_multiple(net), min_size(net)
    if not var:
        h, w = _parse_size(size)
        if h % mult or w % mult or min(h, w) < lo:
            _fail(f"--size {size}: {label} takes sizes that are multiples of {mult} and at least {lo}")
        try:
            row, report = measure(h, w)
        except (MeasureError, RuntimeError) as e:
            _fail(f"{label} at {h}x{w}: {e}")
        typer.echo(f"input {h}x{w}: {row['gmacs']:.2f} GMACs ({row['scan_gmacs']:.2f} in selective scans), "
                   f"latency {row['latency_ms']:.1f} ms (median of {repeat}, {device}), "
                   f"peak memory {row['memory_mib']:.0f} MiB")
        if not simple:
            typer.echo("\n" + module_table(net, report, depth=depth))
        return

    from ssmir.profiling.plots import growth_exponent, plot_sweep

    start = 32
    while start < lo or start % mult:
        start *= 2  # the smallest power of two the model takes
    sizes = doubling_sizes(start, max_size)
    typer.echo(f"sweeping {', '.join(f'{s}x{s}' for s in sizes)} on {device}; stops at the first size that fails\n")
    typer.echo("| size | pixels | GMACs | latency (ms) | peak memory (MiB) |")
    typer.echo("|---|---:|---:|---:|---:|")

    def one(s):
        row, _ = measure(s, s)
        typer.echo(f"| {s}x{s} | {s * s:,} | {row['gmacs']:.2f} | {row['latency_ms']:.1f} | {row['memory_mib']:.0f} |")
        return row

    rows, stopped = sweep(sizes, one)
    if stopped:
        typer.echo(f"\nstopped: {stopped}")
    if rows:
        pixels = [r["size"] ** 2 for r in rows]
        for key, what in (("gmacs", "FLOPs"), ("latency_ms", "latency"), ("memory_mib", "memory")):
            slope = growth_exponent(pixels, [r[key] for r in rows])
            if slope is not None:
                typer.echo(f"growth of {what} with pixels: exponent {slope:.2f}")
        out = plot or Path(f"profile-{label}.png")
        try:
            typer.echo(f"plot: {plot_sweep(rows, f'{label} ({device})', out)}")
        except RuntimeError as e:
            typer.echo(f"no plot: {e}", err=True)


@app.command("erf")
def erf_cmd(
    config: list[Path] = typer.Option([], "--config", help="YAML with a `model: {name, args}` section (repeatable)."),
    model: list[str] = typer.Option([], "--model", help="Zoo entry or architecture (repeatable)."),
    weights: list[Path] = typer.Option([], "--weights", help="Checkpoint (repeatable)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images [scikit-image's samples]."),
    noise: float = typer.Option(0.0, "--noise", help="Gaussian noise sigma (0-255 scale) added to the images."),
    size: int = typer.Option(128, "--size", help="Centre crop size of the images."),
    count: int = typer.Option(8, "--count", help="How many images to average over."),
    compare: bool = typer.Option(False, "--compare", help="Several models side by side, one colour scale."),
    output: Path = typer.Option(Path("erf.png"), "--output", "-o", help="Heatmap PNG to write."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files)."),
):
    """Effective receptive field of the centre output pixel, as a log-scaled heatmap PNG."""
    from tqdm import tqdm

    from ssmir.profiling.erf import effective_receptive_field, load_images, save_heatmaps

    specs = ([_model_spec(c, None, None, False) for c in config] + [_model_spec(None, m, None, False) for m in model]
             + [_model_spec(None, None, w, trust_checkpoint) for w in weights])
    if not specs:
        _fail("give a model: --model NAME, --weights CKPT or --config FILE")
    if len(specs) > 1 and not compare:
        _fail(f"{len(specs)} models given: pass --compare to plot them side by side")
    try:
        imgs = load_images(images, size=size, count=count, noise=noise)
    except (OSError, ValueError, RuntimeError) as e:
        _fail(str(e))
    maps = {}
    for spec in specs:
        net = _build(spec)
        from ssmir.eval.inference import min_size, size_multiple

        if size % size_multiple(net) or size < min_size(net):
            _fail(f"--size {size}: {spec['label']} needs a multiple of {size_multiple(net)} "
                  f"of at least {min_size(net)}")
        maps[spec["label"]] = effective_receptive_field(net, tqdm(imgs, desc=f"erf {spec['label']}", leave=False))
    path = save_heatmaps(maps, output)
    typer.echo(f"ERF of the centre pixel over {len(imgs)} image(s) of {size}x{size}: {path}")


def _collect_inputs(inputs: list[Path], pattern: str | None, recursive: bool) -> list[tuple[Path, Path]]:
    """(file, path relative to the folder it was found in) for every input image."""
    from ssmir.data.io import IMAGE_SUFFIXES

    found = []
    for item in inputs:
        if item.is_dir():
            it = item.rglob(pattern or "*") if recursive else item.glob(pattern or "*")
            found += [(p, p.relative_to(item)) for p in sorted(it)
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            _fail(f"{item}: no such file or folder")
    if not found:
        _fail("no input images found (PNG, JPEG, TIFF, BMP)")
    return found


class _VideoWriter:
    """Frames appended one by one to an MP4 (H.264 through imageio-ffmpeg), so memory stays flat; a no-op with
    a notice when imageio-ffmpeg is missing. Written to a temporary name and renamed when closed."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.frames, self.writer = Path(path), float(fps), 0, None
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            typer.echo("note: no MP4 (pip install 'ssmir[video]' for imageio-ffmpeg); the frames are PNGs")
            self.imageio = None
        else:
            self.imageio = imageio
        self.tmp = self.path.with_name(f".{self.path.stem}.partial.mp4")

    def append(self, color) -> None:
        import numpy as np

        if self.imageio is None:
            return
        frame = np.rint(np.clip(color, 0, 1) * 255).astype(np.uint8)
        frame = np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame
        h, w = frame.shape[:2]
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # H.264 4:2:0 needs even sizes
        if self.writer is None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.writer = self.imageio.get_writer(str(self.tmp), fps=self.fps, codec="libx264", quality=8,
                                                  macro_block_size=1)
        self.writer.append_data(frame)
        self.frames += 1

    def close(self) -> bool:
        if self.writer is None:
            return False
        self.writer.close()
        self.tmp.replace(self.path)
        return True


@app.command("restore")
def restore_cmd(
    inputs: list[Path] | None = typer.Argument(None, help="Image files and/or folders."),
    output: Path = typer.Option(Path("restored"), "--output", "-o", help="Output folder."),
    sample: bool = typer.Option(False, "--sample", help="Restore the bundled noisy sample (a held-out photo with "
                                "sigma-25 noise) and compare it with its clean original."),
    model: str | None = typer.Option(None, "--model", help="Zoo entry or architecture (see `ssmir models`)."),
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint (official, BasicSR or ssmir)."),
    pattern: str | None = typer.Option(None, "--glob", help="File pattern inside folders, e.g. '*.jpg'."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Descend into sub-folders."),
    fmt: str = typer.Option("png", "--format", help="Output format: png, tif or jpg (16-bit kept in png/tif)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (inputs never)."),
    tile: int = typer.Option(512, "--tile", help="Tile size; 0 for whole images."),
    overlap: int = typer.Option(32, "--overlap", help="Tile overlap in pixels."),
    tile_batch: int = typer.Option(1, "--tile-batch", help="Tiles per forward pass."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Self-ensemble over 4 flips (official)."),
    ensemble8: bool = typer.Option(False, "--ensemble8", help="Self-ensemble over 8 flips and rotations."),
    wiener: bool = typer.Option(False, "--wiener", help="Denoisers: refine the output by collaborative Wiener "
                                "filtering (BM3D's second stage, the network's output as pilot): +0.5 dB at sigma 25, "
                                "about 8 s per megapixel on 2 CPU cores."),
    sigma: float | None = typer.Option(None, "--sigma", help="Noise level (0-255) for --wiener [estimated from "
                                       "each image]."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    half: bool = typer.Option(False, "--half", help="Half precision on GPU."),
    compare: bool = typer.Option(False, "--compare", help="Also write <stem>_compare.png: input | output (| gt)."),
    ground_truth: Path | None = typer.Option(None, "--ground-truth", help="Folder of references (same stems): "
                                             "prints PSNR/SSIM."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files)."),
    events: Path | None = typer.Option(None, "--events", help="Event models: the exposure's event file (one input "
                                       "image), or a folder of <image stem>.<ext> event files."),
    exposure: tuple[float, float] | None = typer.Option(None, "--exposure", help="Exposure window START END in the "
                                                        "event file's time unit [the whole stream]."),
    event_reader: str = typer.Option("auto", "--event-reader", help="auto, ssmir, tonic or evlib."),
    timestamps: Path | None = typer.Option(None, "--timestamps", help="Event video (several frames, one --events "
                                           "stream): CSV of 'frame file, start, end' exposures [the stream's span "
                                           "divided evenly among the frames in name order]."),
    video: bool = typer.Option(True, "--video/--no-video", help="Event video: also write OUTPUT/video.mp4 (needs "
                               "imageio-ffmpeg: pip install 'ssmir[video]')."),
    fps: float = typer.Option(25.0, "--fps", help="Frame rate of the event video's MP4."),
):
    """Restore photos of any size (tiled), keeping bit depth and alpha; one line per failed file.

    Without --model/--weights the bundled default model (blind colour denoising) is used. An event model with one
    --events stream and several frames restores them as a video, each frame from its exposure's events."""
    import torch
    from tqdm import tqdm

    from ssmir.data.events import READERS, EventError
    from ssmir.data.io import IMAGE_SUFFIXES, ImageError, save_image
    from ssmir.data.photos import FORMATS, load_photo, save_photo
    from ssmir.eval.metrics import psnr, ssim
    from ssmir.restoration import pick_device, restore_photo

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if sample:
        if inputs:
            _fail("--sample restores the bundled sample: give no input files with it")
        from importlib import resources

        samples = Path(str(resources.files("ssmir").joinpath("samples")))
        inputs, ground_truth, compare = sorted((samples / "noisy").glob("*.png")), samples / "clean", True
    if not inputs:
        _fail("give image files or folders to restore (or --sample for the bundled sample)")
    if ground_truth is not None and not ground_truth.is_dir():
        _fail(f"--ground-truth {ground_truth}: no such folder")
    if event_reader not in READERS:
        _fail(f"--event-reader {event_reader!r}: expected one of {', '.join(READERS)}")
    if events is not None and not events.exists():
        _fail(f"--events {events}: no such file or folder")
    files = _collect_inputs(inputs, pattern, recursive)
    video_mode = events is not None and events.is_file() and len(files) > 1  # one stream, many frames
    if timestamps is not None and not video_mode:
        _fail("--timestamps gives the exposures of an event video: several frames and one --events stream")
    if video_mode and exposure is not None:
        _fail("--exposure is for one image; an event video takes --timestamps (or divides the stream evenly)")
    net = _load_model(model, weights, trust_checkpoint)
    channels = getattr(net, "input_channels", (3,))
    if len(channels) > 1 and events is None:
        _fail("this model takes the exposure's events as well: pass --events FILE or --events FOLDER")
    if len(channels) == 1 and events is not None:
        _fail("--events: this model takes images only")

    windows, stream = {}, None
    if video_mode:
        from ssmir.data.events import frame_exposures, read_events

        try:
            first = load_photo(files[0][0])
            stream = read_events(events, *first.color.shape[:2], reader=event_reader)
            windows = dict(zip((p for p, _ in files), frame_exposures([p for p, _ in files], stream, timestamps),
                               strict=True))
        except (EventError, ImageError) as e:
            _fail(str(e))
        writer = _VideoWriter(output / "video.mp4", fps) if video else None

    def events_for(path: Path):
        if video_mode:
            return stream.sorted_window(*windows[path])
        if events.is_file():
            return events
        found = sorted(p for p in events.glob(f"{path.stem}.*") if p.is_file())
        if not found:
            raise EventError(f"no event file {path.stem}.* in {events}")
        return found[0]
    try:
        dev = pick_device(device)
    except ValueError as e:
        _fail(str(e))
    if sigma is not None and not wiener:
        _fail("--sigma is the noise level of the --wiener refinement: add --wiener")
    if sigma is not None and not 0 <= sigma <= 255:
        _fail(f"--sigma {sigma:g}: expected a noise level in [0, 255]")
    if wiener and events is not None:
        _fail("--wiener refines denoisers' outputs; event models take no --wiener")
    mode = 8 if ensemble8 else 4 if ensemble else 1
    failed, scores = [], []
    bar = tqdm(files, desc="restore", unit="image")
    for path, rel in bar:
        target = output / rel.with_suffix(f".{fmt}")
        if target.resolve() == path.resolve():
            failed.append(path)
            bar.write(f"error: {path}: the output would overwrite the input; choose another --output")
            continue
        if target.exists() and not overwrite:
            bar.write(f"skip: {target} exists (use --overwrite)")
            if video_mode and writer is not None:  # the video keeps every frame: the one already restored
                writer.append(load_photo(target).color)
            continue
        try:
            photo = load_photo(path)
            result = restore_photo(net, photo, dev, tile=tile or None, overlap=overlap, tile_batch=tile_batch,
                                   ensemble=mode, half=half, progress=True, exposure=windows.get(path, exposure),
                                   events=None if events is None else events_for(path), event_reader=event_reader,
                                   wiener=wiener, sigma=sigma)
            save_photo(result, target)
            if video_mode and writer is not None:
                writer.append(result.color)
            out_t = torch.from_numpy(result.color.transpose(2, 0, 1).copy())
            panels = [torch.from_numpy(photo.color.transpose(2, 0, 1).copy()), out_t]
            if ground_truth is not None:
                refs = [p for p in ground_truth.glob(f"{path.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
                if not refs:
                    bar.write(f"warning: no reference {path.stem}.* in {ground_truth}")
                else:
                    gt = torch.from_numpy(load_photo(refs[0]).color.transpose(2, 0, 1).copy())
                    if gt.shape != out_t.shape:
                        bar.write(f"warning: {refs[0]} is {tuple(gt.shape)}, the output {tuple(out_t.shape)}")
                    else:
                        p_, s_ = psnr(out_t, gt), ssim(out_t, gt) if min(gt.shape[-2:]) > 20 else float("nan")
                        scores.append((p_, s_))
                        line = f"{path.name}: PSNR {p_:.2f} dB, SSIM {s_:.4f}"
                        if panels[0].shape == gt.shape:
                            line += f" (input: PSNR {psnr(panels[0], gt):.2f} dB, SSIM {ssim(panels[0], gt):.4f})"
                        bar.write(line)
                        panels.append(gt)
            if compare:
                h = max(t.shape[1] for t in panels)
                panels = [torch.nn.functional.pad(t.expand(3, -1, -1) if t.shape[0] == 1 else t,
                                                  (0, 0, 0, h - t.shape[1])) for t in panels]
                strip = save_image(torch.cat(panels, dim=2), target.with_name(f"{target.stem}_compare.png"))
            if sample:
                bar.write(f"restored: {target}\ncomparison (noisy | restored | clean): {strip}")
        except (ImageError, ValueError, RuntimeError, OSError) as e:
            failed.append(path)
            bar.write(f"error: {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    bar.close()
    if video_mode and writer is not None and writer.close():
        typer.echo(f"video: {writer.path} ({writer.frames} frames at {fps:g} fps)")
    if scores:
        typer.echo(f"mean over {len(scores)} image(s): PSNR {sum(s[0] for s in scores) / len(scores):.2f} dB, "
                   f"SSIM {sum(s[1] for s in scores) / len(scores):.4f}")
    done = len(files) - len(failed)
    tail = f"; {len(failed)} failed" if failed else ""
    typer.echo(f"{done} of {len(files)} image(s) processed into {output}{tail}")
    if failed:
        raise typer.Exit(1)


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="Training YAML: the official EAMamba schema, or a BasicSR "
                                "option file (MambaIR's options/train/*.yml)."),
    output: Path | None = typer.Option(None, "--output", help="Run folder [runs/<config stem>]."),
    resume: str | None = typer.Option(None, "--resume", help="Checkpoint to continue from, 'last', or a BasicSR "
                                      "training_states/<iter>.state."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key.sub=value (repeatable)."),
    init: Path | None = typer.Option(None, "--init", help="Start from these weights (fine-tuning; any checkpoint "
                                     "ssmir loads, EMA weights preferred); same as the config's init_weights."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on CPU even where a GPU exists."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Stop (and save last.pth) after this "
                                          "iteration; resume later with --resume last."),
    time_budget: str | None = typer.Option(None, "--time-budget", help="Fit the run into this wall time (600s, "
                                           "45m, 1.5h): time a short probe, then scale total_iter and the "
                                           "schedule to what fits; the scaled config is written to the run "
                                           "folder."),
    probe_iters: int = typer.Option(40, "--probe-iters", help="Timed iterations of the --time-budget probe "
                                    "(after 5 untimed ones)."),
):
    """Train with the official recipe; `accelerate launch -m ssmir train ...` for several processes."""
    from ssmir.train.config import ConfigError, load_config
    from ssmir.train.data import DataError

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        _fail(str(e))
    if init is not None:
        cfg["init_weights"] = str(init)
    import importlib.util

    missing = [m for m in ("accelerate",) if importlib.util.find_spec(m) is None]
    if missing:
        _fail(f"training needs {', '.join(missing)}: pip install 'ssmir[train]'")
    from ssmir.train.trainer import Trainer, TrainingError
    out = output or Path("runs") / config.stem
    if time_budget is not None:
        cfg = _fit_time_budget(cfg, out, time_budget, probe_iters, resume, stop_after, cpu, workers)
    try:
        trainer = Trainer(cfg, out, base=Path.cwd(), cpu=cpu, workers=workers, stop_after=stop_after)
        target = resume or cfg.get("resume")
        if target:
            trainer.resume(out / "last.pth" if target == "last" else Path(target))
        result = trainer.fit()
    except (ConfigError, DataError, TrainingError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if trainer.acc.is_main_process:
        extra = ""
        if "psnr" in result:
            extra = f", validation PSNR {result['psnr']:.2f} dB"
            if result.get("input_psnr") == result.get("input_psnr"):  # not NaN: the input is comparable
                extra += f" (input {result['input_psnr']:.2f} dB)"
        typer.echo(f"stopped at iteration {result['iteration']}{extra}; checkpoints in {out}")


def _fit_time_budget(cfg: dict, out: Path, budget: str, probe_iters: int, resume, stop_after, cpu: bool,
                     workers: int) -> dict:
    """``cfg`` with its recipe scaled to what fits ``budget`` (``ssmir.train.budget``); the scaled config is
    written to ``out/config.yaml``, from which an interrupted run resumes."""
    import os
    import time

    import yaml

    from ssmir.data.io import atomic_write
    from ssmir.train.budget import BudgetError, iterations_for, parse_duration, probe_rate, scale_schedule
    from ssmir.train.config import ConfigError
    from ssmir.train.data import DataError
    from ssmir.train.trainer import TrainingError

    if resume or cfg.get("resume"):
        _fail(f"--time-budget starts a new run; to resume a budgeted run use --config {out / 'config.yaml'} "
              "--resume last")
    if stop_after is not None:
        _fail("--time-budget and --stop-after: give one of them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("--time-budget works in a single process; under accelerate launch give total_iter or --stop-after")
    if probe_iters < 1:
        _fail(f"--probe-iters {probe_iters}: must be at least 1")
    try:
        seconds = parse_duration(budget)
        start = time.monotonic()
        rate = probe_rate(cfg, out / ".budget-probe", Path.cwd(), cpu=cpu, workers=workers, count=probe_iters)
        left = seconds - (time.monotonic() - start)
        n = iterations_for(cfg, left, rate)
        if n < 1:
            raise BudgetError(f"--time-budget {budget}: nothing fits; the probe took {seconds - left:.0f} s at "
                              f"{rate:.3f} s per iteration")
        scaled = scale_schedule(cfg, n)
    except (BudgetError, ConfigError, DataError, TrainingError, ValueError) as e:
        _fail(str(e))
    atomic_write(out / "config.yaml", lambda t: Path(t).write_text(yaml.safe_dump(scaled, sort_keys=False)))
    typer.echo(f"time budget {budget}: {rate:.3f} s per iteration over {probe_iters} probe iterations, "
               f"{left:.0f} s left -> {n} iterations (the config: {cfg['total_iter']}), schedule scaled by "
               f"{n / cfg['total_iter']:.3g}; scaled config in {out / 'config.yaml'}")
    return scaled


def _load_model(arch: str | None, weights: Path | None, trust: bool):
    """The model to run (``ssmir.restoration.resolve_model``), or a one-line error."""
    from ssmir.models.loading import CheckpointError
    from ssmir.restoration import resolve_model

    try:
        return resolve_model(arch, weights, trust)
    except (CheckpointError, ValueError, NotImplementedError, FileNotFoundError) as e:
        _fail(str(e))


@app.command("test")
def test_cmd(
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint to evaluate (official, BasicSR, ssmir)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Benchmark name (see --list)."),
    root: Path | None = typer.Option(None, "--root", help="The dataset's folder."),
    test_config: Path | None = typer.Option(None, "--test-config", help="An official configs/test/*.yaml."),
    config: Path | None = typer.Option(None, "--config", help="A BasicSR test option file (MambaIR's "
                                       "options/test/*.yml): every test set, scored as BasicSR scores it."),
    set_: list[str] = typer.Option([], "--set", help="With --config: override a key, e.g. "
                                   "datasets.test_1.dataroot_gt=DIR (repeatable)."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture or zoo entry, for files that do not say."),
    sigma: float | None = typer.Option(None, "--sigma", help="Noise level (0-255) for denoising sets."),
    scale: int | None = typer.Option(None, "--scale", help="SR scale: selects the inputs and the border crop."),
    quality: int | None = typer.Option(None, "--quality", help="JPEG quality for artefact-removal sets."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Self-ensemble over the 4 flips (official)."),
    ensemble8: bool = typer.Option(False, "--ensemble8", help="Self-ensemble over 8 flips and rotations."),
    tile: int | None = typer.Option(None, "--tile", help="Tile size for large images (default: whole image, or "
                                    "the official quadrant split where the dataset or config has one)."),
    overlap: int = typer.Option(32, "--overlap", help="Tile overlap in pixels."),
    save: Path | None = typer.Option(None, "--save", help="Folder for the restored images."),
    output: Path | None = typer.Option(None, "--output", help="Folder for per_image.csv and summaries "
                                       "[results/<dataset>]."),
    device: str = typer.Option("cpu", "--device"),
    list_datasets: bool = typer.Option(False, "--list", help="List the datasets and their layouts, then exit."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files)."),
):
    """Evaluate on a benchmark with its metric convention; per-image CSV and markdown/JSON summaries."""
    import yaml

    from ssmir.data.benchmarks import DatasetError, benchmark_from_config, describe_layouts, load_benchmark
    from ssmir.eval.tester import evaluate, write_results

    if list_datasets:
        typer.echo(describe_layouts())
        return
    if config is not None:
        if dataset or test_config or ensemble or ensemble8 or tile or arch:
            _fail("--config runs the option file as BasicSR does: --dataset, --test-config, --arch, --ensemble, "
                  "--ensemble8 and --tile do not apply")
        _test_basicsr(config, set_, weights, save, output, device, trust_checkpoint)
        return
    if set_:
        _fail("--set applies to --config option files")
    try:
        if test_config is not None:
            if not test_config.is_file():
                _fail(f"--test-config {test_config}: no such file")
            spec = yaml.safe_load(test_config.read_text())
            bench = benchmark_from_config(spec, Path.cwd(), scale)
        elif dataset is None or root is None:
            _fail("give --dataset NAME --root DIR, or --test-config FILE (`ssmir test --list` shows the datasets)")
        else:
            bench = load_benchmark(dataset, root, sigma=sigma, scale=scale, quality=quality)
    except DatasetError as e:
        _fail(str(e))
    if weights is None:
        _fail("--weights CKPT is required")
    model = _load_model(arch, weights, trust_checkpoint)
    mode = 8 if ensemble8 else 4 if ensemble else 1
    try:
        rows, summary = evaluate(model, bench, ensemble=mode, tile=tile, overlap=overlap, device=device,
                                 save_dir=save)
    except (DatasetError, NotImplementedError, ValueError) as e:
        _fail(str(e))
    files = write_results(rows, summary, output or Path("results") / bench.name)
    typer.echo(f"{bench.name} ({bench.task}; {summary['metric']}; ensemble x{mode}): "
               f"PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f} over {summary['images']} images, "
               f"{summary['seconds_per_image']:.2f} s/image")
    typer.echo(f"results: {files['csv']}, {files['md']}, {files['json']}")


def _test_basicsr(config: Path, overrides: list[str], weights: Path | None, save: Path | None, output: Path | None,
                  device: str, trust: bool):
    from ssmir.data.benchmarks import DatasetError
    from ssmir.eval.basicsr import OptionError, evaluate_options, load_network, read_options
    from ssmir.eval.tester import write_results
    from ssmir.models.loading import CheckpointError

    try:
        opt = read_options(config, overrides)
        model = load_network(opt, weights, trust)
        results = evaluate_options(opt, model, Path.cwd(), device=device, save_dir=save)
    except (OptionError, DatasetError, CheckpointError, NotImplementedError, ValueError) as e:
        _fail(f"{config}: {e}")
    root = output or Path("results") / str(opt.get("name", config.stem))
    for test_set, rows, summary in results:
        files = write_results(rows, summary, root / test_set.name)
        scores = ", ".join(f"{k} {summary[k]:.4f}" for k in opt["val"]["metrics"])
        typer.echo(f"{test_set.name}: {scores} over {summary['images']} images ({summary['metric']}), "
                   f"{summary['seconds_per_image']:.2f} s/image; {files['csv']}")


export_app = typer.Typer(help="Write results in the layouts official evaluation scripts read, or a model as ONNX.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("sidd")
def export_sidd_cmd(
    weights: Path = typer.Option(..., "--weights"),
    root: Path = typer.Option(..., "--root", help="Folder with ValidationNoisyBlocksSrgb.mat."),
    output: Path = typer.Option(Path("results/SIDD"), "--output"),
    name: str | None = typer.Option(None, "--name", help="File name prefix [checkpoint stem]."),
    arch: str | None = typer.Option(None, "--arch"),
    ensemble: bool = typer.Option(False, "--ensemble"),
    device: str = typer.Option("cpu", "--device"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
):
    """SIDD submission: <name>_Idenoised.mat with key Idenoised, float32 (40, 32, 256, 256, 3)."""
    from ssmir.data.benchmarks import DatasetError
    from ssmir.export import export_sidd

    model = _load_model(arch, weights, trust_checkpoint)
    try:
        path = export_sidd(model, root, output, name or weights.stem, device, 4 if ensemble else 1)
    except DatasetError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


@export_app.command("deblur")
def export_deblur_cmd(
    weights: Path = typer.Option(..., "--weights"),
    input_dir: Path = typer.Option(..., "--input", help="Folder of blurry images (e.g. GoPro test/input)."),
    output: Path = typer.Option(Path("results"), "--output"),
    dataset: str = typer.Option("GoPro", "--dataset", help="Sub-folder name: GoPro or HIDE."),
    arch: str | None = typer.Option(None, "--arch"),
    ensemble: bool = typer.Option(False, "--ensemble"),
    device: str = typer.Option("cpu", "--device"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
):
    """GoPro/HIDE: <output>/<dataset>/<stem>.png for the official MATLAB evaluation."""
    from ssmir.export import export_deblur

    if not input_dir.is_dir():
        _fail(f"--input {input_dir}: no such folder")
    model = _load_model(arch, weights, trust_checkpoint)
    try:
        folder = export_deblur(model, input_dir, output, dataset, device, 4 if ensemble else 1)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote {folder}")



@export_app.command("onnx")
def export_onnx_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    size: str = typer.Option(..., "--size", help="Input HxW the graph is traced at (the model's multiples)."),
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint: official .pth, BasicSR .pth or ssmir "
                                        ".safetensors."),
    model: str | None = typer.Option(None, "--model", help="Zoo entry or architecture (with --weights for files "
                                     "that do not say; alone: the bundled weights, else the initial weights)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with a `model: {name, args}` section "
                                       "(initial weights; with --weights, those)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset [the exporter's default]."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Height and width as graph dimensions (one file for "
                                 "every size); not every architecture can."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
):
    """A model as an ONNX graph of standard operators, checked with onnx.checker and against PyTorch in ONNX Runtime."""
    from ssmir.deploy.onnx import ExportError, export_onnx

    h, w = _parse_size(size)
    if config is not None:
        if model is not None:
            _fail("give --config or --model, not both")
        net = _build(_model_spec(config, None, None, False))
        if weights is not None:
            from ssmir.models.loading import CheckpointError, load_state_dict_strict, read_checkpoint

            try:
                load_state_dict_strict(net, read_checkpoint(weights, trust_pickle=trust_checkpoint)[0], str(weights))
            except CheckpointError as e:
                _fail(str(e))
    elif weights is not None:
        net = _load_model(model, weights, trust_checkpoint)
    elif model is not None:
        from ssmir.models.zoo import entries

        if model in entries() and entries()[model].bundled_weights:
            net = _load_model(model, None, trust_checkpoint)
        else:
            typer.echo(f"note: --model {model} without --weights: exporting its initial (untrained) weights", err=True)
            net = _build(_model_spec(None, model, None, False))
    else:
        _fail("give a model: --weights CKPT, --model NAME [--weights CKPT] or --config YAML")
    if output.suffix.lower() != ".onnx":
        _fail(f"--output {output}: expected a .onnx file name")
    try:
        report = export_onnx(net.eval(), output, h, w, opset=opset, dynamic=dynamic)
    except ExportError as e:
        _fail(str(e))
    typer.echo(report.describe())


if __name__ == "__main__":
    app()
