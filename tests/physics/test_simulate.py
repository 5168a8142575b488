"""simulate_particles: the forward model, ground truth, SNR, distributions, streaming to
MRCS + STAR and the exact round trip through the readers."""
import math

import numpy as np
import pytest
import torch

from orbitcore.geometry import VonMisesFisherMixture, random_rotations
from orbitcore.io import ParticleStack, read_mrc, read_star
from orbitcore.physics import (
    CTFParams,
    four_gaussians,
    project,
    pseudo_molecule,
    sample_ctf_params,
    simulate_particles,
)


@pytest.fixture(scope="module")
def vol():
    return pseudo_molecule(32, n_atoms=120, seed=0)


def test_noise_free_images_are_the_forward_model(vol):
    r = simulate_particles(vol, 40, pixel_size=3.0, shift_std=6.0, astigmatism_std=200.0, seed=1, chunk_size=16)
    assert r.sigma == 0 and math.isinf(r.snr)
    want = project(vol, r.rotations, r.shifts, ctf=r.ctf)
    torch.testing.assert_close(r.images, want, rtol=0, atol=1e-6)
    # shifts are Gaussian in Å: 6 Å at 3 Å/px is 2 px
    assert r.shifts.shape == (40, 2) and 1.0 < float(r.shifts.std()) < 3.0
    assert len(r.ctf) == 40 and float((r.ctf.defocus_u - r.ctf.defocus_v).min()) >= 0


def test_snr_is_as_requested(vol):
    r = simulate_particles(vol, 300, pixel_size=2.0, snr_db=-10.0, seed=2, ctf=False)
    clean = project(vol, r.rotations, r.shifts)
    power = float(clean.double().pow(2).mean())
    assert r.sigma == pytest.approx(math.sqrt(power / 0.1), rel=1e-6)  # E||clean||² / (n² σ²) = 0.1
    noise = (r.images - clean).double()
    assert float(noise.std()) == pytest.approx(r.sigma, rel=0.01)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01 * r.sigma)
    s = simulate_particles(vol, 10, sigma=0.5, seed=2, ctf=False)
    assert s.sigma == 0.5


def test_reproducible_and_seeded(vol):
    a = simulate_particles(vol, 20, snr=1.0, seed=5, shift_std=2.0)
    b = simulate_particles(vol, 20, snr=1.0, seed=5, shift_std=2.0)
    c = simulate_particles(vol, 20, snr=1.0, seed=6, shift_std=2.0)
    assert torch.equal(a.images, b.images) and torch.equal(a.rotations, b.rotations)
    assert not torch.equal(a.images, c.images)


def test_viewing_distributions(vol):
    mix = VonMisesFisherMixture(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([50.0]), torch.tensor([1.0]))
    r = simulate_particles(vol, 200, viewing=mix, ctf=False, seed=3)
    d = r.rotations[..., :, 2].double()
    assert r.labels is not None and float(d[:, 2].mean()) == pytest.approx(1 / math.tanh(50) - 1 / 50, abs=0.01)
    R = random_rotations(7, generator=torch.Generator().manual_seed(0))
    r2 = simulate_particles(vol, 7, viewing=R, ctf=False)
    torch.testing.assert_close(r2.rotations, R)


def test_lognormal_defocus():
    g = torch.Generator().manual_seed(4)
    c = sample_ctf_params(20000, pixel_size=1.0, defocus_median=12000.0, defocus_log_std=0.25,
                          astigmatism_std=300.0, generator=g)
    mean_defocus = 0.5 * (c.defocus_u + c.defocus_v).double()
    logd = torch.log(mean_defocus)
    assert float(logd.mean()) == pytest.approx(math.log(12000.0), abs=0.01)
    assert float(logd.std()) == pytest.approx(0.25, rel=0.03)
    # |dU - dV| is half-normal with scale 300: mean 300 sqrt(2/π)
    assert float((c.defocus_u - c.defocus_v).double().mean()) == pytest.approx(300 * math.sqrt(2 / math.pi), rel=0.03)
    assert float(c.astigmatism_angle.min()) >= 0 and float(c.astigmatism_angle.max()) < 180


def test_write_read_round_trip_is_exact(vol, tmp_path):
    out = tmp_path / "sim" / "particles.star"
    r = simulate_particles(vol, 50, pixel_size=2.5, snr=0.5, shift_std=5.0, astigmatism_std=250.0, seed=7,
                           chunk_size=16, out=out, b_factor=20.0)
    assert r.star_path == out and r.stack_path == out.with_suffix(".mrcs")
    data, vs = read_mrc(r.stack_path)
    assert vs == pytest.approx(2.5) and data.shape == (50, 32, 32)
    assert np.array_equal(data, r.images.numpy())  # bit-exact images
    table = read_star(out)
    assert table.version == "3.1" and len(table.optics) == 1
    s = ParticleStack(out)
    assert torch.equal(s.images(np.arange(50)), r.images)
    torch.testing.assert_close(s.rotations, r.rotations, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.shifts, r.shifts, rtol=0, atol=1e-5)
    for k, v in r.ctf.as_dict().items():  # float32 values survive the text file exactly
        assert torch.equal(getattr(s.ctf, k).float(), v.float()), k
    assert float(s.pixel_size[0]) == pytest.approx(2.5)


def test_streaming_without_keeping_images(vol, tmp_path):
    out = tmp_path / "big.star"
    r = simulate_particles(vol, 70, chunk_size=32, out=out, keep_images=False, seed=8, snr=1.0)
    assert r.images is None
    ref = simulate_particles(vol, 70, chunk_size=32, seed=8, snr=1.0)
    data, _ = read_mrc(out.with_suffix(".mrcs"))
    assert np.array_equal(data, ref.images.numpy())


def test_interrupted_run_leaves_no_files(vol, tmp_path, monkeypatch):
    import orbitcore.physics.simulate as sim

    calls = {"n": 0}
    orig = sim.Projector.__call__

    def boom(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full (simulated)")
        return orig(self, *a, **k)

    monkeypatch.setattr(sim.Projector, "__call__", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_particles(vol, 40, chunk_size=16, out=tmp_path / "x.star")
    assert list(tmp_path.iterdir()) == []


def test_explicit_ctf_params(vol):
    c = CTFParams.create(torch.full((5,), 9000.0), pixel_size=1.7)
    r = simulate_particles(vol, 5, ctf=c, seed=0)
    assert r.pixel_size == pytest.approx(1.7)
    torch.testing.assert_close(r.images, project(vol, r.rotations, r.shifts, ctf=c), rtol=0, atol=1e-6)


def test_four_gaussians_simulation_without_ctf():
    # the seeds/000 setting: 25³ Gaussians, vMF viewing, no CTF, noise σ given directly
    v = four_gaussians()
    mix = VonMisesFisherMixture.random(8, generator=torch.Generator().manual_seed(0))
    r = simulate_particles(v / v.norm(), 100, viewing=mix, ctf=False, sigma=0.5, seed=0)
    assert r.images.shape == (100, 25, 25) and r.sigma == 0.5


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"n_images": 0}, ValueError, r"simulate_particles: n_images must be >= 1"),
    ({"snr": 1.0, "snr_db": 0.0}, ValueError, r"simulate_particles: give at most one of snr, snr_db, sigma"),
    ({"snr": -1.0}, ValueError, r"simulate_particles: snr must be > 0"),
    ({"pixel_size": 0.0}, ValueError, r"simulate_particles: pixel_size must be > 0"),
    ({"viewing": "gaussian"}, ValueError, r"simulate_particles: viewing must be 'uniform'"),
    ({"viewing": torch.eye(3)[None]}, ValueError, r"simulate_particles: viewing rotations must have shape \(4, 3, 3\)"),
    ({"out": "x.mrcs"}, ValueError, r"simulate_particles: out must be the path of a .star file"),
    ({"keep_images": False}, ValueError, r"keep_images=False needs out="),
    ({"ctf": "yes"}, TypeError, r"simulate_particles: ctf must be True, False or a CTFParams"),
    ({"shift_std": -1.0}, ValueError, r"simulate_particles: shift_std must be >= 0"),
])
def test_bad_inputs(vol, kwargs, exc, match):
    args = {"n_images": 4}
    args.update(kwargs)
    n = args.pop("n_images")
    with pytest.raises(exc, match=match):
        simulate_particles(vol, n, **args)
