"""orbitcore.em (seeds/002): simulation, patching, M-step (eq. 28-37), Q (eq. 25), Algorithm 1 and 2.

Independent references: the brute-force patch model of orbitcore.ops._reference (explicit
zero-pad / circular shift / crop of eq. 18-19), explicit per-patch normal equations, and the
EM monotonicity theorem."""
import copy
import math

import pytest
import torch

from orbitcore import em
from orbitcore.ops import _reference as ref
from orbitcore.ops import em as ops_em

L, ELL, K = 7, 3, 24


@pytest.fixture(scope="module")
def op():
    return em.EMOperator(L, ELL, em.rotation_grid(K))


def _planted(op, theta, P, gen, partial=True):
    """Noiseless patches with known poses: (patches, rotation index, shift (l0, l1) in {0..2L-1}^2)."""
    g = op.projections(theta)
    rot = torch.randint(0, op.K, (P,), generator=gen)
    lo = -(L - 1) if partial else 0
    d = torch.randint(lo, L if partial else 1, (P, 2), generator=gen)
    l = d % (2 * L)
    x = torch.stack([ref.em_patch_model(g[k], int(a), int(b)) for k, (a, b) in zip(rot.tolist(), l.tolist())])
    return x, rot, d


def _stats_from_poses(op, x, rot, d):
    """Statistics with one-hot posteriors at the known poses (no E-step kernel involved)."""
    D = (2 * L - 1) ** 2
    sw = torch.zeros(op.K, D, dtype=torch.float64)
    bp = torch.zeros(op.K, L, L, dtype=torch.float64)
    for p in range(x.shape[0]):
        k = int((d[p, 0] + L - 1) * (2 * L - 1) + d[p, 1] + L - 1)
        sw[rot[p], k] += 1
        bp[rot[p]] += ref.em_patch_model_adjoint(x[p], int(d[p, 0]) % (2 * L), int(d[p, 1]) % (2 * L))
    return em.Statistics(n=float(x.shape[0]), energy=float(x.pow(2).sum()), shift_weights=sw, empty=0.0,
                         backprojection=bp * op.support, log_likelihood=float("nan"), log_evidence=None,
                         empty_posterior=None, shift_posterior=None)


def test_operator_matches_projector_and_is_real(op, gen):
    theta = op.random_theta(gen)
    x = op.coefficients(theta)
    torch.testing.assert_close(op.basis.symmetrize(x), x)  # a real volume
    direct = op.projector.images(x, op.rotations)
    torch.testing.assert_close(op.projections(theta), direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.theta_from_coefficients(x), theta, rtol=1e-12, atol=1e-12)
    assert float(op.volume(theta).abs().max()) > 0


def test_normal_equations_match_explicit_sum(op, gen):
    """A and y of eq. 30-35 against the per-(patch, pose) sum of explicit masked products."""
    theta = op.random_theta(gen)
    x, rot, d = _planted(op, theta, 9, gen)
    x = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    st = _stats_from_poses(op, x, rot, d)
    A, y = em.normal_equations(op, st)
    A_ref = torch.zeros(op.M, op.M, dtype=torch.float64)
    y_ref = torch.zeros(op.M, dtype=torch.float64)
    for p in range(x.shape[0]):
        Jw = op.J[rot[p]].reshape(L, L, op.M)
        l0, l1 = int(d[p, 0]) % (2 * L), int(d[p, 1]) % (2 * L)
        B = ref.em_patch_model(Jw.permute(2, 0, 1), l0, l1).reshape(op.M, -1).T  # C T Z J_w: (L^2, M)
        A_ref += B.T @ B
        y_ref += B.T @ x[p].reshape(-1)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


def test_m_step_recovers_true_coefficients_from_noiseless_patches(op, gen):
    theta = op.random_theta(gen)
    x, rot, d = _planted(op, theta, 80, gen)
    est, lp = em.m_step(op, _stats_from_poses(op, x, rot, d))
    torch.testing.assert_close(est, theta, rtol=1e-9, atol=1e-9)
    assert lp.shape == ((2 * L - 1) ** 2 + 1,)
    torch.testing.assert_close(torch.exp(lp).sum(), torch.tensor(1.0, dtype=torch.float64))
    # and through the E-step kernel at tiny sigma (posteriors concentrate on the true poses)
    xc, rc, dc = _planted(op, theta, 80, gen, partial=False)
    st = em.e_step(op, xc, theta, em.uniform_log_prior(L), 1e-4, dtype=torch.float64)
    est2, _ = em.m_step(op, st)
    torch.testing.assert_close(est2, theta, rtol=1e-8, atol=1e-8)


def test_q_value_matches_bruteforce_eq25(op, gen):
    """Q(theta, rho | theta_k, rho_k) from the statistics vs eq. 25 summed over every (patch, shift, rotation)."""
    tk, t = op.random_theta(gen), op.random_theta(gen)
    x, _, _ = _planted(op, tk, 6, gen)
    x = x + 0.8 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    sigma = 0.8
    rho_k = torch.rand(2 * L, 2 * L, generator=gen, dtype=torch.float64) + 0.1
    rho_k /= rho_k.sum()
    rho = torch.rand(2 * L, 2 * L, generator=gen, dtype=torch.float64) + 0.1
    rho /= rho.sum()
    # fold the paper's rho into (displacements, empty) with the empty mass spread uniformly over its 4L-1 shifts
    def fold(r):
        d = ops_em.displacements(L)
        lp = torch.log(r[d[:, 0] % (2 * L), d[:, 1] % (2 * L)])
        return torch.cat([lp, torch.log(r[L, :].sum() + r[:, L].sum() - r[L, L])[None]])

    def even_empty(r):
        r = r.clone()
        e = r[L, :].sum() + r[:, L].sum() - r[L, L]
        r[L, :] = e / (4 * L - 1)
        r[:, L] = e / (4 * L - 1)
        return r
    rho_k, rho = even_empty(rho_k), even_empty(rho)
    st = em.e_step(op, x, tk, fold(rho_k), sigma, dtype=torch.float64)
    q = em.q_value(op, st, t, fold(rho), sigma)
    post = ref.em_estep_reference(x, op.projections(tk), sigma, rho_k)["posterior"]  # (P, 2L, 2L, K)
    g = op.projections(t)
    q_ref = 0.0
    for l0 in range(2 * L):
        for l1 in range(2 * L):
            model = ref.em_patch_model(g, l0, l1)
            r2 = ((x[:, None] - model[None]) ** 2).sum((-2, -1))  # (P, K)
            logp = -r2 / (2 * sigma ** 2) - 0.5 * L * L * math.log(2 * math.pi * sigma ** 2)
            q_ref += float((post[:, l0, l1, :] * (logp + math.log(rho[l0, l1]) - math.log(K))).sum())
    # eq. 25 over the paper's 4L - 1 empty shifts: with rho uniform on them the merged empty state
    # differs by the entropy term W_e (log(4L - 1) + log K) (the rotations and empty shifts we marginalise)
    W_e = float(st.empty)
    torch.testing.assert_close(torch.tensor(q), torch.tensor(q_ref + W_e * (math.log(4 * L - 1) + math.log(K))),
                               rtol=1e-10, atol=1e-8)


def test_full_batch_em_increases_likelihood_and_q(op, gen):
    truth = op.random_theta(gen)
    x, _, _ = _planted(op, truth, 120, gen)
    sigma = 0.5 * float(x.std())
    x = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    theta, lp = op.random_theta(gen), em.uniform_log_prior(L)
    prev_ll = -math.inf
    for _ in range(6):
        st = em.e_step(op, x, theta, lp, sigma, dtype=torch.float64)
        assert st.log_likelihood >= prev_ll - 1e-7 * abs(st.log_likelihood)
        prev_ll = st.log_likelihood
        normal = em.normal_equations(op, st)
        q_old = em.q_value(op, st, theta, lp, sigma, normal)
        theta_new, lp_new = em.m_step(op, st)
        q_new = em.q_value(op, st, theta_new, lp_new, sigma, normal)
        assert q_new >= q_old - 1e-9 * abs(q_old)
        # the M-step is the maximiser: perturbing it lowers Q
        q_pert = em.q_value(op, st, theta_new + 1e-3 * torch.randn(op.M, generator=gen, dtype=torch.float64), lp_new,
                            sigma, normal)
        assert q_pert <= q_new
        theta, lp = theta_new, lp_new


def test_simulation_ground_truth_separation_and_snr():
    vol = torch.randn(L, L, L, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = em.simulate_micrographs(vol, 120, n_micrographs=2, gamma=0.08, snr=2.0, ell_max=ELL, seed=5)
    assert m.micrographs.shape == (2, 120, 120)
    for loc, imgs in zip(m.locations, m.images):
        a = loc[:, None, :] - loc[None, :, :]
        cheb = a.abs().amax(-1) + (2 * L) * torch.eye(loc.shape[0], dtype=torch.int64)
        assert int(cheb.min()) >= 2 * L - 1  # eq. 5
        # eq. 4
    energy = torch.cat([i.pow(2).sum((-2, -1)) for i in m.images]).mean()
    assert math.isclose(float(energy) / (L * L * m.sigma ** 2), 2.0, rel_tol=1e-12)
    noise = m.micrographs - m.clean
    assert abs(float(noise.std()) / m.sigma - 1) < 0.03
    # every non-empty patch of the clean micrograph is the patch model of its projection at the true shift
    patches, truth = em.extract_patches(m.clean, L, locations=m.locations)
    per = (120 // L) ** 2
    for p in range(patches.shape[0]):
        i = p // per
        if truth[p, 0] == L:
            assert float(patches[p].abs().max()) == 0.0
            continue
        a, b = divmod(p % per, 120 // L)
        r, c = a * L - int(truth[p, 0]), b * L - int(truth[p, 1])
        t = int(((m.locations[i][:, 0] == r) & (m.locations[i][:, 1] == c)).nonzero()[0, 0])
        model = ref.em_patch_model(m.images[i][t], int(truth[p, 0]) % (2 * L), int(truth[p, 1]) % (2 * L))
        torch.testing.assert_close(patches[p], model, rtol=0, atol=1e-12)


def test_simulation_first_method_rescales_sigma():
    vol = torch.randn(14, 14, 14, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    m = em.simulate_micrographs(vol, 70, gamma=0.05, snr=1.0, L=7, method="volume", seed=1)
    assert m.micrographs.shape == (1, 70, 70)
    # white noise through a mean-preserving 2x Fourier crop: std halves
    assert abs(float((m.micrographs - m.clean).std()) / m.sigma - 1) < 0.05


def test_stochastic_reconstruction_resume_is_exact(gen):
    vol = torch.randn(L, L, L, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    m = em.simulate_micrographs(vol, 91, gamma=0.1, snr=5.0, ell_max=2, seed=2)
    x = em.extract_patches(m.micrographs, L)
    kw = dict(L=L, ell_max=[1, 2], K=12, iterations=[2, 2], S=0.5, epsilon=-math.inf, seed=3, dtype=torch.float64)
    v_full, st_full, _ = em.reconstruct(x, m.sigma, **kw)
    assert len(st_full.history) == 4 and [h["ell_max"] for h in st_full.history] == [1, 1, 2, 2]
    assert all(h["patches"] == x.shape[0] // 2 for h in st_full.history)
    saved = []

    class Stop(Exception):
        pass

    def cb(state, op):
        if len(state.history) == 3:
            saved.append(copy.deepcopy(state))
            raise Stop

    with pytest.raises(Stop):
        em.reconstruct(x, m.sigma, callback=cb, **kw)
    v_res, st_res, _ = em.reconstruct(x, m.sigma, state=saved[0], **kw)
    torch.testing.assert_close(v_res, v_full, rtol=0, atol=0)
    assert [h["Q"] for h in st_res.history] == [h["Q"] for h in st_full.history]


def test_particle_picking_with_true_volume(op, gen):
    theta = op.random_theta(gen)
    x, rot, d = _planted(op, theta, 30, gen, partial=False)  # full projections (d = 0)
    empty = torch.zeros(20, L, L, dtype=torch.float64)
    sigma = 0.02 * float(x.std())
    allp = torch.cat([x, empty]) + sigma * torch.randn(50, L, L, generator=gen, dtype=torch.float64)
    truth = torch.cat([d, torch.full((20, 2), L, dtype=torch.int64)])
    picked = em.pick_particles(op, allp, theta, em.uniform_log_prior(L), sigma, dtype=torch.float64)
    sc = em.picking_scores(picked, truth, L)
    assert sc["f1"] == 1.0 and sc["shift_accuracy"] == 1.0
    # F1 by hand on a toy: 2 true empties, picks: one right, one missed, one false alarm
    t = torch.tensor([[L, L], [L, L], [0, 0], [1, 1]])
    p = torch.tensor([[L, L], [0, 0], [L, L], [3, 1]])
    sc = em.picking_scores(p, t, L)
    assert math.isclose(sc["f1"], 0.5) and sc["shift_accuracy"] == 0.0


def test_rotation_grid_is_uniformish():
    R = em.rotation_grid(552)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(552, 3, 3),
                               rtol=0, atol=1e-12)
    assert bool((torch.linalg.det(R) > 0).all())
    assert float(R.mean(0).abs().max()) < 0.02  # E[R] = 0 under the Haar measure


def test_bad_inputs():
    with pytest.raises(ValueError, match="EMOperator: L = 7 is too small for ell_max = 9"):
        em.EMOperator(7, 9, em.rotation_grid(3))
    with pytest.raises(ValueError, match="extract_patches: micrographs .* smaller than one patch"):
        em.extract_patches(torch.zeros(5, 5), 7)
    bad = torch.zeros(20, 20)
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="extract_patches: micrographs must be finite"):
        em.extract_patches(bad, 7)
    vol = torch.zeros(7, 7, 7)
    with pytest.raises(ValueError, match="simulate_micrographs: N must be at least"):
        em.simulate_micrographs(vol, 5)
    with pytest.raises(ValueError, match="simulate_micrographs: cannot place"):
        em.simulate_micrographs(vol + 1, 21, gamma=0.9 * 0.99, ell_max=1)
    vol[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="simulate_micrographs: volume must be finite"):
        em.simulate_micrographs(vol, 30)
    x = torch.zeros(4, 7, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="reconstruct: L = 7 is too small for ell_max = 12"):
        em.reconstruct(x, 1.0, L=7, ell_max=[2, 12])
    with pytest.raises(ValueError, match="reconstruct: S must be in"):
        em.reconstruct(x, 1.0, L=7, ell_max=[2], S=1.5)
    with pytest.raises(ValueError, match="reconstruct: patches must have shape"):
        em.reconstruct(torch.zeros(4, 6, 6), 1.0, L=7)


def test_cli_simulate_reconstruct_resume(tmp_path, capsys):
    from orbitcore.cli import main
    from orbitcore.io import read_mrc

    sim = tmp_path / "sim"
    assert main(["em", "simulate-micrographs", "--phantom", "shepp-logan", "--size", "7", "--N", "84", "--gamma",
                 "0.1", "--snr", "5", "--ell-max", "2", "--out", str(sim)]) == 0
    out = tmp_path / "rec" / "vol.mrc"
    args = ["em", "reconstruct", "--micrographs", str(sim / "micrograph_000.mrc"), "--L", "7", "--ell-max", "1,2",
            "--K", "12", "--iterations", "1,1", "--S", "1", "--sigma-from", str(sim / "truth.json"), "--out", str(out),
            "--reference", str(sim / "volume.mrc")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "ell_max  1 it   0  Q =" in text and "ell_max  2 it   0" in text and "FSC vs reference" in text
    vol, _ = read_mrc(out)
    assert vol.shape == (7, 7, 7)
    assert (tmp_path / "rec" / "vol.ckpt").exists() and (tmp_path / "rec" / "vol_fsc.png").exists()
    assert main(args + ["--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    # a micrograph smaller than a patch: a clear error, no traceback
    assert main(["em", "reconstruct", "--micrographs", str(sim / "micrograph_000.mrc"), "--L", "90", "--ell-max", "2",
                 "--sigma", "1", "--out", str(out)]) == 1
    assert "smaller than one patch" in capsys.readouterr().err


def test_picking_scores_support_variant():
    sup = torch.zeros(L, L, dtype=torch.bool)
    sup[2:5, 2:5] = True
    # displacement (4, 4) shows rows/cols 4..6 of the projection: one support pixel (4, 4); (5, 5) none
    t = torch.tensor([[4, 4], [5, 5], [L, L]])
    p = torch.tensor([[L, L], [L, L], [L, L]])
    sc = em.picking_scores(p, t, L, support=sup)
    # signal-empty truth: patches 1, 2; picked empty: all three -> precision 2/3, recall 1
    assert math.isclose(sc["f1_signal"], 0.8)
    assert math.isclose(sc["f1"], 2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_e_step_bad_inputs(op):
    x = torch.zeros(3, L, L, dtype=torch.float64)
    lp = em.uniform_log_prior(L)
    with pytest.raises(ValueError, match="e_step: theta must be a real vector"):
        em.e_step(op, x, torch.zeros(op.M + 1), lp, 1.0)
    with pytest.raises(ValueError, match="e_step: theta must be finite"):
        em.e_step(op, x, torch.full((op.M,), float("nan")), lp, 1.0)
    with pytest.raises(ValueError, match="e_step: log_prior must have shape"):
        em.e_step(op, x, torch.zeros(op.M), lp[:-1], 1.0)
    with pytest.raises(ValueError, match="e_step: patches must have shape"):
        em.e_step(op, torch.zeros(3, L + 1, L + 1), torch.zeros(op.M), lp, 1.0)
    with pytest.raises(ValueError, match="e_step: sigma"):
        em.e_step(op, x, torch.zeros(op.M), lp, 0.0)


@pytest.mark.slow
def test_end_to_end_shepp_logan_from_random_start():
    """Algorithm 1 with marching from a random start recovers the basis-expanded Shepp–Logan
    phantom from noisy micrographs (small scale: L = 11, ell_max 4 -> 6, K = 150)."""
    from orbitcore.metrics import align_volumes, fsc
    from orbitcore.physics.volumes import shepp_logan_3d

    m = em.simulate_micrographs(shepp_logan_3d(11, dtype=torch.float64), 660, n_micrographs=2, gamma=0.1, snr=3.5,
                                ell_max=6, seed=11)
    x = em.extract_patches(m.micrographs, 11)
    vol, state, op = em.reconstruct(x, m.sigma, L=11, ell_max=[4, 6], K=150, iterations=[10, 6], S=0.3, seed=1,
                                    epsilon=-math.inf)
    truth = op.basis.evaluate(m.coefficients)
    al = align_volumes(truth, vol, refine_size=None)
    curve = fsc(truth, al.aligned).curve
    assert float(curve[3]) > 0.5, curve


def test_frequency_marching_lift_keeps_the_volume(gen):
    R = em.rotation_grid(5)
    small, big = em.EMOperator(L, 1, R), em.EMOperator(L, ELL, R)
    theta = small.random_theta(gen)
    lifted = em._lift(small, theta, big)
    torch.testing.assert_close(big.volume(lifted), small.volume(theta), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(big.projections(lifted), small.projections(theta), rtol=1e-10, atol=1e-10)


def _em_problem():
    vol = torch.randn(L, L, L, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    m = em.simulate_micrographs(vol, 91, gamma=0.1, snr=5.0, ell_max=2, seed=2)
    x = em.extract_patches(m.micrographs, L)
    kw = dict(L=L, ell_max=[1, 2], K=12, iterations=[2, 2], S=0.5, epsilon=-math.inf, seed=3, dtype=torch.float64)
    return x, m.sigma, kw


def _em_worker(rank, world, path):
    from orbitcore import _distributed

    assert _distributed.world("test", None) == (world, rank)  # the calls below (distributed=None) split
    x, sigma, kw = _em_problem()
    vol, st, _ = em.reconstruct(x, sigma, **kw)  # distributed=None: the initialised group is used
    # the statistics of two halves, summed over the processes, against those of the whole
    op = em.EMOperator(L, 2, em.rotation_grid(12))
    theta = op.random_theta(torch.Generator().manual_seed(1))
    part = em.e_step(op, x[rank::world], theta, em.uniform_log_prior(L), sigma, dtype=torch.float64)
    part.all_reduce()
    torch.save({"vol": vol, "Q": [h["Q"] for h in st.history], "patches": [h["patches"] for h in st.history],
                "n": part.n, "energy": part.energy, "empty": part.empty, "ll": part.log_likelihood,
                "sw": part.shift_weights, "bp": part.backprojection}, f"{path}.{rank}")


@pytest.mark.distributed
def test_reconstruct_split_over_two_processes_equals_one_process(tmp_path, spawn_gloo):
    spawn_gloo(_em_worker, str(tmp_path / "res"))
    x, sigma, kw = _em_problem()
    vol, st, _ = em.reconstruct(x, sigma, **kw)
    op = em.EMOperator(L, 2, em.rotation_grid(12))
    theta = op.random_theta(torch.Generator().manual_seed(1))
    whole = em.e_step(op, x, theta, em.uniform_log_prior(L), sigma, dtype=torch.float64)
    got = [torch.load(tmp_path / f"res.{r}", weights_only=True) for r in range(2)]
    for g in got:
        assert g["n"] == whole.n and g["energy"] == pytest.approx(whole.energy, rel=1e-13)
        assert g["empty"] == pytest.approx(whole.empty, rel=1e-12)
        assert g["ll"] == pytest.approx(whole.log_likelihood, rel=1e-12)
        torch.testing.assert_close(g["sw"], whole.shift_weights, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g["bp"], whole.backprojection, rtol=1e-12, atol=1e-12)
        # the whole reconstruction: the same minibatches, the same M-steps (sums in another order)
        assert g["patches"] == [h["patches"] for h in st.history]
        assert g["Q"] == pytest.approx([h["Q"] for h in st.history], rel=1e-11)
        torch.testing.assert_close(g["vol"], vol, rtol=1e-9, atol=1e-9 * float(vol.abs().max()))
    assert torch.equal(got[0]["vol"], got[1]["vol"])


def test_distributed_em_arguments_are_checked():
    x, sigma, kw = _em_problem()
    with pytest.raises(RuntimeError, match="reconstruct: distributed=True needs an initialised"):
        em.reconstruct(x, sigma, distributed=True, **kw)
    op = em.EMOperator(L, 1, em.rotation_grid(4))
    st = em.e_step(op, x[:3], torch.zeros(op.M), em.uniform_log_prior(L), sigma, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Statistics.all_reduce: torch.distributed is not initialised"):
        st.all_reduce()


def _em_cli_worker(rank, world, args):
    from orbitcore.cli import main

    assert main(args) == 0
    assert not torch.distributed.is_initialized()  # the command left the group it joined


@pytest.mark.distributed
def test_cli_reconstruct_under_torchrun_environment_matches_one_process(tmp_path, spawn_gloo):
    from orbitcore.cli import main
    from orbitcore.io import read_mrc

    sim = tmp_path / "sim"
    assert main(["em", "simulate-micrographs", "--phantom", "shepp-logan", "--size", "7", "--N", "84", "--gamma",
                 "0.1", "--snr", "5", "--ell-max", "2", "--out", str(sim)]) == 0
    common = ["em", "reconstruct", "--micrographs", str(sim / "micrograph_000.mrc"), "--L", "7", "--ell-max", "1,2",
              "--K", "12", "--iterations", "2,1", "--S", "0.5", "--float64", "--sigma-from", str(sim / "truth.json")]
    assert main(common + ["--out", str(tmp_path / "one" / "vol.mrc")]) == 0
    spawn_gloo(_em_cli_worker, common + ["--out", str(tmp_path / "two" / "vol.mrc")], init=False)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["vol.ckpt", "vol.json", "vol.mrc"]
    a, _ = read_mrc(tmp_path / "one" / "vol.mrc")
    b, _ = read_mrc(tmp_path / "two" / "vol.mrc")
    assert abs(a - b).max() <= 1e-6 * abs(a).max()  # float32 files of the same float64 reconstruction
