"""The real files in ../shared/data (RELION 3.0/3.1, cryoSPARC, an MRC header from the wild, the
70S ribosome map): everything reads, non-standard headers warn, units and conventions come out
right (checked against an independent parse of the text and against the cryoSPARC copy), and the
70S map round-trips through read → simulate → write → read."""
import math
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from orbitcore import OrbitcoreWarning
from orbitcore.geometry import relion_euler_to_matrix
from orbitcore.io import ParticleStack, mrc_info, read_cryosparc, read_mrc, read_star, write_mrc


def parse_loop(path, block):
    """Minimal independent STAR loop parser: {column: [str values]} of one data block."""
    cols, rows, inside = [], [], False
    for line in open(path):
        s = line.strip()
        if s.startswith("data_"):
            inside = s == f"data_{block}"
            continue
        if not inside or not s or s.startswith("#") or s == "loop_":
            continue
        if s.startswith("_"):
            cols.append(s.split()[0][1:])
        else:
            rows.append(s.split())
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


def test_relion31_particles_and_optics(shared_data):
    t = read_star(shared_data / "relion31.star")
    raw = parse_loop(shared_data / "relion31.star", "particles")
    assert t.version == "3.1" and len(t) == 5
    px = 2.806
    np.testing.assert_allclose(t.pixel_size, px)
    ox = np.array(raw["rlnOriginXAngst"], float)
    oy = np.array(raw["rlnOriginYAngst"], float)
    torch.testing.assert_close(t.shifts(), torch.from_numpy(-np.stack([ox, oy], 1) / px))  # t = -origin
    R = relion_euler_to_matrix(*(torch.tensor(np.array(raw[c], float)) for c in ("rlnAngleRot", "rlnAngleTilt",
                                                                                 "rlnAnglePsi")))
    torch.testing.assert_close(t.rotations(), R)
    c = t.ctf()
    np.testing.assert_allclose(c.defocus_u.numpy(), np.array(raw["rlnDefocusU"], float))
    np.testing.assert_allclose(c.astigmatism_angle.numpy(), np.array(raw["rlnDefocusAngle"], float))
    assert c.voltage.unique().tolist() == [300.0] and c.cs.unique().tolist() == [0.01]
    assert c.amplitude_contrast.unique().tolist() == [0.1]


def test_relion31_column_order_does_not_matter(shared_data):
    a = read_star(shared_data / "relion31.star")
    b = read_star(shared_data / "relion31.v2.star")
    ka = a.particles.set_index("rlnImageName").sort_index()
    kb = b.particles.set_index("rlnImageName").sort_index()[ka.columns]
    assert set(a.particles.columns) == set(b.particles.columns)
    for col in ka.columns:
        if ka[col].dtype.kind == "f":
            np.testing.assert_allclose(ka[col].to_numpy(), kb[col].to_numpy(), err_msg=col)
        else:
            assert ka[col].tolist() == kb[col].tolist(), col


def test_relion31_six_optics_groups(shared_data):
    t = read_star(shared_data / "relion31.6opticsgroups.star")
    optics = parse_loop(shared_data / "relion31.6opticsgroups.star", "optics")
    parts = parse_loop(shared_data / "relion31.6opticsgroups.star", "particles")
    assert len(t) == 139 and len(t.optics) == 6
    by_group = {int(g): i for i, g in enumerate(optics["rlnOpticsGroup"])}
    rows = [by_group[int(g)] for g in parts["rlnOpticsGroup"]]
    want_px = np.array([float(optics["rlnImagePixelSize"][r]) for r in rows])
    want_cs = np.array([float(optics["rlnSphericalAberration"][r]) for r in rows])
    want_kv = np.array([float(optics["rlnVoltage"][r]) for r in rows])
    np.testing.assert_allclose(t.pixel_size, want_px)
    c = t.ctf()
    np.testing.assert_allclose(c.cs.numpy(), want_cs)
    np.testing.assert_allclose(c.voltage.numpy(), want_kv)
    assert set(np.unique(want_cs)) == {2.6, 2.7} and set(np.unique(want_px)) == {1.24, 1.25}
    # Å origins divided by each particle's own optics-group pixel size
    ox = np.array(parts["rlnOriginXAngst"], float)
    np.testing.assert_allclose(t.shifts()[:, 0].numpy(), -ox / want_px)
    # the stacks of this file are not shipped: a clear error names them
    with pytest.raises(FileNotFoundError, match=r"image file\(s\) not found: Polish/job520/Micrographs/0003_shiny.mrcs"):
        ParticleStack(t)


def test_relion30_sample_origins_in_pixels(shared_data):
    t = read_star(shared_data / "sample_particles_relion30.star")
    raw = parse_loop(shared_data / "sample_particles_relion30.star", "model_class_1")
    assert t.version == "3.0" and len(t) == 17
    # pixel size = rlnDetectorPixelSize (µm) · 1e4 / rlnMagnification
    np.testing.assert_allclose(t.pixel_size, 5.0 * 1e4 / 37369.207031)
    torch.testing.assert_close(t.shifts(), torch.from_numpy(-np.stack([np.array(raw["rlnOriginX"], float),
                                                                        np.array(raw["rlnOriginY"], float)], 1)))
    volts = t.ctf().voltage.numpy()
    assert set(volts.tolist()) == {300.0, 200.0}  # per-particle values in a 3.0 file
    assert t.rotations().shape == (17, 3, 3)


def test_empiar_star_and_cryosparc_agree(shared_data):
    s = read_star(shared_data / "empiar_10076_7.star")
    c = read_cryosparc(shared_data / "empiar_10076_7.cs")
    assert s.version == "3.0" and len(s) == len(c) == 7
    # two programs, two unit systems, one pixel size: 5 µm · 1e4 / 38168 = 1.31 Å (cryoSPARC psize_A)
    np.testing.assert_allclose(s.pixel_size, 5e4 / 38168)
    np.testing.assert_allclose(c.pixel_size, s.pixel_size, rtol=1e-6)
    cs, cc = s.ctf(), c.ctf()
    for k in ("defocus_u", "defocus_v", "voltage", "cs", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(cc, k).numpy(), getattr(cs, k).numpy(), rtol=1e-6, err_msg=k)
    # cryoSPARC stores the astigmatism angle in radians, RELION in degrees
    np.testing.assert_allclose(cc.astigmatism_angle.numpy(), cs.astigmatism_angle.numpy(), rtol=1e-6)
    assert cs.astigmatism_angle[0].item() == pytest.approx(5.28)
    # same images through both descriptions (cryoSPARC's blob/idx is 0-based, RELION's 1-based)
    a, b = ParticleStack(s), ParticleStack(c)
    assert torch.equal(a.images(np.arange(7)), b.images(np.arange(7)))
    with mrcfile.open(shared_data / "empiar_10076_7.mrc", permissive=True) as m:
        np.testing.assert_array_equal(a.images(np.arange(7)).numpy(), m.data)


def test_relion31_stack_with_wild_header(shared_data):
    # relion31.mrcs has no map ID and a zero machine stamp (the data README attributes this to
    # empiar_10076_7.mrc, whose header is in fact standard): read with a warning, not a crash
    with pytest.warns(OrbitcoreWarning, match=r"relion31.mrcs: non-standard MRC header: no map ID.*machine stamp"):
        info = mrc_info(shared_data / "relion31.mrcs")
    assert info.shape == (5, 256, 256) and info.mode == 2
    with pytest.warns(OrbitcoreWarning):
        ds = ParticleStack(shared_data / "relion31.star")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(shared_data / "relion31.mrcs", permissive=True) as m:
            raw = np.array(m.data)
    # rows name their images: 000001@relion31.mrcs ... in order here
    for i in range(5):
        np.testing.assert_array_equal(ds[i]["image"].numpy(), raw[i])
    assert ds[0]["pixel_size"] == pytest.approx(2.806)  # from the STAR optics, not the header's 1.0


def test_standard_headers_do_not_warn(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrbitcoreWarning)
        e = mrc_info(shared_data / "empiar_10076_7.mrc")
        m = mrc_info(shared_data / "clean70SRibosome_vol_65p.mrc")
    assert e.shape == (7, 320, 320) and e.voxel_size is None  # header voxel size 0: unset
    assert m.shape == (65, 65, 65) and m.voxel_size is None


@pytest.fixture(scope="module")
def ribosome(shared_data):
    data, vs = read_mrc(shared_data / "clean70SRibosome_vol_65p.mrc")
    return torch.from_numpy(data), vs


def test_70s_map_round_trip(ribosome, tmp_path):
    from orbitcore.physics import simulate_particles

    vol, vs = ribosome
    assert vs is None and vol.shape == (65, 65, 65)
    px = 5.0  # ASPIRE's tutorials use 5 Å/voxel at this size (the header says 0)
    p = write_mrc(tmp_path / "70s.mrc", vol, voxel_size=px)
    back, vs2 = read_mrc(p)
    assert np.array_equal(back, vol.numpy()) and vs2 == pytest.approx(px)
    out = tmp_path / "sim" / "70s.star"
    r = simulate_particles(torch.from_numpy(back), 64, pixel_size=px, snr=0.5, shift_std=10.0,
                           defocus_median=10000.0, astigmatism_std=200.0, seed=0, chunk_size=24, out=out)
    ds = ParticleStack(out)
    assert torch.equal(ds.images(np.arange(64)), r.images)
    torch.testing.assert_close(ds.rotations, r.rotations, rtol=0, atol=1e-6)
    torch.testing.assert_close(ds.shifts, r.shifts, rtol=0, atol=1e-5)
    assert torch.equal(ds.ctf.defocus_u.float(), r.ctf.defocus_u.float())
    assert ds[0]["pixel_size"] == pytest.approx(px)
    data, vs3 = read_mrc(r.stack_path)
    assert vs3 == pytest.approx(px) and data.shape == (64, 65, 65)


def test_70s_projection_is_its_line_integral(ribosome):
    # an independent check of the projector on the real map: for rotations about z by 90°
    # multiples the projection is the z-sum of the map turned on the grid
    from orbitcore.physics import project

    vol, _ = ribosome
    v = vol.double()
    Rz90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    img = project(v, Rz90)
    # image(x, y) = Σ_z v(R (x, y, z)) = Σ_z v(-y, x, z): image[y, x] = S[x, -y] with S = Σ_z v[z]
    want = v.sum(0).T.flip(0)
    # a wrong orientation is off by ~120%; the 6.6% left is the gridding correction at a
    # grid-aligned rotation (it over-compensates there, and this map is not masked: 4% of its
    # mass lies in the box corners, where the correction is largest); ~2.8% for random rotations
    assert float((img - want).norm() / want.norm()) < 0.08
    wrong = v.sum(0).T.flip(1)
    assert float((img - wrong).norm() / wrong.norm()) > 0.5
    assert math.isfinite(float(img.sum()))
