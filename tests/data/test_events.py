"""Event streams: readers, validation, voxel grids of hand-made events, and the simulator."""

import math

import numpy as np
import pytest
import torch

from ssmir.data.events import (
    EventError,
    blur_from_frames,
    events_to_voxel,
    make_events,
    read_events,
    simulate_events,
)


def test_voxel_grid_of_hand_made_events_is_known():
    # window [0, 1], 3 bins: t=0 -> bin 0; t=0.25 -> halfway between bins 0 and 1; t=0.5 -> bin 1; t=1 -> bin 2
    ev = make_events(x=[0, 1, 2, 3], y=[0, 0, 1, 1], t=[0.0, 0.25, 0.5, 1.0], p=[1, 0, 1, 1], height=2, width=4)
    grid = events_to_voxel(ev, bins=3, height=2, width=4, normalize="none")
    want = torch.zeros(3, 2, 4)
    want[0, 0, 0] = 1.0
    want[0, 0, 1] = -0.5  # polarity 0 means -1
    want[1, 0, 1] = -0.5
    want[1, 1, 2] = 1.0
    want[2, 1, 3] = 1.0
    torch.testing.assert_close(grid, want)


def test_events_accumulate_and_the_window_filters():
    ev = make_events(x=[1, 1, 1], y=[0, 0, 0], t=[10.0, 10.0, 30.0], p=[1, 1, -1], height=1, width=2)
    grid = events_to_voxel(ev, bins=2, height=1, width=2, t_start=10.0, t_end=20.0, normalize="none")
    torch.testing.assert_close(grid, torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]]))


def test_nonzero_normalisation_gives_zero_mean_unit_std_over_events():
    rng = np.random.default_rng(0)
    ev = make_events(rng.integers(0, 8, 200), rng.integers(0, 6, 200), np.sort(rng.random(200)),
                     rng.integers(0, 2, 200), 6, 8)
    grid = events_to_voxel(ev, bins=5, height=6, width=8).numpy()
    vals = grid[grid != 0]
    assert abs(vals.mean()) < 1e-5 and abs(vals.std() - 1) < 1e-4


def test_validation_errors_name_the_problem():
    with pytest.raises(EventError, match="outside the 4x2 frame"):
        make_events([5], [0], [0.0], [1], height=2, width=4)
    with pytest.raises(EventError, match="whole pixel"):
        make_events([0.5], [0], [0.0], [1])
    with pytest.raises(EventError, match="polarities"):
        make_events([0], [0], [0.0], [3])
    with pytest.raises(EventError, match="different lengths"):
        make_events([0, 1], [0], [0.0], [1])
    unsorted = make_events([0, 1, 2], [0, 0, 0], [3.0, 1.0, 2.0], [1, 0, 1])
    with pytest.raises(EventError, match="x=2, y=0, outside the 2x1 frame"):  # even outside the exposure window
        events_to_voxel(unsorted, bins=2, height=1, width=2, t_start=0.0, t_end=1.5)
    assert unsorted.t.tolist() == [1.0, 2.0, 3.0] and unsorted.x.tolist() == [1, 2, 0]


def test_readers_for_npz_txt_and_h5(tmp_path):
    x, y, t, p = np.array([0, 2]), np.array([1, 0]), np.array([0.1, 0.2]), np.array([1, 0])
    np.savez(tmp_path / "a.npz", x=x, y=y, t=t, p=p)
    np.savez(tmp_path / "b.npz", events=np.stack([t, x, y, p], 1))
    (tmp_path / "c.txt").write_text("3 2\n0.1 0 1 1\n0.2 2 0 0\n")
    for name in ("a.npz", "b.npz", "c.txt"):
        ev = read_events(tmp_path / name, height=2, width=3)
        assert ev.x.tolist() == [0, 2] and ev.p.tolist() == [1.0, -1.0]
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for k, v in (("xs", x), ("ys", y), ("ts", t), ("ps", p)):
            f.create_dataset(f"events/{k}", data=v)
    assert read_events(tmp_path / "d.h5").t.tolist() == [0.1, 0.2]


def test_reader_errors(tmp_path):
    with pytest.raises(EventError, match="no such event file"):
        read_events(tmp_path / "none.npz")
    (tmp_path / "bad.txt").write_text("0.1 0 1\n")
    with pytest.raises(EventError, match="expected 't x y p'"):
        read_events(tmp_path / "bad.txt")
    np.savez(tmp_path / "e.npz", q=np.zeros(3))
    with pytest.raises(EventError, match="expected arrays"):
        read_events(tmp_path / "e.npz")
    (tmp_path / "x.dat").write_text("")
    with pytest.raises(EventError, match="unknown event format"):
        read_events(tmp_path / "x.dat", reader="ssmir")
    with pytest.raises(EventError, match="x.dat"):  # auto: evlib's turn; its failure still names the file
        read_events(tmp_path / "x.dat")
    with pytest.raises(EventError, match="event reader 'nope'"):
        read_events(tmp_path / "e.npz", reader="nope")


def test_tonic_reads_n_mnist_bin_files(tmp_path):
    pytest.importorskip("tonic")
    events = [(3, 4, 10, 1), (5, 6, 70000, 0), (0, 1, 8_000_000, 1)]  # the last needs all 23 timestamp bits
    raw = bytearray()
    for x, y, t, p in events:  # the N-MNIST record: x, y, polarity bit + 23-bit timestamp (big-endian)
        raw += bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 255, t & 255])
    (tmp_path / "digit.bin").write_bytes(bytes(raw))
    ev = read_events(tmp_path / "digit.bin", height=8, width=8)
    assert ev.x.tolist() == [3, 5, 0] and ev.y.tolist() == [4, 6, 1]
    assert ev.t.tolist() == [10, 70000, 8_000_000] and ev.p.tolist() == [1, -1, 1]
    with pytest.raises(EventError, match="outside the 4x4 frame"):
        read_events(tmp_path / "digit.bin", height=4, width=4)


def test_evlib_reads_the_same_events_as_ssmir(tmp_path):
    evlib = pytest.importorskip("evlib")
    x, y, t, p = np.array([1, 2, 0, 3]), np.array([0, 1, 2, 2]), np.array([0.3, 0.1, 0.2, 0.4]), np.array([1, 0, 1, 0])
    evlib.save_events_to_text(x, y, t, p, str(tmp_path / "ev.txt"))
    ours = read_events(tmp_path / "ev.txt")
    theirs = read_events(tmp_path / "ev.txt", height=3, width=4, reader="evlib")
    assert ours.t.tolist() == [0.1, 0.2, 0.3, 0.4]  # sorted on reading
    np.testing.assert_allclose(theirs.t, ours.t * 1e6)  # evlib reports microseconds
    for a, b in ((ours.x, theirs.x), (ours.y, theirs.y), (ours.p, theirs.p)):
        assert a.tolist() == b.tolist()


def test_simulator_counts_contrast_crossings():
    frames = np.full((2, 2, 3), 0.5)
    frames[1, 0, 0] = 0.9  # brighter
    frames[1, 1, 2] = 0.1  # darker
    ev = simulate_events(frames, np.array([0.0, 1.0]), contrast_threshold=0.2, eps=0.0)
    up = ev.p > 0
    assert up.sum() == math.floor(math.log(0.9 / 0.5) / 0.2)
    assert (~up).sum() == math.floor(math.log(0.5 / 0.1) / 0.2)
    assert set(zip(ev.x[up].tolist(), ev.y[up].tolist(), strict=True)) == {(0, 0)}
    assert set(zip(ev.x[~up].tolist(), ev.y[~up].tolist(), strict=True)) == {(2, 1)}
    assert np.all(np.diff(ev.t) >= 0) and ev.t.min() > 0 and ev.t.max() <= 1
    # crossing times follow the linear interpolation of log intensity
    first = ev.t[up][0]
    assert first == pytest.approx(0.2 / math.log(0.9 / 0.5))


def test_blur_is_the_mean_of_the_exposure():
    frames = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    np.testing.assert_allclose(blur_from_frames(frames), np.full((2, 2), 0.5))
