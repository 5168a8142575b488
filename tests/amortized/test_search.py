"""Global pose search (orbitcore.amortized.search_poses).

References, independent of the search's Fourier-space shortcuts (conjugate shift on the image,
CTF moved to the image side, Re⟨·,·⟩ as real dot products):

* the simulator's ground truth poses (noiseless images are recovered to the refinement's
  resolution, through CTF and shifts);
* the log-likelihood written out directly in float64: ``ℓ(R) = ‖Î‖² − ‖Î − M ⊙ model(R)‖²``
  over the masked Fourier pixels, with ``model(R)`` from :class:`orbitcore.physics.Projector`
  (shift and CTF applied on the model side) — the returned score must equal it and be the
  largest over the grid.
"""
import math

import numpy as np
import pytest
import torch

import orbitcore as oc
from orbitcore.amortized import refine_poses, refine_shifts, search_poses
from orbitcore.physics.projection import Projector

D = 16


@pytest.fixture(scope="module")
def data():
    vol = oc.physics.pseudo_molecule(D).double()
    g = torch.Generator().manual_seed(3)
    R = oc.geometry.random_rotations(12, generator=g, dtype=torch.float64)
    t = 0.8 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    ctf = oc.physics.sample_ctf_params(12, pixel_size=8.0, defocus_median=15000.0, generator=g)
    imgs = oc.physics.project(vol, R, t, ctf)
    return vol, R, t, ctf, imgs


def test_noiseless_poses_recovered_through_ctf_and_shifts(data):
    vol, R, t, ctf, imgs = data
    res = search_poses(vol, imgs, ctf=ctf, shifts=t, step=15.0, refine=4, fit_scale=False)
    err = oc.metrics.rotation_angle(R, res.rotations)
    # grid 15°, four halvings: the stencil reaches ~0.5°; a wrong basin would be tens of degrees
    assert float(err.max()) < 2.0, err
    assert res.rotations.shape == (12, 3, 3) and res.grid_size == oc.metrics.so3_grid(15.0).shape[0]


def test_scale_fitted_search_is_unit_free(data):
    vol, R, t, ctf, imgs = data
    a = search_poses(vol, imgs, ctf=ctf, shifts=t, step=15.0, refine=2)
    b = search_poses(37.0 * vol, imgs, ctf=ctf, shifts=t, step=15.0, refine=2)
    assert torch.equal(a.rotations, b.rotations)
    assert float(oc.metrics.rotation_angle(R, a.rotations).max()) < 5.0


def test_score_is_the_direct_loglikelihood_and_the_grid_maximum(data):
    vol, R, t, ctf, imgs = data
    g = torch.Generator().manual_seed(5)
    noisy = imgs + 0.5 * imgs.std() * torch.randn(imgs.shape, generator=g, dtype=imgs.dtype)
    radius = 6.0
    res = search_poses(vol, noisy, ctf=ctf, shifts=t, step=20.0, refine=0, radius=radius, fit_scale=False)
    k = torch.arange(D, dtype=torch.float64) - D // 2
    M = ((k[:, None] ** 2 + k[None, :] ** 2).sqrt() <= radius).to(torch.float64)
    proj = Projector(vol, pad=2)
    C = ctf.evaluate(D, dtype=torch.float64)
    grid = oc.metrics.so3_grid(20.0)
    Fi = oc.fourier.fft2c(noisy)

    def direct(i, Rs):
        model = proj.fourier(Rs, t[i].expand(len(Rs), 2), C[i].expand(len(Rs), D, D))
        return (M * Fi[i].abs() ** 2).sum() - (M * (Fi[i] - model).abs() ** 2).sum((-1, -2))

    for i in range(0, 12, 3):
        want = direct(i, res.rotations[i][None])[0]
        assert math.isclose(float(res.scores[i]), float(want), rel_tol=1e-9, abs_tol=1e-9 * float(want.abs()))
        all_scores = direct(i, grid)
        assert float(res.scores[i]) >= float(all_scores.max()) * (1 - 1e-9)


def test_refinement_never_lowers_the_score(data):
    vol, R, t, ctf, imgs = data
    a = search_poses(vol, imgs, ctf=ctf, shifts=t, step=20.0, refine=0)
    b = search_poses(vol, imgs, ctf=ctf, shifts=t, step=20.0, refine=3)
    assert bool((b.scores >= a.scores * (1 - 1e-12)).all())
    err = lambda res: float(oc.metrics.rotation_angle(R, res.rotations).median())  # noqa: E731
    assert err(b) < err(a)


def test_local_search_from_perturbed_rotations(data):
    vol, R, t, ctf, imgs = data
    g = torch.Generator().manual_seed(7)
    axis = torch.nn.functional.normalize(torch.randn(12, 3, generator=g, dtype=torch.float64), dim=-1)
    R0 = R @ oc.geometry.axis_angle_to_matrix(axis, torch.full((12,), math.radians(6.0), dtype=torch.float64))
    res = search_poses(vol, imgs, ctf=ctf, shifts=t, step=8.0, refine=5, init_rotations=R0, fit_scale=False)
    assert res.grid_size == 0
    assert float(oc.metrics.rotation_angle(R, res.rotations).max()) < 1.5
    # refine=0 scores the given rotations: the truth scores above the perturbed start
    s_true = search_poses(vol, imgs, ctf=ctf, shifts=t, refine=0, init_rotations=R, fit_scale=False).scores
    s_pert = search_poses(vol, imgs, ctf=ctf, shifts=t, refine=0, init_rotations=R0, fit_scale=False).scores
    assert bool((s_true > s_pert).all())


def test_projection_matching_from_a_blurred_map():
    """From the truth low-passed to 3 Fourier pixels (what an early decoder gives), rounds of
    search + reconstruction on 80 images (20 dB) recover the poses (random: ~126° median) ever
    better and sharpen the map."""
    vol = oc.physics.pseudo_molecule(D).double()
    g = torch.Generator().manual_seed(11)
    R = oc.geometry.random_rotations(80, generator=g, dtype=torch.float64)
    imgs = oc.physics.project(vol, R)
    imgs = imgs + 0.1 * imgs.std() * torch.randn(imgs.shape, generator=g, dtype=imgs.dtype)
    k = oc.fourier.radial_frequency(D, 3, dtype=torch.float64)
    blurred = oc.fourier.ifft3c(oc.fourier.fft3c(vol) * (k <= 3)).real
    errs = []
    res = refine_poses(blurred, imgs, rounds=3, step=12.0, refine=3, local_step=4.0, regularization=0.01,
                       callback=lambda r, Rr, v: errs.append(float(oc.metrics.rotation_angle(R, Rr).median())))
    assert len(errs) == 3 and len(res.history) == 3 and math.isnan(res.history[0]["mean_change_deg"])
    assert [h["search"] for h in res.history] == ["global", "local", "local"]
    assert errs[-1] < 10.0 and errs[-1] < errs[0], errs  # measured: 11.0, 8.3, 6.9
    assert res.volume.shape == (D, D, D)
    corr = lambda v: float(torch.corrcoef(torch.stack([v.flatten(), vol.flatten()]))[0, 1])  # noqa: E731
    assert corr(res.volume) > corr(blurred)  # measured: 0.9938 against 0.9863


@pytest.mark.parametrize("kwargs, match", [
    ({"rounds": 0}, "rounds"),
    ({"global_rounds": 0}, "global_rounds"),
    ({"local_step": -1.0}, "local_step"),
    ({"callback": 3}, "callback must be callable"),
    ({"ctf": torch.ones(3, D, D)}, "ctf must be None or a CTFParams"),
])
def test_refine_bad_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        refine_poses(torch.zeros(D, D, D), torch.zeros(3, D, D), **kwargs)
    assert "refine_poses" in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"init_rotations": torch.zeros(2, 3, 3)}, "init_rotations must be real"),
    ({"volume": torch.zeros(4, 4)}, "volume must be a real"),
    ({"images": torch.zeros(3, 8, 8)}, "images must be real"),
    ({"images": torch.zeros(0, D, D)}, "N >= 1"),
    ({"ctf": torch.ones(2, D, D)}, "ctf must be a CTFParams or real values"),
    ({"shifts": torch.zeros(3, 3)}, "shifts must be real"),
    ({"step": 120.0}, "step must be at most 90"),
    ({"step": 0.0}, "step"),
    ({"refine": -1}, "refine"),
    ({"radius": 7.5}, "radius must be at most D/2 - 1 = 7"),
    ({"images": torch.full((3, D, D), float("nan"))}, "images"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"volume": torch.zeros(D, D, D), "images": torch.zeros(3, D, D)}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match) as e:
        search_poses(args.pop("volume"), args.pop("images"), **args)
    assert "search_poses" in str(e.value)


@pytest.mark.parametrize("global_rounds, want", [(1, [True, False, False]), (2, [True, True, False])])
def test_global_rounds_choose_which_rounds_search_globally(data, monkeypatch, global_rounds, want):
    import orbitcore.amortized.search as search_mod

    seen, real = [], search_mod.search_poses

    def spy(*args, **kwargs):
        seen.append(kwargs["init_rotations"] is None)
        return real(*args, **kwargs)

    monkeypatch.setattr(search_mod, "search_poses", spy)
    vol, R, t, ctf, imgs = data
    refine_poses(vol, imgs, ctf=ctf, shifts=t, rounds=3, step=30.0, refine=1, global_rounds=global_rounds)
    assert seen == want


def test_refine_shifts_finds_the_simulated_shifts_within_the_window(data):
    """Against the simulator's shifts (through the CTF): on the ¼-pixel grid each is found to
    one grid step (the grid's best point need not be the one nearest the peak, which the CTF
    makes anisotropic); the window around a wrong prior bounds the answer."""
    vol, R, t, ctf, imgs = data
    est = refine_shifts(vol, imgs, R, ctf=ctf, max_shift=3.0, upsample=4)
    assert est.shape == (12, 2) and est.dtype == torch.float64
    assert float((est - t).abs().max()) <= 0.25 + 1e-9, (est - t).abs().max()
    # with the shifts given as the prior, a window of 1 px still contains them
    est_p = refine_shifts(vol, imgs, R, ctf=ctf, shifts=t + 0.4, max_shift=1.0, upsample=8)
    assert float((est_p - t).abs().max()) <= 0.125 + 1e-9
    # a prior 2.5 px off with a 1 px window: the answer stays in the window, not at the truth
    prior = t + torch.tensor([2.5, 0.0], dtype=torch.float64)
    est_w = refine_shifts(vol, imgs, R, ctf=ctf, shifts=prior, max_shift=1.0, upsample=4)
    assert bool(((est_w - prior).norm(dim=1) <= 1.0 + 1e-9).all())
    assert float((est_w - t).norm(dim=1).min()) >= 1.5 - 1e-9


@pytest.mark.parametrize("kwargs, match", [
    ({"max_shift": 0.1}, "max_shift must be at least the grid spacing"),
    ({"max_shift": -1.0}, "max_shift"),
    ({"upsample": 0}, "upsample"),
    ({"rotations": torch.zeros(2, 3, 3)}, "rotations must be real"),
    ({"shifts": torch.zeros(3, 3)}, "shifts must be real"),
])
def test_refine_shifts_bad_arguments_are_named(kwargs, match):
    args = {"rotations": torch.eye(3).expand(3, 3, 3)}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match) as e:
        refine_shifts(torch.zeros(D, D, D), torch.zeros(3, D, D), args.pop("rotations"), **args)
    assert "refine_shifts" in str(e.value)


def test_refine_poses_with_shift_search_corrects_wrong_shifts(data):
    """Shifts given 1 px off in a random direction: with ``shift_search`` the rounds move them back
    toward the simulator's (and report it); without, they are returned unchanged."""
    vol, R, t, ctf, imgs = data
    g = torch.Generator().manual_seed(5)
    phi = 2 * math.pi * torch.rand(12, generator=g, dtype=torch.float64)
    wrong = t + torch.stack([phi.cos(), phi.sin()], 1)
    kept = refine_poses(vol, imgs, ctf=ctf, shifts=wrong, rounds=1, step=15.0, refine=3, regularization=0.01)
    assert torch.equal(kept.shifts, wrong) and kept.history[0]["mean_shift_change_px"] == 0.0
    # One round: the shifts are estimated against the given (true) map; later rounds would use
    # the reconstruction from these 12 images, which cannot fill Fourier space. The rotations were
    # searched with the wrong shifts and absorb part of them, so the shifts found at those
    # rotations are not exact (with the true rotations they are: the test above).
    res = refine_poses(vol, imgs, ctf=ctf, shifts=wrong, rounds=1, step=15.0, refine=3, regularization=0.01,
                       shift_search=2.0)
    err = (res.shifts - t).norm(dim=1)
    assert float(err.median()) < 0.4 and float(err.max()) < 0.9, err  # from 1 px; measured: median 0.33, max 0.79
    assert res.history[0]["mean_shift_change_px"] > 0.5
    with pytest.raises(ValueError, match="refine_poses: shift_search"):
        refine_poses(vol, imgs, shifts=wrong, rounds=1, shift_search=0.1)


def _blurred_start(vol, radius=3):
    k = oc.fourier.radial_frequency(D, 3, dtype=torch.float64)
    return oc.fourier.ifft3c(oc.fourier.fft3c(vol) * (k <= radius)).real


def test_refine_checkpoint_resume_and_extension_are_exact(data, tmp_path, monkeypatch):
    """A refinement stopped after a round and continued from its checkpoint, and a finished one
    extended by a round, end bit for bit where the uninterrupted run ends (rotations, shifts,
    map, and the record of every round but its timing). A finished checkpoint is not run again."""
    import orbitcore.amortized.search as search_mod

    vol, R, t, ctf, imgs = data
    start = _blurred_start(vol)
    kw = dict(ctf=ctf, shifts=t + 0.3, step=30.0, refine=1, regularization=0.01, global_rounds=2, shift_search=1.0)
    # the callback's dict joins the record (NumPy and tensor scalars as plain numbers)
    tag = lambda r, Rr, v: {"tag": 10 * r, "np": np.float64(r / 2), "t": torch.tensor([r, 1])}  # noqa: E731
    full = refine_poses(start, imgs, rounds=3, callback=tag, **kw)

    def same(res):
        assert torch.equal(res.rotations, full.rotations) and torch.equal(res.volume, full.volume)
        assert torch.equal(res.shifts, full.shifts)
        strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
        assert repr(strip(res.history)) == repr(strip(full.history))  # repr: round 1's change is NaN

    assert [h["tag"] for h in full.history] == [10, 20, 30] and full.resumed_rounds == 0
    assert full.history[2]["np"] == 1.5 and type(full.history[2]["np"]) is float and full.history[2]["t"] == [3, 1]
    # interrupted in round 2 (after its search): the checkpoint holds round 1
    ck = tmp_path / "a" / "state.pt"

    def stop_in_round_2(r, Rr, v):
        if r == 2:
            raise KeyboardInterrupt
        return tag(r, Rr, v)

    with pytest.raises(KeyboardInterrupt):
        refine_poses(start, imgs, rounds=3, callback=stop_in_round_2, checkpoint=ck, **kw)
    assert torch.load(ck, weights_only=True)["round"] == 1
    resumed = refine_poses(start, imgs, rounds=3, callback=tag, checkpoint=ck, **kw)
    assert resumed.resumed_rounds == 1
    same(resumed)
    # a finished two-round refinement extended to three
    ck2 = tmp_path / "b.pt"
    refine_poses(start, imgs, rounds=2, callback=tag, checkpoint=ck2, **kw)
    extended = refine_poses(start, imgs, rounds=3, callback=tag, checkpoint=ck2, **kw)
    assert extended.resumed_rounds == 2
    same(extended)

    # a finished checkpoint is returned as it is: no search runs
    def no_search(*args, **kwargs):
        raise AssertionError("search_poses ran")

    monkeypatch.setattr(search_mod, "search_poses", no_search)
    again = refine_poses(start, imgs, rounds=3, checkpoint=ck2, **kw)
    assert again.resumed_rounds == 3
    same(again)


def test_refine_checkpoint_mismatches_and_bad_files_are_named(data, tmp_path):
    vol, R, t, ctf, imgs = data
    start = _blurred_start(vol)
    kw = dict(ctf=ctf, shifts=t, step=30.0, refine=1, regularization=0.01)
    ck = tmp_path / "state.pt"
    refine_poses(start, imgs, rounds=2, checkpoint=ck, **kw)
    cases = [
        (dict(kw, step=20.0), "other settings.*step"),
        (dict(kw, shift_search=1.0), "other settings.*shift_search"),
        (dict(kw, shifts=t + 0.5), "other images, start map, shifts or CTFs"),
        (dict(kw, ctf=None), "other images, start map, shifts or CTFs"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            refine_poses(start, imgs, rounds=3, checkpoint=ck, **args)
        assert "refine_poses" in str(e.value)
    with pytest.raises(ValueError, match="other images"):
        refine_poses(start, 1.5 * imgs, rounds=3, checkpoint=ck, **kw)
    with pytest.raises(ValueError, match="other images"):
        refine_poses(2.0 * start, imgs, rounds=3, checkpoint=ck, **kw)
    with pytest.raises(ValueError, match="already holds 2 rounds, more than rounds=1"):
        refine_poses(start, imgs, rounds=1, checkpoint=ck, **kw)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="refine_poses: checkpoint .* not a readable refinement checkpoint"):
        refine_poses(start, imgs, rounds=1, checkpoint=bad, **kw)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="not a refinement checkpoint"):
        refine_poses(start, imgs, rounds=1, checkpoint=bad, **kw)
    with pytest.raises(ValueError, match="is not a file"):
        refine_poses(start, imgs, rounds=1, checkpoint=tmp_path, **kw)
    with pytest.raises(TypeError, match="refine_poses: the callback's dict must hold numbers"):
        refine_poses(start, imgs, rounds=3, checkpoint=ck, callback=lambda r, Rr, v: {"x": object()}, **kw)
    # a failed call leaves the checkpoint as it was
    assert torch.load(ck, weights_only=True)["round"] == 2


def _refine_worker(rank, world, path):
    from orbitcore import _distributed

    assert _distributed.world("test", None) == (world, rank)  # the calls below (distributed=None) split
    vol, R, t, ctf, imgs = _refine_data()
    res = refine_poses(_blurred_start(vol), imgs, rounds=2, global_rounds=1, checkpoint=f"{path}.state.pt",
                       **_REFINE_KW, ctf=ctf, shifts=t + 0.3)
    torch.save({"R": res.rotations, "vol": res.volume, "t": res.shifts,
                "score": [h["mean_score"] for h in res.history]}, f"{path}.{rank}")


_REFINE_KW = dict(step=30.0, refine=1, regularization=0.01, shift_search=1.0)


def _refine_data():
    vol = oc.physics.pseudo_molecule(D).double()
    g = torch.Generator().manual_seed(3)
    R = oc.geometry.random_rotations(13, generator=g, dtype=torch.float64)  # 13: unequal shares
    t = 0.8 * torch.randn(13, 2, generator=g, dtype=torch.float64)
    ctf = oc.physics.sample_ctf_params(13, pixel_size=8.0, defocus_median=15000.0, generator=g)
    return vol, R, t, ctf, oc.physics.project(vol, R, t, ctf)


@pytest.mark.distributed
def test_refine_split_over_two_processes_equals_one_process(tmp_path, spawn_gloo):
    """Every process searches every second image; the gathered answers and the map are one
    process's (a local round after a global one, with shift search; 13 images: unequal shares)."""
    spawn_gloo(_refine_worker, str(tmp_path / "res"))
    vol, R, t, ctf, imgs = _refine_data()
    one = refine_poses(_blurred_start(vol), imgs, rounds=2, global_rounds=1, **_REFINE_KW, ctf=ctf, shifts=t + 0.3)
    got = [torch.load(tmp_path / f"res.{r}", weights_only=True) for r in range(2)]
    for g in got:
        torch.testing.assert_close(g["R"], one.rotations, rtol=0, atol=1e-12)
        torch.testing.assert_close(g["t"], one.shifts, rtol=0, atol=1e-12)
        torch.testing.assert_close(g["vol"], one.volume, rtol=1e-10, atol=1e-12)
        assert g["score"] == pytest.approx([h["mean_score"] for h in one.history], rel=1e-12)
    # rank 0 wrote the checkpoint (the same state)
    state = torch.load(tmp_path / "res.state.pt", weights_only=True)
    assert state["round"] == 2 and torch.equal(state["rotations"], got[0]["R"])
    # the test is not vacuous: the local round moved the rotations, and the shifts moved
    assert one.history[1]["mean_change_deg"] > 1.0 and one.history[0]["mean_shift_change_px"] > 0.1


@pytest.mark.cuda
def test_refine_on_the_gpu_matches_the_cpu(data):
    vol, R, t, ctf, imgs = data
    kw = dict(ctf=ctf, shifts=t, rounds=2, step=30.0, refine=1, regularization=0.01, shift_search=1.0)
    cpu = refine_poses(_blurred_start(vol), imgs, **kw)
    gpu = refine_poses(_blurred_start(vol).cuda(), imgs, **kw)
    assert gpu.volume.is_cuda and gpu.rotations.device.type == "cpu"
    assert float(oc.metrics.rotation_angle(cpu.rotations, gpu.rotations).max()) < 1e-6
    torch.testing.assert_close(gpu.volume.cpu(), cpu.volume, rtol=1e-9, atol=1e-9)
