"""Event streams for EmambaIR: reading, validation, voxel grids, and an ESIM-style simulator.

An event is (x, y, t, p): pixel column and row, timestamp, polarity (+1 brighter, -1 darker; files that
store 0/1 are mapped to -1/+1).

Formats read by ``read_events``:

- ``.npz``: arrays ``x``, ``y``, ``t``, ``p``; or one ``events`` array of rows ``(t, x, y, p)``.
- ``.h5`` / ``.hdf5`` (needs h5py): ``events/xs``, ``events/ys``, ``events/ts``, ``events/ps`` (the layout of
  the event-deblurring releases built on EFNet's tools, e.g. GoPro-event and REBlur), or top-level ``x``, ``y``,
  ``t``, ``p``.
- ``.txt`` / ``.csv``: one event per line, ``t x y p`` (spaces or commas); an optional first line ``width height``
  (the rpg/ESIM text format) is recognised and skipped.
- through `tonic` (``pip install tonic``): ``.bin`` (N-MNIST / N-Caltech101 files) and ``.aedat4`` (DV/iniVation;
  tonic needs the ``aedat`` package for it). Timestamps in microseconds.
- through `evlib` (``pip install evlib``): Prophesee ``.raw`` (EVT2/EVT2.1/EVT3) and ``.dat``, ``.aedat``
  (AEDAT 2/3), and whatever else evlib detects. Timestamps in microseconds (evlib's convention).

``reader="auto"`` uses ssmir's own reader for its formats, tonic for ``.bin`` / ``.aedat4`` and evlib for the
rest; ``reader="tonic"`` / ``"evlib"`` forces a library, ``"ssmir"`` forbids them.

The voxel grid (``events_to_voxel``) is the one of E2VID and EFNet: timestamps in the exposure window are
mapped to [0, bins - 1], each event's polarity is split between its two neighbouring bins in proportion
to the distance (bilinear in time), and the grid is then normalised to zero mean and unit standard
deviation over its non-zero cells (``normalize="nonzero"``; ``"none"`` keeps raw sums).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class EventError(ValueError):
    """An event file or stream that cannot be used."""


@dataclass
class Events:
    x: np.ndarray  # int64 columns
    y: np.ndarray  # int64 rows
    t: np.ndarray  # float64 timestamps
    p: np.ndarray  # float32, +1 / -1

    def __len__(self) -> int:
        return len(self.t)

    def window(self, t_start: float, t_end: float) -> Events:
        """The events with ``t_start <= t <= t_end``."""
        keep = (self.t >= t_start) & (self.t <= t_end)
        return Events(self.x[keep], self.y[keep], self.t[keep], self.p[keep])

    def sorted_window(self, t_start: float, t_end: float) -> Events:
        """``window`` of a time-sorted stream (as ``make_events`` leaves it) by binary search: views, no copy."""
        lo, hi = np.searchsorted(self.t, t_start, "left"), np.searchsorted(self.t, t_end, "right")
        return Events(self.x[lo:hi], self.y[lo:hi], self.t[lo:hi], self.p[lo:hi])


def make_events(x, y, t, p, height: int | None = None, width: int | None = None, source: str = "events") -> Events:
    """Validate and normalise raw arrays into ``Events``; sorts by time (stably) when needed.

    Raises ``EventError`` naming ``source`` for unequal lengths, non-finite or non-integer coordinates,
    coordinates outside a ``height`` x ``width`` frame, non-finite timestamps or unknown polarities.
    """
    arrays = [np.asarray(a).reshape(-1) for a in (x, y, t, p)]
    if len({len(a) for a in arrays}) != 1:
        raise EventError(f"{source}: x, y, t, p have different lengths {[len(a) for a in arrays]}")
    x, y, t, p = arrays
    for name, c in (("x", x), ("y", y)):
        if not np.all(np.isfinite(c)) or np.any(np.asarray(c, dtype=np.float64) % 1 != 0):
            raise EventError(f"{source}: {name} coordinates must be whole pixel indices")
    x, y = x.astype(np.int64), y.astype(np.int64)
    if len(x) and (x.min() < 0 or y.min() < 0):
        raise EventError(f"{source}: negative pixel coordinates")
    if height is not None and width is not None and len(x) and (x.max() >= width or y.max() >= height):
        raise EventError(f"{source}: events at x up to {x.max()}, y up to {y.max()} fall outside the "
                         f"{width}x{height} frame")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise EventError(f"{source}: non-finite timestamps")
    values = set(np.unique(p).tolist())
    if not values <= {-1, 0, 1}:
        raise EventError(f"{source}: polarities must be 0/1 or -1/+1, found {sorted(values)[:5]}")
    p = np.where(p > 0, 1.0, -1.0).astype(np.float32)
    if len(t) > 1 and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        x, y, t, p = x[order], y[order], t[order], p[order]
    return Events(x, y, t, p)


OWN_SUFFIXES = (".npz", ".h5", ".hdf5", ".txt", ".csv")
TONIC_SUFFIXES = (".bin", ".aedat4")
READERS = ("auto", "ssmir", "tonic", "evlib")


def _field(arr: np.ndarray, path: Path, *names: str) -> np.ndarray:
    for name in names:
        if name in (arr.dtype.names or ()):
            return arr[name]
    raise EventError(f"{path}: the reader returned no {names[0]!r} field (fields: {arr.dtype.names})")


def _read_with_tonic(path: Path) -> tuple:
    try:
        import tonic.io
    except ImportError:
        raise EventError(f"{path}: reading {path.suffix} events needs tonic (pip install tonic)") from None
    suffix = path.suffix.lower()
    if suffix == ".bin":
        arr = tonic.io.read_mnist_file(str(path), dtype=tonic.io.events_struct)
    elif suffix == ".aedat4":
        arr = tonic.io.read_aedat4(str(path))
    else:
        raise EventError(f"{path}: tonic reads .bin (N-MNIST) and .aedat4 files here, not {suffix!r}")
    return (_field(arr, path, "x"), _field(arr, path, "y"), _field(arr, path, "t", "timestamp"),
            _field(arr, path, "p", "polarity", "on"))


def _read_with_evlib(path: Path) -> tuple:
    try:
        import evlib
    except ImportError:
        raise EventError(f"{path}: reading {path.suffix or 'these'} events needs evlib (pip install evlib)") from None
    frame = evlib.load_events(str(path)).collect()
    t = frame["t"]
    t = t.dt.total_microseconds() if t.dtype.is_temporal() else t  # evlib: a microsecond Duration column
    return frame["x"].to_numpy(), frame["y"].to_numpy(), t.to_numpy(), frame["polarity"].to_numpy()


def read_events(path: str | Path, height: int | None = None, width: int | None = None,
                reader: str = "auto") -> Events:
    """Read an event file (see the module docstring for the formats and ``reader``); validated against the
    frame size if given."""
    path = Path(path)
    if reader not in READERS:
        raise EventError(f"event reader {reader!r}: expected one of {', '.join(READERS)}")
    if not path.is_file():
        raise EventError(f"{path}: no such event file")
    suffix = path.suffix.lower()
    if reader == "auto":
        reader = "ssmir" if suffix in OWN_SUFFIXES else "tonic" if suffix in TONIC_SUFFIXES else "evlib"
    try:
        if reader == "tonic":
            cols = _read_with_tonic(path)
        elif reader == "evlib":
            cols = _read_with_evlib(path)
        elif suffix == ".npz":
            with np.load(path) as f:
                if all(k in f for k in "xytp"):
                    cols = f["x"], f["y"], f["t"], f["p"]
                elif "events" in f:
                    ev = f["events"]
                    cols = ev[:, 1], ev[:, 2], ev[:, 0], ev[:, 3]
                else:
                    raise EventError(f"{path}: expected arrays x, y, t, p or events; found {list(f.keys())}")
        elif suffix in (".h5", ".hdf5"):
            try:
                import h5py
            except ImportError:
                raise EventError(f"{path}: reading HDF5 events needs h5py (pip install h5py)") from None
            with h5py.File(path, "r") as f:
                if "events" in f and all(k in f["events"] for k in ("xs", "ys", "ts", "ps")):
                    g = f["events"]
                    cols = g["xs"][:], g["ys"][:], g["ts"][:], g["ps"][:]
                elif all(k in f for k in "xytp"):
                    cols = f["x"][:], f["y"][:], f["t"][:], f["p"][:]
                else:
                    raise EventError(f"{path}: expected events/xs, events/ys, events/ts, events/ps or x, y, t, p")
        elif suffix in (".txt", ".csv"):
            rows = []
            for i, line in enumerate(path.read_text().splitlines()):
                parts = line.replace(",", " ").split()
                if not parts or parts[0].startswith("#"):
                    continue
                if i == 0 and len(parts) == 2:  # "width height" header
                    continue
                if len(parts) != 4:
                    raise EventError(f"{path}:{i + 1}: expected 't x y p', got {line!r}")
                rows.append([float(v) for v in parts])
            arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
            cols = arr[:, 1], arr[:, 2], arr[:, 0], arr[:, 3]
        else:
            raise EventError(f"{path}: unknown event format {suffix!r} (ssmir reads .npz, .h5, .txt and .csv; "
                             "tonic and evlib read more)")
    except EventError:
        raise
    except Exception as e:
        raise EventError(f"{path}: cannot read events ({e})") from None
    return make_events(*cols, height=height, width=width, source=str(path))


def events_to_voxel(events: Events, bins: int, height: int, width: int, t_start: float | None = None,
                    t_end: float | None = None, normalize: str = "nonzero") -> torch.Tensor:
    """(bins, height, width) float32 voxel grid of the events in [t_start, t_end] (default: all of them)."""
    if bins < 1:
        raise ValueError(f"voxel grid: bins must be >= 1, got {bins}")
    if normalize not in ("nonzero", "none"):
        raise ValueError(f"voxel grid: normalize must be 'nonzero' or 'none', got {normalize!r}")
    if len(events):
        if events.x.max() >= width or events.y.max() >= height:  # the whole stream must belong to this frame
            raise EventError(f"events reach x={events.x.max()}, y={events.y.max()}, outside the {width}x{height} "
                             "frame")
        t0 = events.t[0] if t_start is None else t_start
        t1 = events.t[-1] if t_end is None else t_end
        events = events.window(t0, t1)
    grid = np.zeros(bins * height * width, dtype=np.float64)
    if len(events):
        span = t1 - t0
        ts = (bins - 1) * (events.t - t0) / span if span > 0 and bins > 1 else np.zeros(len(events))
        left = np.floor(ts).astype(np.int64)
        frac = ts - left
        pix = events.y * width + events.x
        for b, weight in ((left, 1.0 - frac), (left + 1, frac)):
            ok = b < bins
            np.add.at(grid, b[ok] * height * width + pix[ok], events.p[ok] * weight[ok])
    grid = grid.reshape(bins, height, width)
    if normalize == "nonzero":
        nonzero = grid != 0
        n = nonzero.sum()
        if n > 0:
            mean = grid.sum() / n
            std = np.sqrt(max((grid**2).sum() / n - mean**2, 0.0))
            grid = np.where(nonzero, (grid - mean) / (std if std > 0 else 1.0), 0.0)
    return torch.from_numpy(grid.astype(np.float32))


def simulate_events(frames: np.ndarray, timestamps: np.ndarray, contrast_threshold: float = 0.2,
                    threshold_sigma: float = 0.0, noise_rate: float = 0.0, eps: float = 1e-3,
                    seed: int = 0) -> Events:
    """ESIM-style events from a sequence of frames (T, H, W) in [0, 1] at ``timestamps`` (T,).

    Each pixel keeps a reference log intensity; between two frames its log intensity is interpolated
    linearly, and every crossing of the reference +/- its contrast threshold emits an event at the
    interpolated crossing time and moves the reference. Thresholds are drawn per pixel and polarity from
    N(contrast_threshold, threshold_sigma); ``noise_rate`` adds uniformly random events (events per pixel
    per unit time).
    """
    frames = np.asarray(frames, dtype=np.float64)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if frames.ndim != 3 or len(frames) != len(timestamps) or len(frames) < 2:
        raise ValueError("simulate_events: frames (T >= 2, H, W) and T timestamps are required")
    if np.any(np.diff(timestamps) <= 0):
        raise ValueError("simulate_events: timestamps must increase")
    rng = np.random.default_rng(seed)
    _, h, w = frames.shape
    c_pos = np.clip(rng.normal(contrast_threshold, threshold_sigma, (h, w)), 0.01, None)
    c_neg = np.clip(rng.normal(contrast_threshold, threshold_sigma, (h, w)), 0.01, None)
    log = np.log(frames + eps)
    ref = log[0].copy()
    xs, ys, ts, ps = [], [], [], []
    for k in range(1, len(frames)):
        prev, cur = log[k - 1], log[k]
        t_prev, t_cur = timestamps[k - 1], timestamps[k]
        delta = cur - prev
        while True:
            up = cur >= ref + c_pos
            down = cur <= ref - c_neg
            fire = up | down
            if not fire.any():
                break
            level = np.where(up, ref + c_pos, ref - c_neg)
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(delta != 0, (level - prev) / delta, 1.0)
            frac = np.clip(frac, 0.0, 1.0)
            yy, xx = np.nonzero(fire)
            xs.append(xx)
            ys.append(yy)
            ts.append(t_prev + frac[yy, xx] * (t_cur - t_prev))
            ps.append(np.where(up[yy, xx], 1.0, -1.0))
            ref = np.where(fire, level, ref)
    if noise_rate > 0:
        n = rng.poisson(noise_rate * h * w * (timestamps[-1] - timestamps[0]))
        xs.append(rng.integers(0, w, n))
        ys.append(rng.integers(0, h, n))
        ts.append(rng.uniform(timestamps[0], timestamps[-1], n))
        ps.append(rng.choice([-1.0, 1.0], n))
    if not xs:
        return make_events([], [], [], [], h, w, source="simulator")
    return make_events(np.concatenate(xs), np.concatenate(ys), np.concatenate(ts), np.concatenate(ps), h, w,
                       source="simulator")


def blur_from_frames(frames: np.ndarray) -> np.ndarray:
    """The blurry exposure of a sharp sequence: the mean of its frames (T, ...) -> (...)."""
    return np.asarray(frames, dtype=np.float64).mean(axis=0)


def frame_exposures(frames: list[Path], stream: Events,
                    timestamps: str | Path | None = None) -> list[tuple[float, float]]:
    """The exposure window (start, end) of each frame of a video restored from one event stream.

    ``timestamps``: a CSV file of ``frame file, start, end`` rows (the frame matched by file name; a header row
    and ``#`` comments are skipped), in the stream's time unit. Without it the stream's span is divided evenly
    among the frames in the order given.
    """
    if not len(stream):
        raise EventError("the event stream is empty: no exposure windows to give the frames")
    if timestamps is None:
        edges = np.linspace(float(stream.t[0]), float(stream.t[-1]), len(frames) + 1)
        return [(float(edges[i]), float(edges[i + 1])) for i in range(len(frames))]
    path = Path(timestamps)
    if not path.is_file():
        raise EventError(f"--timestamps {path}: no such file")
    table = {}
    for i, line in enumerate(path.read_text().splitlines()):
        parts = [c.strip() for c in line.split(",")]
        if not parts[0] or parts[0].startswith("#"):
            continue
        if len(parts) != 3:
            raise EventError(f"{path}:{i + 1}: expected 'frame file, start, end', got {line!r}")
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            if i == 0:
                continue  # a header
            raise EventError(f"{path}:{i + 1}: start and end must be numbers, got {line!r}") from None
        if not end > start:
            raise EventError(f"{path}:{i + 1}: the exposure ends ({end}) before it starts ({start})")
        table[Path(parts[0]).name] = (start, end)
    missing = [f.name for f in frames if f.name not in table]
    if missing:
        raise EventError(f"{path}: no exposure for {len(missing)} frame(s), e.g. {missing[0]}")
    return [table[f.name] for f in frames]
