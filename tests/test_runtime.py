import subprocess
import sys

import pytest

CHECK = """
import ctypes, resource, sys
import ssmir.runtime as rt
applied = rt.apply_from_environment()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 64 MB blocks: above glibc's largest dynamic mmap threshold
    buf = ctypes.create_string_buffer(64 << 20)
    del buf
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def _run(env_value: str | None) -> tuple[int, int]:
    import os

    env = dict(os.environ)
    env.pop("SSMIR_RETAIN_FREED_MEMORY", None)
    if env_value is not None:
        env["SSMIR_RETAIN_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return int(applied), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults():
    """With the setting, freed 64 MB blocks are reused (a few faults for the first one only); with
    SSMIR_RETAIN_FREED_MEMORY=0, each block is mapped afresh and faults on every page."""
    applied, faults_kept = _run(None)
    off, faults_default = _run("0")
    if not applied:
        pytest.skip("not glibc: mallopt is unavailable")
    assert off == 0
    pages = (64 << 20) // 4096
    assert faults_kept < 2 * pages  # the first block's pages only
    assert faults_default > 10 * pages  # every block, every page


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_command_applies_it_unless_told_not_to():
    import os

    code = ("from typer.testing import CliRunner; from ssmir.cli import app; import ssmir.runtime as rt; "
            "assert CliRunner().invoke(app, ['models']).exit_code == 0; print(int(rt._applied))")
    results = {}
    for value in ("1", "0"):
        env = dict(os.environ, SSMIR_RETAIN_FREED_MEMORY=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        results[value] = out.stdout.split()[-1]
    assert results["0"] == "0"
    assert results["1"] in ("0", "1")  # 0 only where glibc's mallopt is missing
    if _run(None)[0]:
        assert results["1"] == "1"
