"""ParticleStack: images matched by rlnImageName (never row order), lazy reads, downsampling,
normalisation, DataLoader workers, and clear errors for inconsistent inputs."""
import textwrap

import numpy as np
import pytest
import torch

from orbitcore import fourier
from orbitcore.io import ParticleStack, read_star, write_mrc
from orbitcore.physics import CTFParams


def make_dataset(tmp_path, rows, sizes=(("a.mrcs", 6, 16), ("b.mrcs", 4, 16)), image_size=None, extra=""):
    rng = np.random.default_rng(0)
    stacks = {}
    for name, n, box in sizes:
        x = rng.standard_normal((n, box, box)).astype(np.float32)
        write_mrc(tmp_path / name, x, voxel_size=2.0)
        stacks[name] = x
    cols = "_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n_rlnAnglePsi #4\n_rlnOriginXAngst #5\n" \
           "_rlnOriginYAngst #6\n_rlnDefocusU #7\n_rlnDefocusV #8\n_rlnDefocusAngle #9\n_rlnOpticsGroup #10\n"
    body = "\n".join(f"{name} {10 * i}.0 {5 * i}.0 0.0 {i}.0 -2.0 {10000 + i}.0 9000.0 0.0 1"
                     for i, name in enumerate(rows))
    size = image_size if image_size is not None else sizes[0][2]
    text = textwrap.dedent(f"""\
        data_optics

        loop_
        _rlnOpticsGroup #1
        _rlnAmplitudeContrast #2
        _rlnSphericalAberration #3
        _rlnVoltage #4
        _rlnImagePixelSize #5
        _rlnImageSize #6
        1 0.1 2.7 300.0 2.0 {size}

        data_particles

        loop_
        """) + cols + body + "\n" + extra
    p = tmp_path / "p.star"
    p.write_text(text)
    return p, stacks


ROWS = ["3@a.mrcs", "1@b.mrcs", "6@a.mrcs", "1@a.mrcs", "4@b.mrcs", "2@a.mrcs"]


def test_images_follow_image_names_not_row_order(tmp_path):
    p, st = make_dataset(tmp_path, ROWS)
    ds = ParticleStack(p)
    assert len(ds) == 6 and ds.n == 16 and ds.size == 16
    for i, name in enumerate(ROWS):
        k, f = name.split("@")
        np.testing.assert_array_equal(ds[i]["image"].numpy(), st[f][int(k) - 1])
        assert ds[i]["index"] == i
    # shuffling the rows of the STAR file permutes the items, the images follow their names
    table = read_star(p)
    perm = [4, 0, 5, 2, 1, 3]
    ds2 = ParticleStack(table.subset(perm))
    for j, i in enumerate(perm):
        assert torch.equal(ds2[j]["image"], ds[i]["image"])
        assert torch.equal(ds2[j]["rotation"], ds[i]["rotation"])
    batch = ds.images([5, 0, 5])
    assert torch.equal(batch[0], ds[5]["image"]) and torch.equal(batch[2], batch[0])


def test_metadata_per_item(tmp_path):
    p, _ = make_dataset(tmp_path, ROWS)
    item = ParticleStack(p)[2]
    assert item["pixel_size"] == 2.0
    torch.testing.assert_close(item["shift"], torch.tensor([-2.0 / 2.0, 2.0 / 2.0]))  # -origin(Å)/px
    assert item["ctf_defocus_u"] == 10002.0 and item["ctf_voltage"] == 300.0
    c = CTFParams.from_batch({k: torch.tensor([v]) for k, v in item.items() if k.startswith("ctf_")})
    assert float(c.defocus_u) == 10002.0 and float(c.pixel_size) == 2.0


def test_downsampling_and_normalisation(tmp_path):
    p, st = make_dataset(tmp_path, ROWS)
    ds = ParticleStack(p, size=8)
    raw = torch.from_numpy(st["a.mrcs"][2])  # row 0 is 3@a.mrcs
    want = fourier.downsample(raw.double(), 8).float()
    torch.testing.assert_close(ds[0]["image"], want)
    assert ds[0]["pixel_size"] == 4.0 and ds[0]["ctf_pixel_size"] == 4.0
    torch.testing.assert_close(ds[3]["shift"], torch.tensor([-3.0 / 4.0, 2.0 / 4.0]))  # in the new pixels
    dn = ParticleStack(p, normalize="image")
    x = dn.images(np.arange(6))
    torch.testing.assert_close(x.mean((1, 2)), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std((1, 2)), torch.ones(6), atol=1e-5, rtol=0)
    dg = ParticleStack(p, normalize="global")
    allx = ParticleStack(p).images(np.arange(6)).double()
    assert dg.mean == pytest.approx(float(allx.mean())) and dg.std == pytest.approx(float(allx.std()))
    de = ParticleStack(p, normalize=(1.0, 2.0))
    torch.testing.assert_close(de[0]["image"], (ParticleStack(p)[0]["image"] - 1.0) / 2.0)
    dr = ParticleStack(p, normalize="rms")  # scale only: the mean (the DC term) is kept
    assert dr.mean == 0.0 and dr.std == pytest.approx(float(allx.pow(2).mean().sqrt()))
    torch.testing.assert_close(dr.images(np.arange(6)).double(), allx / float(allx.pow(2).mean().sqrt()))


def test_dataloader_with_workers(tmp_path):
    p, _ = make_dataset(tmp_path, ROWS)
    ds = ParticleStack(p)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([b["image"] for b in dl])
    assert torch.equal(got, ds.images(np.arange(6)))
    idx = torch.cat([b["index"] for b in dl])
    assert idx.tolist() == list(range(6))


@pytest.mark.parametrize("rows, sizes, image_size, exc, match", [
    (["7@a.mrcs"], (("a.mrcs", 6, 16),), None, IndexError,
     r"ParticleStack: .*p.star: row 0 \(rlnImageName '7@a.mrcs'\) points at image 7, but .*a.mrcs holds 6 image\(s\)"),
    (["1@a.mrcs", "1@b.mrcs"], (("a.mrcs", 2, 16), ("b.mrcs", 2, 12)), None, ValueError,
     r"ParticleStack: inconsistent box sizes: .*a.mrcs has 16x16 images, .*b.mrcs has 12x12"),
    (["1@a.mrcs"], (("a.mrcs", 2, 16),), 32, ValueError,
     r"ParticleStack: .*p.star: row 0 declares rlnImageSize 32 but its image file .*a.mrcs has 16x16 images"),
    (["1@missing.mrcs"], (("a.mrcs", 2, 16),), None, FileNotFoundError,
     r"image file\(s\) not found: missing.mrcs \(rows 0; looked in"),
])
def test_inconsistent_inputs(tmp_path, rows, sizes, image_size, exc, match):
    p, _ = make_dataset(tmp_path, rows, sizes=sizes, image_size=image_size)
    with pytest.raises(exc, match=match):
        ParticleStack(p)


def test_bad_arguments(tmp_path):
    p, _ = make_dataset(tmp_path, ROWS)
    with pytest.raises(ValueError, match=r"ParticleStack: size must be <= the image size 16"):
        ParticleStack(p, size=32)
    with pytest.raises(ValueError, match=r"ParticleStack: normalize must be None, 'image', 'global', 'rms' or \(mean, std\)"):
        ParticleStack(p, normalize="zscore")
    with pytest.raises(TypeError, match=r"ParticleStack: particles must be a STAR/.cs path or a ParticleTable"):
        ParticleStack(42)
    ds = ParticleStack(p)
    with pytest.raises(IndexError, match=r"ParticleStack: index 6 is out of range for 6 particles"):
        ds[6]


def test_relocated_table_written_elsewhere_opens_the_same_images(tmp_path):
    """A table written to another folder (e.g. a run's poses.star) keeps naming the same images:
    names relative to the STAR file are rewritten relative to the new folder, the index part and
    absolute names stay; names read through ``data_dir`` (project-relative) are kept."""
    from orbitcore.io import read_star

    src = tmp_path / "project" / "Extract"
    src.mkdir(parents=True)
    p, st = make_dataset(src, ["000002@a.mrcs", "1@b.mrcs", f"3@{src / 'a.mrcs'}"])
    before = ParticleStack(p)
    out = tmp_path / "runs" / "r1"
    out.mkdir(parents=True)
    moved = read_star(p).relocated(out)
    names = moved.particles["rlnImageName"].tolist()
    assert names[0] == "000002@../../project/Extract/a.mrcs" and names[1] == "1@../../project/Extract/b.mrcs"
    assert names[2] == f"3@{src / 'a.mrcs'}"  # absolute: as written
    moved.write(out / "poses.star")
    after = ParticleStack(out / "poses.star")
    for i in range(3):
        np.testing.assert_array_equal(after[i]["image"].numpy(), before[i]["image"].numpy())
    # without relocation the copy does not open from its new folder
    read_star(p).write(out / "plain.star")
    with pytest.raises(FileNotFoundError, match="image file"):
        ParticleStack(out / "plain.star")
    # project-relative names, read through data_dir: kept as written, and the same data_dir opens
    # the new file (a missing image is still an error)
    star = tmp_path / "moved.star"
    star.write_text(p.read_text().replace("000002@a.mrcs", "2@Extract/a.mrcs").replace("1@b.mrcs", "1@Extract/b.mrcs"))
    with pytest.raises(FileNotFoundError):
        read_star(star).relocated(out)
    kept = read_star(star).relocated(out, data_dir=tmp_path / "project")
    assert kept.particles["rlnImageName"].tolist() == read_star(star).particles["rlnImageName"].tolist()
    kept.write(out / "via_data_dir.star")
    again = ParticleStack(out / "via_data_dir.star", data_dir=tmp_path / "project")
    np.testing.assert_array_equal(again[0]["image"].numpy(), st["a.mrcs"][1])
    with pytest.raises(FileNotFoundError):
        read_star(star).relocated(out, data_dir=tmp_path)
    with pytest.raises(TypeError, match=r"ParticleTable.relocated: directory must be a folder path \(str or os.PathLike\), got int"):
        read_star(p).relocated(3)


def test_data_dir_and_basename_fallback(tmp_path):
    sub = tmp_path / "stacks"
    sub.mkdir()
    p, st = make_dataset(sub, ["2@Extract/job1/a.mrcs"], sizes=(("a.mrcs", 3, 8),))
    star = tmp_path / "moved.star"
    star.write_text(p.read_text())
    with pytest.raises(FileNotFoundError):
        ParticleStack(star)
    ds = ParticleStack(star, data_dir=sub)  # the path as written is absent: its base name is used
    np.testing.assert_array_equal(ds[0]["image"].numpy(), st["a.mrcs"][1])
