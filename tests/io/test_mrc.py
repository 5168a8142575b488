"""MRC/MRCS: round trips, float16 (mode 12), lazy stacks, atomic writes, and clear errors for
truncated, corrupt and unsupported files (made here), warnings for non-standard headers."""
import io
import pickle
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from orbitcore import OrbitcoreWarning
from orbitcore.io import MRCStackWriter, mrc_info, open_stack, read_mrc, write_mrc


def test_volume_round_trip_keeps_voxel_size(tmp_path, gen):
    v = torch.randn(9, 9, 9, generator=gen)
    p = write_mrc(tmp_path / "v.mrc", v, voxel_size=1.37)
    data, vs = read_mrc(p)
    assert data.dtype == np.float32 and np.array_equal(data, v.numpy())
    assert vs == pytest.approx(1.37)
    with mrcfile.open(p) as m:  # independent reader: a valid MRC2014 file, volume space group
        assert m.header.ispg == 1 and m.voxel_size.x == pytest.approx(1.37)
    assert mrcfile.validate(str(p), print_file=io.StringIO())


def test_stack_round_trip_and_stack_header(tmp_path, gen):
    s = np.random.default_rng(0).standard_normal((5, 12, 12)).astype(np.float32)
    p = write_mrc(tmp_path / "s.mrcs", s, voxel_size=2.0)
    with mrcfile.open(p) as m:
        assert m.is_image_stack()
    data, vs = read_mrc(p)
    assert np.array_equal(data, s) and vs == 2.0
    single, _ = read_mrc(write_mrc(tmp_path / "one.mrc", s[0]))
    assert single.shape == (12, 12)


def test_float16_mode12(tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float16)
    p = write_mrc(tmp_path / "h.mrcs", x, dtype=np.float16)
    with mrcfile.open(p) as m:
        assert m.header.mode == 12
    assert mrc_info(p).mode == 12
    data, _ = read_mrc(p)
    assert data.dtype == np.float32 and np.array_equal(data, x.astype(np.float32))
    raw, _ = read_mrc(p, dtype=None)
    assert raw.dtype == np.float16
    # a float16 file written by mrcfile itself
    q = tmp_path / "ext.mrc"
    with mrcfile.new(q) as m:
        m.set_data(x)
    assert np.array_equal(read_mrc(q)[0], x.astype(np.float32))


@pytest.mark.parametrize("mode, dtype", [(0, np.int8), (1, np.int16), (6, np.uint16)])
def test_integer_modes(tmp_path, mode, dtype):
    x = (np.arange(2 * 6 * 6) % 100).astype(dtype).reshape(2, 6, 6)
    p = tmp_path / f"m{mode}.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(x)
    assert mrc_info(p).mode == mode
    assert np.array_equal(read_mrc(p)[0], x.astype(np.float32))


def test_lazy_stack_reads_only_what_is_asked(tmp_path):
    s = np.random.default_rng(2).standard_normal((20, 10, 10)).astype(np.float32)
    p = write_mrc(tmp_path / "s.mrcs", s)
    st = open_stack(p)
    assert len(st) == 20 and st.shape == (20, 10, 10)
    assert st._mm is None  # nothing mapped until asked
    assert np.array_equal(st[3], s[3]) and np.array_equal(st[[7, 1, 7]], s[[7, 1, 7]])
    assert np.array_equal(st[5:9], s[5:9]) and np.array_equal(st[-1], s[-1])
    chunks = list(st.chunks(6))
    assert [c[0] for c in chunks] == [0, 6, 12, 18]
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), s)
    st2 = pickle.loads(pickle.dumps(st))  # workers receive it without the memory map
    assert st2._mm is None and np.array_equal(st2[4], s[4])
    with pytest.raises(IndexError, match=r"MRCStack: .*s.mrcs: image index 20 is out of range \(the file holds 20"):
        st[20]


def test_stack_writer_streams_atomically(tmp_path):
    p = tmp_path / "w.mrcs"
    s = np.random.default_rng(3).standard_normal((7, 8, 8)).astype(np.float32)
    with MRCStackWriter(p, 7, 8, voxel_size=1.5) as w:
        w.write(4, s[4:])
        assert not p.exists()  # still under its temporary name
        w.write(0, s[:4])
    data, vs = read_mrc(p)
    assert np.array_equal(data, s) and vs == 1.5
    with mrcfile.open(p) as m:
        assert m.is_image_stack() and m.header.dmax == pytest.approx(s.max())
    # missing images: no file, clear error
    with pytest.raises(ValueError, match=r"MRCStackWriter: .*q.mrcs: 3 of 7 images were never written"):
        with MRCStackWriter(tmp_path / "q.mrcs", 7, 8) as w:
            w.write(0, s[:4])
    assert not (tmp_path / "q.mrcs").exists()
    # an exception inside the block removes the temporary file
    with pytest.raises(RuntimeError):
        with MRCStackWriter(tmp_path / "e.mrcs", 7, 8) as w:
            w.write(0, s[:2])
            raise RuntimeError("interrupted")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.mrcs"]
    with pytest.raises(ValueError, match=r"MRCStackWriter.write: images must have shape \(b, 8, 8\)"):
        with MRCStackWriter(tmp_path / "f.mrcs", 2, 8) as w:
            w.write(0, np.zeros((2, 9, 9)))


def test_write_is_atomic_on_error(tmp_path):
    p = tmp_path / "v.mrc"
    write_mrc(p, np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match=r"write_mrc: data must be finite"):
        write_mrc(p, np.full((4, 4, 4), np.nan))
    assert np.array_equal(read_mrc(p)[0], np.ones((4, 4, 4), np.float32))  # old file intact
    assert [x.name for x in tmp_path.iterdir()] == ["v.mrc"]
    with pytest.raises(FileExistsError, match=r"write_mrc: .*v.mrc exists"):
        write_mrc(p, np.ones((4, 4, 4)), overwrite=False)
    with pytest.raises(TypeError, match=r"write_mrc: dtype must be float32 \(mode 2\) or float16"):
        write_mrc(tmp_path / "x.mrc", np.ones((4, 4, 4)), dtype=np.float64)


def _good(tmp_path, shape=(4, 6, 6)):
    p = write_mrc(tmp_path / "good.mrcs", np.ones(shape, np.float32))
    return bytearray(p.read_bytes())


def test_truncated_file(tmp_path):
    b = _good(tmp_path)
    p = tmp_path / "trunc.mrcs"
    p.write_bytes(bytes(b[:1024 + 2 * 6 * 6 * 4 + 10]))
    with pytest.raises(ValueError, match=r"read_mrc: .*trunc.mrcs: truncated MRC file: the header promises 4 "
                                         r"section\(s\) of 6x6 float32 \(1600 bytes\) but the file has 1322 bytes "
                                         r"\(2 complete section\(s\)\)"):
        read_mrc(p)
    with pytest.raises(ValueError, match=r"open_stack: .*truncated MRC file"):
        open_stack(p)


def test_not_an_mrc_file(tmp_path):
    p = tmp_path / "text.mrc"
    p.write_text("hello")
    with pytest.raises(ValueError, match=r"read_mrc: .*text.mrc: not an MRC file \(it has 5 bytes"):
        read_mrc(p)
    with pytest.raises(FileNotFoundError, match=r"read_mrc: .*missing.mrc: no such file"):
        read_mrc(tmp_path / "missing.mrc")


def test_corrupt_header_dimensions(tmp_path):
    b = _good(tmp_path)
    b[0:4] = np.int32(-6).tobytes()
    p = tmp_path / "neg.mrc"
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r"corrupt MRC header: dimensions \(nx, ny, nz\) = \(-6, 6, 4\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_mrc(p)


@pytest.mark.parametrize("mode, name", [(4, "complex float32"), (5, "unknown"), (101, "4-bit packed")])
def test_unsupported_mode(tmp_path, mode, name):
    b = _good(tmp_path)
    b[12:16] = np.int32(mode).tobytes()
    p = tmp_path / "mode.mrc"
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=rf"unsupported MRC mode {mode} \({name}\); orbitcore reads modes"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_mrc(p)


def test_nonstandard_header_warns_but_reads(tmp_path):
    b = _good(tmp_path)
    b[208:212] = b"\x00\x00\x00\x00"  # no map ID
    b[212:216] = b"\x00\x00\x00\x00"  # zero machine stamp
    p = tmp_path / "wild.mrcs"
    p.write_bytes(bytes(b))
    with pytest.warns(OrbitcoreWarning, match=r"wild.mrcs: non-standard MRC header: no map ID .*unrecognised "
                                              r"machine stamp 0x00 0x00 0x00 0x00 \(read as little-endian\)"):
        data, _ = read_mrc(p)
    assert np.array_equal(data, np.ones((4, 6, 6), np.float32))


def test_trailing_bytes_warn(tmp_path):
    b = _good(tmp_path)
    p = tmp_path / "long.mrcs"
    p.write_bytes(bytes(b) + b"\x00" * 7)
    with pytest.warns(OrbitcoreWarning, match=r"7 trailing bytes after the data"):
        read_mrc(p)


def test_big_endian_file(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    p = tmp_path / "be.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(x.astype(">f4"))
    assert np.array_equal(read_mrc(p)[0], x)
    assert np.array_equal(open_stack(p)[1], x[1])
