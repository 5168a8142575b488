"""RELION STAR files written by hand (3.0 and 3.1 with optics groups): units, conventions
(t = -origin, R = Aᵀ through relion_euler_to_matrix, pixel sizes), errors, writing."""
import math
import textwrap

import numpy as np
import pytest
import torch

from orbitcore.geometry import relion_euler_to_matrix
from orbitcore.io import ParticleTable, make_particle_table, parse_image_name, read_star, write_star

STAR31 = textwrap.dedent("""\
    # version 30001

    data_optics

    loop_
    _rlnOpticsGroup #1
    _rlnOpticsGroupName #2
    _rlnAmplitudeContrast #3
    _rlnSphericalAberration #4
    _rlnVoltage #5
    _rlnImagePixelSize #6
    _rlnImageSize #7
    _rlnImageDimensionality #8
    1 opticsGroup1 0.100000 2.700000 300.000000 1.500000 64 2
    2 opticsGroup2 0.070000 0.010000 200.000000 0.750000 128 2

    # version 30001

    data_particles

    loop_
    _rlnImageName #1
    _rlnOpticsGroup #2
    _rlnAngleRot #3
    _rlnAngleTilt #4
    _rlnAnglePsi #5
    _rlnOriginXAngst #6
    _rlnOriginYAngst #7
    _rlnDefocusU #8
    _rlnDefocusV #9
    _rlnDefocusAngle #10
    _rlnPhaseShift #11
    000002@Particles/a.mrcs 2 10.0 20.0 30.0 1.500000 -3.000000 12000.0 11500.0 45.0 0.0
    000001@Particles/a.mrcs 1 -50.0 90.0 170.0 -0.750000 0.000000 15000.0 14000.0 -10.0 30.0
    """)

STAR30 = textwrap.dedent("""\
    data_

    loop_
    _rlnImageName #1
    _rlnAngleRot #2
    _rlnAngleTilt #3
    _rlnAnglePsi #4
    _rlnOriginX #5
    _rlnOriginY #6
    _rlnDefocusU #7
    _rlnDefocusV #8
    _rlnDefocusAngle #9
    _rlnVoltage #10
    _rlnSphericalAberration #11
    _rlnAmplitudeContrast #12
    _rlnMagnification #13
    _rlnDetectorPixelSize #14
    3@stack.mrcs 5.0 60.0 -120.0 2.5 -1.25 20000.0 19000.0 12.0 300 2.7 0.1 50000 7.5
    1@stack.mrcs 0.0 0.0 0.0 0.0 0.0 18000.0 18000.0 0.0 300 2.7 0.1 50000 7.5
    """)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_relion31_optics_groups_units_and_conventions(tmp_path):
    t = read_star(write(tmp_path, "p31.star", STAR31))
    assert t.version == "3.1" and len(t) == 2 and len(t.optics) == 2
    # optics merged per particle by rlnOpticsGroup: row 0 is group 2
    np.testing.assert_array_equal(t.pixel_size, [0.75, 1.5])
    c = t.ctf()
    torch.testing.assert_close(c.voltage, torch.tensor([200.0, 300.0], dtype=torch.float64))
    torch.testing.assert_close(c.cs, torch.tensor([0.01, 2.7], dtype=torch.float64))
    torch.testing.assert_close(c.amplitude_contrast, torch.tensor([0.07, 0.1], dtype=torch.float64))
    torch.testing.assert_close(c.defocus_u, torch.tensor([12000.0, 15000.0], dtype=torch.float64))
    torch.testing.assert_close(c.astigmatism_angle, torch.tensor([45.0, -10.0], dtype=torch.float64))
    torch.testing.assert_close(c.phase_shift, torch.tensor([0.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(c.b_factor, torch.zeros(2, dtype=torch.float64))  # absent: 0
    # origins in Å / that particle's pixel size, and t = -origin
    torch.testing.assert_close(t.shifts(), torch.tensor([[-1.5 / 0.75, 3.0 / 0.75], [0.75 / 1.5, 0.0]], dtype=torch.float64))
    # Euler angles through the one mapping, R = Aᵀ
    want = relion_euler_to_matrix(torch.tensor([10.0, -50.0], dtype=torch.float64),
                                  torch.tensor([20.0, 90.0], dtype=torch.float64),
                                  torch.tensor([30.0, 170.0], dtype=torch.float64))
    torch.testing.assert_close(t.rotations(), want)
    idx, files = t.image_refs()
    assert idx.tolist() == [1, 0] and files == ["Particles/a.mrcs", "Particles/a.mrcs"]


def test_relion30_units_and_conventions(tmp_path):
    t = read_star(write(tmp_path, "p30.star", STAR30))
    assert t.version == "3.0" and t.optics is None
    # pixel size = detector pixel (µm) · 1e4 / magnification = 7.5e4 / 5e4 = 1.5 Å
    np.testing.assert_allclose(t.pixel_size, [1.5, 1.5])
    # origins in pixels, t = -origin
    torch.testing.assert_close(t.shifts(), torch.tensor([[-2.5, 1.25], [0.0, 0.0]], dtype=torch.float64))
    # RELION's Euler_angles2matrix at (rot, tilt, psi) = (0, 0, 0) is the identity
    torch.testing.assert_close(t.rotations()[1], torch.eye(3, dtype=torch.float64))
    assert t.ctf().pixel_size.tolist() == [1.5, 1.5]
    assert t.image_refs()[0].tolist() == [2, 0]


def test_origin_sign_against_a_projection(tmp_path):
    # RELION: the particle is at -origin. A STAR origin of (+2, 0) px on a projection of a blob at
    # the centre means the blob sits at x = -2 in the image: our shift t = (-2, 0) moves it there.
    from orbitcore.physics import gaussian_mixture_volume, project

    t = read_star(write(tmp_path, "p30.star", STAR30.replace("3@stack.mrcs 5.0 60.0 -120.0 2.5 -1.25",
                                                             "3@stack.mrcs 0.0 0.0 0.0 2.0 0.0")))
    vol = gaussian_mixture_volume(17, [(0.0, 0.0, 0.0)], 1.5, dtype=torch.float64)
    img = project(vol, t.rotations()[:1], t.shifts()[:1])[0]
    iy, ix = divmod(int(img.argmax()), 17)
    assert (ix - 8, iy - 8) == (-2, 0)


def test_blocks_named_otherwise(tmp_path):
    text = STAR30.replace("data_\n", "data_model_class_1\n") + "\ndata_model_general\n\n_rlnNrClasses 1\n"
    t = read_star(write(tmp_path, "m.star", text))
    assert len(t) == 2 and t.version == "3.0"
    t2 = read_star(write(tmp_path, "img.star", STAR30.replace("data_\n", "data_images\n")))
    assert len(t2) == 2


@pytest.mark.parametrize("text, exc, match", [
    (STAR31.replace("000001@Particles/a.mrcs 1 ", "000001@Particles/a.mrcs 7 "), ValueError,
     r"read_star: .*bad.star: particle row 1 names optics group 7, which the optics block does not define "
     r"\(groups: \[1, 2\]\)"),
    (STAR31.replace("2 opticsGroup2", "1 opticsGroup2"), ValueError, r"read_star: .*optics group 1 is defined twice"),
    ("data_a\nloop_\n_rlnFoo\n1\ndata_b\nloop_\n_rlnBar\n2\n", ValueError, r"read_star: .*bad.star: no particle block found"),
])
def test_malformed_files(tmp_path, text, exc, match):
    with pytest.raises(exc, match=match):
        read_star(write(tmp_path, "bad.star", text))


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"read_star: .*nope.star: no such file"):
        read_star(tmp_path / "nope.star")
    text = STAR30.replace("_rlnDefocusV #8\n", "").replace(" 20000.0 19000.0", " 20000.0").replace(
        " 18000.0 18000.0", " 18000.0")
    text = "\n".join(line for line in text.splitlines())
    # renumbering is not needed: starfile reads columns by name
    t = read_star(write(tmp_path, "nodv.star", text))
    with pytest.raises(KeyError, match=r"ParticleTable.ctf: .*nodv.star: no CTF parameters: missing column\(s\) "
                                       r"rlnDefocusV"):
        t.ctf()
    t2 = read_star(write(tmp_path, "noang.star", "data_\nloop_\n_rlnImageName\n1@a.mrcs\n"))
    with pytest.raises(KeyError, match=r"no Euler angles: missing column\(s\) rlnAngleRot, rlnAngleTilt, rlnAnglePsi"):
        t2.rotations()
    with pytest.raises(KeyError, match=r"no pixel size: need rlnImagePixelSize"):
        t2.pixel_size
    assert torch.equal(t2.shifts(), torch.zeros(1, 2, dtype=torch.float64))  # no origins: centred


@pytest.mark.parametrize("name, want", [("000012@Extract/x.mrcs", (11, "Extract/x.mrcs")), ("1@a b.mrcs", (0, "a b.mrcs")),
                                        ("single.mrc", (0, "single.mrc"))])
def test_parse_image_name(name, want):
    assert parse_image_name(name) == want


@pytest.mark.parametrize("name", ["0@x.mrcs", "a@x.mrcs", "@x.mrcs", ""])
def test_parse_image_name_errors(name):
    with pytest.raises(ValueError, match=r"parse_image_name: rlnImageName"):
        parse_image_name(name)


@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_write_read_round_trip(tmp_path, version):
    t = read_star(write(tmp_path, "p31.star", STAR31))
    out = write_star(tmp_path / f"out{version}.star", t, version=version)
    u = read_star(out)
    assert u.version == version
    torch.testing.assert_close(u.rotations(), t.rotations())
    torch.testing.assert_close(u.shifts(), t.shifts(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(u.pixel_size, t.pixel_size)
    for k in ("defocus_u", "voltage", "cs", "amplitude_contrast", "phase_shift"):
        torch.testing.assert_close(getattr(u.ctf(), k), getattr(t.ctf(), k))
    if version == "3.1":
        assert len(u.optics) == 2


def test_with_poses_and_make_particle_table(tmp_path, gen):
    from orbitcore.geometry import random_rotations
    from orbitcore.physics import CTFParams

    R = random_rotations(4, generator=gen, dtype=torch.float64)
    tt = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    c = CTFParams.create(torch.tensor([1e4, 1.1e4, 1.2e4, 1.3e4]), pixel_size=1.25, voltage=200.0)
    tab = make_particle_table([f"{i + 1}@s.mrcs" for i in range(4)], rotations=R, shifts=tt, ctf=c, image_size=32)
    assert isinstance(tab, ParticleTable)
    p = tab.write(tmp_path / "m.star")
    u = read_star(p)
    torch.testing.assert_close(u.rotations(), R, rtol=0, atol=1e-7)
    torch.testing.assert_close(u.shifts(), tt, rtol=0, atol=1e-7)
    assert u.optics["rlnVoltage"].tolist() == [200.0] and u.optics["rlnImageSize"].tolist() == [32]
    # estimated poses written into a copy of a table
    R2 = random_rotations(4, generator=gen, dtype=torch.float64)
    v = read_star(u.with_poses(R2, -tt).write(tmp_path / "est.star"))
    torch.testing.assert_close(v.rotations(), R2, rtol=0, atol=1e-7)
    torch.testing.assert_close(v.shifts(), -tt, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"ParticleTable.with_poses: rotations must have shape \(4, 3, 3\)"):
        u.with_poses(R2[:2])


def test_write_is_atomic(tmp_path, monkeypatch):
    import starfile

    t = read_star(write(tmp_path, "p31.star", STAR31))

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(starfile, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        write_star(tmp_path / "x.star", t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p31.star"]


def test_relion_euler_convention_matches_relion_direction(tmp_path):
    # RELION's projection direction for (rot, tilt) is (cos rot sin tilt, sin rot sin tilt, cos tilt);
    # ours is R e_z with R from the STAR angles
    t = read_star(write(tmp_path, "p31.star", STAR31))
    rot, tilt = math.radians(10.0), math.radians(20.0)
    want = torch.tensor([math.cos(rot) * math.sin(tilt), math.sin(rot) * math.sin(tilt), math.cos(tilt)],
                        dtype=torch.float64)
    torch.testing.assert_close(t.rotations()[0][:, 2], want)


def test_particle_table_write_names_itself_in_errors(tmp_path):
    t = read_star(write(tmp_path, "p31.star", STAR31))
    with pytest.raises(ValueError, match=r"^ParticleTable\.write: version must be '3\.0' or '3\.1', got '2\.0'"):
        t.write(tmp_path / "x.star", version="2.0")
    with pytest.raises(ValueError, match=r"^write_star: version must be '3\.0' or '3\.1', got '2\.0'"):
        write_star(tmp_path / "x.star", t, version="2.0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p31.star"]  # nothing written
