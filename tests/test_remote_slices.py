"""get_slice over URLs and unmapped files: only the slice's byte ranges move, values as numpy slices them.

fsspec's memory file system stands in for an object store; :class:`ptfile.io.remote.RemoteSource`
counts every byte served.  Values are compared with numpy's slicing of the whole tensor
(torch's own ``.numpy()`` where numpy has the dtype).
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ptfile
from ptfile.io import slicing

fsspec = pytest.importorskip("fsspec")

ROWS, COLS = 1000, 256  # a 1000-row float32 tensor of 1 KiB rows
ROW_BYTES = COLS * 4


def _put(path: str, data: bytes) -> str:
    fsspec.filesystem("memory").pipe(path, data)
    return f"memory://{path.lstrip('/')}"


def _matrix() -> np.ndarray:
    return np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)


def _torch_bytes(tree: dict) -> bytes:
    torch = pytest.importorskip("torch")
    out = io.BytesIO()
    torch.save(tree, out)
    return out.getvalue()


def _legacy_bytes(tree: dict) -> bytes:
    torch = pytest.importorskip("torch")
    out = io.BytesIO()
    torch.save(tree, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


def _formats() -> dict[str, bytes]:
    """The 1000-row tensor ``w`` as each format stores it."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save

    matrix = _matrix()
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, matrix)
    np.savez(npz, w=matrix)
    return {"torch.pt": _torch_bytes({"w": torch.from_numpy(matrix)}),
            "legacy.pt": _legacy_bytes({"w": torch.from_numpy(matrix)}), "w.safetensors": save({"w": torch.from_numpy(matrix)}),
            "w.npy": npy.getvalue(), "w.npz": npz.getvalue()}


@pytest.mark.parametrize("name", ["torch.pt", "legacy.pt", "w.safetensors", "w.npy", "w.npz"])
def test_one_row_of_a_remote_tensor_moves_one_row(name: str) -> None:
    url = _put(f"/rows/{name}", _formats()[name])
    matrix = _matrix()
    with ptfile.open(url) as handle:
        source = handle.source
        before, requests = source.bytes_read, source.requests
        row = handle.get_slice("w")[517]
        moved = source.bytes_read - before
        assert source.requests - requests == 1
        assert moved == ROW_BYTES, moved
        np.testing.assert_array_equal(row, matrix[517])
        before = source.bytes_read
        block = handle.get_slice("w")[10:13, 5:9]  # three runs far apart: three short ranges, nothing between
        assert source.bytes_read - before == ROW_BYTES * 2 + 4 * 4
        np.testing.assert_array_equal(block, matrix[10:13, 5:9])
        before = source.bytes_read
        np.testing.assert_array_equal(handle.get_slice("w")[::-1, ::-3], matrix[::-1, ::-3])
        assert source.bytes_read - before <= ROWS * ROW_BYTES  # the bounding range at most: never more than the tensor


@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_one_row_of_a_tensor_in_a_url_shard_folder_moves_one_row(tmp_path, layout: str) -> None:
    from ptfile.tools.convert import write_tensors

    matrix = _matrix()
    tensors = {"a": matrix[:10].copy(), "w": matrix, "z": matrix[:3].copy()}
    if layout == "bin":
        ptfile.save_sharded(tensors, tmp_path, max_shard_size=ROWS * ROW_BYTES // 2)
    else:
        write_tensors(tensors, str(tmp_path / "model.safetensors"), max_shard_size=ROWS * ROW_BYTES // 2)
    assert len(list(tmp_path.glob("*.index.json"))) == 1
    for path in tmp_path.iterdir():
        _put(f"/shards-{layout}/{path.name}", path.read_bytes())
    with ptfile.open(f"memory://shards-{layout}/") as handle:
        assert handle.format == "sharded"
        shard = handle.shard(handle.weight_map["w"])
        before = shard.source.bytes_read
        np.testing.assert_array_equal(handle.get_slice("w")[-2], matrix[-2])
        assert shard.source.bytes_read - before == ROW_BYTES


def test_one_row_of_a_url_dcp_folder_moves_one_row(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    matrix = _matrix()
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"w": torch.from_numpy(matrix), "b": torch.arange(3)}, checkpoint_id=str(tmp_path))
    for path in tmp_path.iterdir():
        _put(f"/dcp-rows/{path.name}", path.read_bytes())
    with ptfile.open("memory://dcp-rows") as handle:
        assert handle.format == "dcp"
        np.testing.assert_array_equal(handle.get_slice("w")[1], matrix[1])  # runs the item's pickle once
        source = handle._file(handle.entry("w").chunks[0].item.file)
        before, requests = source.bytes_read, source.requests
        np.testing.assert_array_equal(handle.get_slice("w")[517], matrix[517])
        assert (source.bytes_read - before, source.requests - requests) == (ROW_BYTES, 1)
        np.testing.assert_array_equal(handle.get_slice("w")[::-3, 5:9], matrix[::-3, 5:9])


def test_safetensors_views_slice_by_range_inside_their_target(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    (tmp_path / "views.pt").write_bytes(_torch_bytes({"base": base, "view": base[1:5, 2:9:3], "row": base[4]}))
    from ptfile.tools.convert import convert

    convert(tmp_path / "views.pt", str(tmp_path / "views.safetensors"))
    url = _put("/views/views.safetensors", (tmp_path / "views.safetensors").read_bytes())
    with ptfile.open(url) as handle:
        assert handle.info("view").storage == "base"  # stored as a view of base, not a copy
        for key, tensor in (("view", base[1:5, 2:9:3]), ("row", base[4])):
            whole = tensor.numpy()
            for index in ((slice(None),), (slice(None, None, -1),), (..., 1), (-1,)):
                np.testing.assert_array_equal(handle.get_slice(key)[index], whole[index])


def test_one_row_of_an_unmapped_local_file_reads_one_row(tmp_path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(_formats()["torch.pt"])
    with ptfile.open(path, mmap=False) as handle:
        reads = []
        real = handle.source.read
        handle.source.read = lambda offset, length, what="read": reads.append(length) or real(offset, length, what)
        np.testing.assert_array_equal(handle.get_slice("w")[3], _matrix()[3])
    assert reads == [ROW_BYTES]


def test_far_apart_runs_are_ranges_and_close_ones_one_range() -> None:
    wide = np.arange(64 * 8192, dtype=np.uint8).reshape(64, 8192)  # rows of 8 KiB: gaps below COALESCE_GAP
    tall = np.zeros((64, 65536), np.uint8)  # rows of 64 KiB: gaps above it
    url = _put("/runs/w.safetensors", _safetensors({"wide": wide, "tall": tall}))
    with ptfile.open(url) as handle:
        source = handle.source
        requests = source.requests
        np.testing.assert_array_equal(handle.get_slice("wide")[::2, 0], wide[::2, 0])
        assert source.requests - requests == 1  # 32 one-byte runs 16 KiB apart: gaps within COALESCE_GAP, one range
        requests, before = source.requests, source.bytes_read
        np.testing.assert_array_equal(handle.get_slice("tall")[:, 7], tall[:, 7])
        assert source.requests - requests == 64 and source.bytes_read - before == 64  # one byte per row


def test_ranges_go_in_one_batch_and_a_failed_or_short_one_is_fetched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tall = np.arange(16 * 65536, dtype=np.uint8).reshape(16, 65536)
    url = _put("/batch/w.safetensors", _safetensors({"tall": tall}))
    monkeypatch.setattr("ptfile.io.remote.RETRY_DELAY", 0.0)
    with ptfile.open(url) as handle:
        fs = handle.source.fs
        real, batches = fs.cat_ranges, []

        def flaky(paths, starts, ends, **kwargs):
            batches.append(len(paths))
            pieces = real(paths, starts, ends, **kwargs)
            return [OSError("reset"), pieces[1][:-1], *pieces[2:]]  # one failed, one short

        monkeypatch.setattr(fs, "cat_ranges", flaky)
        before = handle.source.bytes_read
        np.testing.assert_array_equal(handle.get_slice("tall")[:, 3], tall[:, 3])
        assert batches == [16]
        assert handle.source.bytes_read - before == 16  # the short piece is not counted as read


def test_too_many_ranges_read_the_bounding_range(monkeypatch: pytest.MonkeyPatch) -> None:
    tall = np.arange(64 * 65536, dtype=np.uint32).reshape(64, 65536)
    url = _put("/bound/w.safetensors", _safetensors({"tall": tall}))
    monkeypatch.setattr(slicing, "MAX_SLICE_READS", 8)
    with ptfile.open(url) as handle:
        requests = handle.source.requests
        np.testing.assert_array_equal(handle.get_slice("tall")[:, 7], tall[:, 7])
        assert handle.source.requests - requests == 1


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save(tensors)


def test_fortran_order_npy_slices_by_range() -> None:
    matrix = np.asfortranarray(_matrix())
    out = io.BytesIO()
    np.save(out, matrix)
    url = _put("/fortran/w.npy", out.getvalue())
    with ptfile.open(url) as handle:
        before = handle.source.bytes_read
        np.testing.assert_array_equal(handle.get_slice("w")[:, 9], matrix[:, 9])  # a column is one run in F order
        assert handle.source.bytes_read - before == ROWS * 4
        np.testing.assert_array_equal(handle.get_slice("w")[5:9, ::-7], matrix[5:9, ::-7])


def test_zero_dimensional_index_arrays_are_not_basic() -> None:
    assert not slicing.is_basic_index(np.array(3)) and not slicing.is_basic_index((1, np.array(0)))
    assert slicing.is_basic_index((np.int64(3), slice(None, None, -1), None, Ellipsis))
    url = _put("/zero-d/w.npy", _formats()["w.npy"])
    with ptfile.open(url) as handle:
        np.testing.assert_array_equal(handle.get_slice("w")[np.array(3)], _matrix()[np.array(3)])


def test_a_slice_reaching_past_its_storage_is_refused() -> None:
    source = ptfile.io.source.MappedSource(bytes(64), "<bytes>")
    place = slicing.Placement(source, 0, 64, np.dtype(np.float32), (4, 5), (5, 1), 0)  # 80 bytes of a 64-byte storage
    with pytest.raises(ptfile.CorruptFileError, match="reach past"):
        slicing.read_slice(place, (0,), "tensor")


def test_advanced_indexes_read_the_whole_tensor_as_before() -> None:
    url = _put("/adv/w.npy", _formats()["w.npy"])
    with ptfile.open(url) as handle:
        np.testing.assert_array_equal(handle.get_slice("w")[[1, 5]], _matrix()[[1, 5]])
        np.testing.assert_array_equal(handle.get_slice("w")[_matrix()[:, 0] > 5000, 1], _matrix()[_matrix()[:, 0] > 5000, 1])
        with pytest.raises(IndexError):
            handle.get_slice("w")[ROWS]
        with pytest.raises(IndexError):
            handle.get_slice("w")[0, 0, 0]


# -- hypothesis: views of torch tensors, every basic index ----------------------------------------------------------

DTYPES = ["float32", "int16", "uint8", "float64", "bfloat16", "complex64", "bool"]


@st.composite
def _indexes(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple:
    parts: list = []
    for size in shape:
        if draw(st.booleans()) and size:
            parts.append(draw(st.integers(-size, size - 1)))
        else:
            bound = st.none() | st.integers(-size - 2, size + 2)
            parts.append(slice(draw(bound), draw(bound), draw(st.none() | st.integers(-3, 3).filter(bool))))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if draw(st.booleans()) and parts:
        cut = draw(st.integers(0, len(parts)))
        drop = draw(st.integers(0, len(parts) - cut))
        parts[cut : cut + drop] = [Ellipsis]
    return tuple(parts)


@st.composite
def _views(draw: st.DrawFn) -> tuple:
    """``(tensor, view)``: a torch tensor and a non-contiguous view of it with an offset."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, draw(st.sampled_from(DTYPES)))
    shape = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    base = torch.arange(int(np.prod(shape)) * 3, dtype=torch.float64).reshape(-1)[: int(np.prod(shape)) * 3]
    base = (base * 1.5 - 7).to(dtype).reshape(*shape[:-1], shape[-1] * 3)
    view = base[..., draw(st.integers(0, 2)) :: draw(st.integers(1, 3))]
    if view.dim() > 1 and draw(st.booleans()):
        view = view.transpose(0, -1)
    return base, view


def _numpy(tensor) -> np.ndarray:
    """The tensor's values as numpy has them (bfloat16 through ml_dtypes)."""
    import ml_dtypes
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_slices_equal_numpy_slicing_of_the_whole_tensor(data: st.DataObject) -> None:
    base, view = data.draw(_views())
    url = _put("/hyp/t.pt", _torch_bytes({"base": base, "view": view}))
    with ptfile.open(url) as handle:
        for key, tensor in (("base", base), ("view", view)):
            whole = _numpy(tensor)
            index = data.draw(_indexes(whole.shape))
            try:
                expected = whole[index]
            except IndexError:
                with pytest.raises(IndexError):
                    handle.get_slice(key)[index]
                continue
            got = handle.get_slice(key)[index]
            assert got.shape == expected.shape and got.dtype == expected.dtype
            assert got.tobytes() == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("write", [_torch_bytes, _legacy_bytes])
def test_every_step_on_every_axis_of_a_view(write) -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(4 * 5 * 6, dtype=torch.int32).reshape(4, 5, 6)
    view = base.permute(2, 0, 1)[1:, :, ::2]
    url = _put(f"/steps/{write.__name__}.pt", write({"view": view}))
    whole = view.numpy()
    with ptfile.open(url) as handle:
        piece = handle.get_slice("view")
        for steps in itertools.product([1, 2, -1, -2], repeat=3):
            index = tuple(slice(None, None, step) for step in steps)
            np.testing.assert_array_equal(piece[index], whole[index])
