"""`orbitcore simulate` and `orbitcore fsc`: help texts, outputs, and errors a newcomer can read."""
import json

import numpy as np
import pytest
import torch

from orbitcore import cli
from orbitcore.io import ParticleStack, read_mrc, read_star, write_mrc


def test_help_texts(capsys):
    for cmd, words in (("simulate", ["--phantom", "--snr-db", "--shift-std", "RELION", "examples"]),
                       ("fsc", ["0.143", "--align", "--mask-radius", "examples"])):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        for w in words:
            assert w in out, (cmd, w)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "simulate" in out and "fsc" in out and "demo" in out


def test_simulate_phantom_then_read_back(tmp_path, capsys):
    out = tmp_path / "sim" / "p.star"
    rc = cli.main(["simulate", "--phantom", "gaussians", "--size", "24", "--pixel-size", "2", "--n-images", "30",
                   "--snr-db", "-5", "--shift-std", "3", "--astigmatism", "200", "--vmf", "3", "--seed", "4",
                   "--out", str(out), "--quiet"])
    assert rc == 0
    ds = ParticleStack(out)
    assert len(ds) == 30 and ds.size == 24 and ds[0]["pixel_size"] == 2.0
    summary = json.loads((tmp_path / "sim" / "p_summary.json").read_text())
    assert summary["snr"] == pytest.approx(10 ** -0.5) and summary["viewing"] == "vmf"
    vol, vs = read_mrc(tmp_path / "sim" / "p_volume.mrc")
    assert vol.shape == (24, 24, 24) and vs == 2.0
    assert read_star(out).has("rlnDefocusU", "rlnOriginXAngst", "rlnAngleRot")


def test_simulate_map_needs_pixel_size(tmp_path, capsys):
    m = tmp_path / "map.mrc"
    write_mrc(m, np.random.default_rng(0).random((16, 16, 16)), voxel_size=None)
    rc = cli.main(["simulate", "--volume", str(m), "--n-images", "5", "--out", str(tmp_path / "x.star")])
    assert rc == 1
    assert "the map header has no voxel size (0); give --pixel-size" in capsys.readouterr().err
    rc = cli.main(["simulate", "--volume", str(m), "--pixel-size", "3", "--size", "12", "--n-images", "5",
                   "--no-ctf", "--out", str(tmp_path / "x.star"), "--quiet"])
    assert rc == 0 and ParticleStack(tmp_path / "x.star")[0]["pixel_size"] == pytest.approx(4.0)
    rc = cli.main(["simulate", "--n-images", "5", "--out", str(tmp_path / "x.mrcs")])
    assert rc == 1 and "--out must end in .star" in capsys.readouterr().err


def test_fsc_command(tmp_path, capsys):
    from orbitcore.physics import pseudo_molecule

    v = pseudo_molecule(24, n_atoms=80)
    g = torch.Generator().manual_seed(0)
    a = write_mrc(tmp_path / "a.mrc", v + 0.05 * torch.randn(v.shape, generator=g), voxel_size=2.0)
    b = write_mrc(tmp_path / "b.mrc", v + 0.05 * torch.randn(v.shape, generator=g), voxel_size=2.0)
    rc = cli.main(["fsc", str(a), str(b), "--out", str(tmp_path / "f.png"), "--json", str(tmp_path / "f.json"),
                   "--mask-radius", "20"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("FSC resolution:") and "at 0.143" in out
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["pixel_size_A"] == 2.0 and len(d["fsc"]["curve"]) == 13
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    c = write_mrc(tmp_path / "c.mrc", np.zeros((20, 20, 20)), voxel_size=2.0)
    assert cli.main(["fsc", str(a), str(c)]) == 1
    assert "the maps have different boxes" in capsys.readouterr().err


_FAULTS = """
import resource, sys
import torch
from orbitcore.cli import console_main

def faults():
    # 40 MB buffers: above the largest mmap threshold glibc ever adapts to (32 MiB), so by
    # default each one is a fresh mapping, page-faulted in, whatever came before
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.empty(10_000_000)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
sys.argv = ["orbitcore", "--help"]
try:
    console_main()
except SystemExit:
    pass
faults()                              # the first pass grows the heap once
print(before, faults())
"""


def test_console_command_keeps_freed_buffers_for_reuse(tmp_path):
    # the `orbitcore` console entry tunes glibc's allocator (orbitcore._alloc.tune_allocator): freed
    # buffers are reused instead of being page-faulted in afresh (a 40 MB buffer: ~10^4 faults).
    # Measured in child processes, so that this test process keeps its allocator as it is.
    import os
    import subprocess
    import sys

    import orbitcore
    assert orbitcore.tune_allocator is orbitcore._alloc.tune_allocator
    if not sys.platform.startswith("linux"):   # no glibc: a documented no-op
        assert orbitcore.tune_allocator() is False
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    counts = {}
    for flag in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                             env={**env, "ORBITCORE_TUNE_ALLOCATOR": flag}, cwd=tmp_path).stdout
        counts[flag] = [int(v) for v in out.split()[-2:]]
    (tuned_before, tuned_after), (plain_before, plain_after) = counts["1"], counts["0"]
    assert tuned_before > 40_000 and plain_before > 40_000, counts     # ~9800 pages per buffer
    assert tuned_after < tuned_before / 20, counts                           # reused after tuning
    assert plain_after > plain_before / 2, counts                            # ORBITCORE_TUNE_ALLOCATOR=0: as before
