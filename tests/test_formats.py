"""Quantized, sparse, meta and subclass tensors, framework metadata and TorchScript archives.

Fixtures come from ``tests/fixtures/formats/make_formats.py`` (real torch); the torch
oracle tests compare bit for bit with what torch itself loads.  Hostile variants are
built by swapping the object pickle of a fixture for hand-written opcodes.
"""

from __future__ import annotations

import datetime
import io
import pathlib
import struct
import zipfile
from collections import defaultdict

import numpy as np
import pytest

import ptfile
from ptfile.formats.loader import CheckpointReader
from ptfile.io.open import open_source
from ptfile.policy import allowlist

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "formats"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def torch_load(name: str, **kwargs):
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(fixture(name), **kwargs)


# -- a tiny pickle writer for hostile variants ---------------------------------


class Op(bytes):
    """Raw opcodes, inserted as they are."""


def glob(module: str, name: str) -> Op:
    return Op(b"c" + f"{module}\n{name}\n".encode())


def call(func: Op, *args) -> Op:
    return Op(func + enc(tuple(args)) + b"R")


def enc(value) -> bytes:
    if isinstance(value, Op):
        return value
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(value, tuple):
        return b"(" + b"".join(enc(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(enc(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(enc(k) + enc(v) for k, v in value.items()) + b"u"
    raise TypeError(value)


def pickle_of(value) -> bytes:
    return b"\x80\x02" + enc(value) + b"."


def storage(kind: str, key: str, numel: int) -> Op:
    return Op(enc(("storage", glob("torch", kind), key, "cpu", numel)) + b"Q")


def hooks() -> Op:
    return call(glob("collections", "OrderedDict"))


def tensor(kind: str, key: str, numel: int, size: tuple, stride: tuple) -> Op:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage(kind, key, numel), 0, size, stride, False, hooks())


def with_pickle(name: str, data: bytes, record: str = "data.pkl", extra: dict | None = None) -> bytes:
    """The fixture's bytes with one record replaced (and records added)."""
    out = io.BytesIO()
    with zipfile.ZipFile(fixture(name)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        prefix = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            body = data if info.filename == f"{prefix}/{record}" else src.read(info)
            dst.writestr(info.filename, body)
        for rel, body in (extra or {}).items():
            dst.writestr(f"{prefix}/{rel}", body)
    return out.getvalue()


# -- quantized -----------------------------------------------------------------


def test_quantized_values_and_schemes():
    q = ptfile.load(fixture("quantized.pt"))
    assert isinstance(q["pt_qint8"], ptfile.QuantizedTensor)
    assert (q["pt_qint8"].dtype, q["pt_qint8"].qscheme, q["pt_qint8"].zero_point) == ("qint8", "per_tensor_affine", -7)
    assert q["pt_qint8"].int_repr().dtype == np.int8
    assert q["pt_qint32"].int_repr().dtype == np.int32
    assert (q["pc_quint8_axis1"].axis, q["pc_quint8_axis1"].scales.dtype) == (1, np.float64)
    # torch.save writes per_channel_affine for float qparams; float zero points decide the scheme, as in torch.
    assert q["fq_quint8"].qscheme == "per_channel_affine_float_qparams"
    assert q["fq_quint8"].zero_points.dtype == np.float32
    assert q["pt_transposed"].int_repr().strides == (1, 6)


def test_quantized_match_torch_bit_for_bit():
    expected = torch_load("quantized.pt")
    got = ptfile.load(fixture("quantized.pt"))
    assert list(got) == list(expected)
    for key, want in expected.items():
        np.testing.assert_array_equal(got[key].int_repr(), want.int_repr().numpy())
        deq = got[key].dequantize()
        assert deq.dtype == np.float32
        assert np.array_equal(deq.view(np.uint32), want.dequantize().numpy().view(np.uint32)), key


def test_qint32_dequantize_wraps_like_torch():
    # (int32)(q - zero_point) overflows in torch's kernel; the result must wrap the same way.
    qt = ptfile.QuantizedTensor(np.array([-2147471360, 2147483647], np.int32), "qint32", "per_tensor_affine",
                                scale=1.0, zero_point=12345)
    wrapped = -2147471360 - 12345 + 2**32  # int32 overflow, then rounding to float32
    assert qt.dequantize().tolist() == [float(np.float32(wrapped)), float(np.float32(2147483647 - 12345))]


def test_lazy_handle_lists_quantized():
    with ptfile.open(fixture("quantized.pt")) as ckpt:
        assert "pc_qint8" in ckpt
        info = ckpt.info("pc_qint8")
        assert (info.torch_dtype, info.shape) == ("qint8", (4, 6))
        value = ckpt["pc_qint8"]
        assert isinstance(value, ptfile.QuantizedTensor)
        np.testing.assert_array_equal(value.dequantize(), ptfile.load(fixture("quantized.pt"))["pc_qint8"].dequantize())


def _qtensor(qparams: Op, numel: int = 4, size=(2, 2), stride=(2, 1)) -> bytes:
    return pickle_of(call(glob("torch._utils", "_rebuild_qtensor"), storage("QInt8Storage", "0", numel), 0, size, stride,
                          qparams, False, hooks()))


def _double_tensor(key: str, n: int) -> Op:
    return tensor("DoubleStorage", key, n, (n,), (1,))


def make_zip(body: bytes, storages: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        dst.writestr("h/data.pkl", body)
        for key, raw in storages.items():
            dst.writestr(f"h/data/{key}", raw)
        dst.writestr("h/version", "3\n")
    return out.getvalue()


def test_hand_written_qtensor_loads():
    qparams = Op(enc((glob("torch", "per_channel_affine"), [0.5, 0.25], [1, -1], 0)))
    got = ptfile.load(make_zip(_qtensor(qparams), {"0": np.array([3, 5, 7, 9], np.int8).tobytes()}))
    assert got.dequantize().tolist() == [[1.0, 2.0], [2.0, 2.5]]


@pytest.mark.parametrize("qparams", [
    Op(enc((glob("torch", "per_tensor_affine"), "0.1", 0))),  # scale is text
    Op(enc((glob("torch", "per_tensor_affine"), 0.1, 1.5))),  # zero point is a float
    Op(enc((glob("torch", "per_tensor_affine"), 0.1, 300))),  # zero point out of qint8 range
    Op(enc((glob("torch", "per_tensor_affine"), float("inf"), 0))),
    Op(enc(("per_tensor_affine", 0.1, 0))),  # qscheme is a string, not torch's value
    Op(enc((glob("torch", "per_tensor_symmetric"), 0.1, 0))),  # torch cannot deserialize it either
    Op(enc((glob("torch", "per_channel_affine"), [0.1, 0.2, 0.3], [0, 0, 0], 0))),  # 3 scales for 2 channels
    Op(enc((glob("torch", "per_channel_affine"), [0.1, 0.2], [0, 0], 2))),  # axis out of range
    Op(enc((glob("torch", "per_channel_affine"), [0.1, "x"], [0, 0], 0))),
    Op(enc((glob("torch", "per_channel_affine"), [0.1, 0.2], [0.5, 0], 0))),  # float zero point in a long list
])
def test_hostile_qparams_are_refused(qparams):
    with pytest.raises(ptfile.CorruptFileError):
        ptfile.load(make_zip(_qtensor(qparams), {"0": bytes(4)}))


def test_per_channel_scales_tensor_of_wrong_length_is_refused():
    scales = tensor("DoubleStorage", "1", 3, (3,), (1,))
    zero_points = tensor("LongStorage", "2", 3, (3,), (1,))
    qparams = Op(enc((glob("torch", "per_channel_affine"), scales, zero_points, 0)))
    data = make_zip(_qtensor(qparams), {"0": bytes(4), "1": bytes(24), "2": bytes(24)})
    with pytest.raises(ptfile.CorruptFileError, match="size\\[0\\]=2"):
        ptfile.load(data)


# -- sparse --------------------------------------------------------------------


def test_sparse_to_dense_matches_torch():
    expected = torch_load("sparse.pt")
    got = ptfile.load(fixture("sparse.pt"))
    for key, want in expected.items():
        assert isinstance(got[key], ptfile.SparseTensor)
        assert got[key].layout == str(want.layout).removeprefix("torch.")
        dense = got[key].to_dense()
        reference = want.to_dense().numpy()
        assert dense.dtype == reference.dtype and dense.shape == reference.shape
        assert np.array_equal(dense, reference), key


def test_sparse_fields_and_lazy_listing():
    got = ptfile.load(fixture("sparse.pt"))
    assert got["coo"].indices.shape[0] == 2 and got["coo"].is_coalesced is True
    assert got["coo_uncoalesced"].to_dense().tolist() == [[0.0, 0.0, 5.0], [2.0, 0.0, 0.0]]
    with ptfile.open(fixture("sparse.pt")) as ckpt:
        assert set(ckpt.keys()) == set(got)
        assert ckpt.info("bsr").shape == (6, 4)
        np.testing.assert_array_equal(ckpt["csc"].to_dense(), got["csc"].to_dense())


def _coo(indices: list[list[int]], size: tuple) -> bytes:
    nnz = len(indices[0])
    flat = [i for row in indices for i in row]
    idx = tensor("LongStorage", "0", len(flat), (len(indices), nnz), (nnz, 1))
    values = tensor("FloatStorage", "1", nnz, (nnz,), (1,))
    layout = call(glob("torch.serialization", "_get_layout"), "torch.sparse_coo")
    size_op = call(glob("torch", "Size"), size)
    body = pickle_of(call(glob("torch._utils", "_rebuild_sparse_tensor"), layout, (idx, values, size_op, True)))
    return make_zip(body, {"0": np.array(flat, np.int64).tobytes(), "1": np.ones(nnz, np.float32).tobytes()})


def test_sparse_hand_written_coo_loads():
    got = ptfile.load(_coo([[0, 1], [2, 0]], (2, 3)))
    assert got.to_dense().tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("indices", [[[0, 2], [0, 0]], [[0, -1], [0, 0]], [[0, 0], [0, 3]]])
@pytest.mark.parametrize("weights_only", [True, False])
def test_sparse_indices_out_of_range_load_as_torch_loads_them(indices, weights_only):
    """torch 2.13 checks sparse invariants on load only when asked to, so it loads these; ptfile too."""
    torch = pytest.importorskip("torch")
    data = _coo(indices, (2, 3))
    theirs = torch.load(io.BytesIO(data), weights_only=weights_only)
    ours = ptfile.load(data)
    assert ptfile.scan(data).verdict == "clean"
    np.testing.assert_array_equal(ours.indices, theirs._indices().numpy())
    np.testing.assert_array_equal(ours.values, theirs._values().numpy())
    assert ours.shape == tuple(theirs.shape)
    # the indices are data until used: densifying checks them
    with pytest.raises(ptfile.CorruptFileError, match="out of range"):
        ours.to_dense()
    with ptfile.open(data) as ckpt, pytest.raises(ptfile.CorruptFileError, match="out of range"):
        ckpt[""].to_dense()


def test_sparse_layout_must_be_a_torch_layout():
    body = pickle_of(call(glob("torch.serialization", "_get_layout"), "os.system"))
    with pytest.raises(ptfile.CorruptFileError):
        ptfile.load(with_pickle("sparse.pt", body))


# -- meta and subclasses -------------------------------------------------------


def test_meta_tensor_has_shape_and_no_data():
    got = ptfile.load(fixture("subclass.pt"), records=True)
    meta = got["meta"]
    assert isinstance(meta, ptfile.MetaTensor)
    assert (meta.dtype, meta.shape, meta.strides) == ("float16", (2, 3), (3, 1))
    with ptfile.open(fixture("subclass.pt"), records=True) as ckpt:
        assert ckpt.info("meta").location == "meta"


def test_tensor_subclasses_keep_data_and_class():
    # torch itself cannot load this file without the __main__.Marked class, so values are checked directly.
    got = ptfile.load(fixture("subclass.pt"), records=True)
    assert got["tagged"].attributes == {"note": "kept"}
    assert got["tagged"].torch_class.path == "torch.Tensor"
    np.testing.assert_array_equal(got["tagged"], np.arange(4.0, dtype=np.float32))
    assert got["marked"].torch_class.path == "__main__.Marked"
    assert got["marked"].dtype == np.int32 and got["marked"].tolist() == [0, 1, 2]
    assert isinstance(got["param_with_attr"], ptfile.Parameter)
    assert got["param_with_attr"].attributes == {"tag": 7}


def test_unknown_subclass_needs_records():
    with pytest.raises(ptfile.UnsafeGlobalError, match="__main__.Marked"):
        ptfile.load(fixture("subclass.pt"))


def test_from_type_v2_refuses_a_non_tensor_function():
    body = pickle_of(call(glob("torch._tensor", "_rebuild_from_type_v2"), glob("collections", "OrderedDict"),
                          glob("torch", "Tensor"), (), None))
    with pytest.raises(ptfile.CorruptFileError, match="not a tensor rebuild function"):
        ptfile.load(with_pickle("subclass.pt", body))


def test_from_type_v2_with_parameter_class():
    inner = tensor("FloatStorage", "0", 2, (2,), (1,))
    body = pickle_of(call(glob("torch._tensor", "_rebuild_from_type_v2"), glob("torch._utils", "_rebuild_tensor_v2"),
                          glob("torch.nn.parameter", "Parameter"), Op(inner[len(glob("torch._utils", "_rebuild_tensor_v2")):-1]),
                          {"tag": 1}))
    data = with_pickle("subclass.pt", body)
    got = ptfile.load(_resize_storage(data, "0", 8))
    assert isinstance(got, ptfile.Parameter) and got.attributes == {"tag": 1}


def _resize_storage(data: bytes, key: str, nbytes: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = bytes(nbytes) if info.filename.endswith(f"/data/{key}") else src.read(info)
            dst.writestr(info.filename, body)
    return out.getvalue()


# -- metadata ------------------------------------------------------------------


def test_metadata_records_are_plain_data():
    got = ptfile.load(fixture("metadata.pt"))
    assert got["numpy_rng"][0] == "MT19937" and got["numpy_rng"][1].dtype == np.uint32
    state = got["numpy_random_state"]
    assert state.classname == "numpy.random.mtrand.RandomState"
    assert state.args[0].state[0]["state"]["pos"] == 624
    assert got["numpy_generator"].classname == "numpy.random._generator.Generator"
    assert dict(got["hparams"]) == {"lr": 0.001, "layers": [64, 32]} and got["hparams"].lr == 0.001
    content = got["config"].state["_content"]
    assert content["model"].state["_content"]["dim"].state["_val"] == 8
    assert got["path"] == pathlib.PurePosixPath("/data/run1/model.pt")
    assert got["winpath"] == pathlib.PureWindowsPath("C:/runs/a")
    tz = datetime.timezone(datetime.timedelta(hours=2))
    assert got["when"] == datetime.datetime(2024, 5, 17, 13, 45, 7, 123456, tzinfo=tz)
    assert got["day"] == datetime.date(2023, 1, 31)
    assert got["elapsed"] == datetime.timedelta(days=1, seconds=5, microseconds=7)
    assert type(got["torch_version"]) is str and got["torch_version"][0].isdigit()
    assert isinstance(got["counts"], defaultdict) and got["counts"] == {"a": [1]}
    assert got["qscheme"].name == "per_channel_affine"
    assert got["layout"].name == "sparse_coo"


def test_defaultdict_factory_must_be_a_builtin_type():
    body = pickle_of(call(glob("collections", "defaultdict"), glob("os", "getcwd")))
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):
        ptfile.load(with_pickle("metadata.pt", body))
    body = pickle_of(call(glob("collections", "defaultdict"), glob("torch", "Tensor")))
    with pytest.raises(ptfile.CorruptFileError, match="not a builtin type"):
        ptfile.load(with_pickle("metadata.pt", body))


def test_calling_a_builtin_type_is_still_dangerous():
    body = pickle_of(call(glob("builtins", "str"), "x"))
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):
        ptfile.load(with_pickle("metadata.pt", body), records=True)


def test_protocol1_reconstructor_is_a_new_use():
    got = ptfile.load(fixture("protocol1.pt"))
    assert vars(got["args"]) == {"lr": 0.1, "name": "x"}
    checkpoint = CheckpointReader(open_source(fixture("protocol1.pt"), mmap_file=False), copy=True, records=False)
    checkpoint.run(materialize=True)
    uses = {(u.path, u.use) for u in checkpoint.inventory}
    assert ("argparse.Namespace", "new") in uses
    checkpoint.close()


def test_reconstructor_of_an_unknown_class_is_unknown_class():
    body = pickle_of(call(glob("copyreg", "_reconstructor"), glob("mylib", "Thing"), glob("builtins", "object"), None))
    data = with_pickle("protocol1.pt", body)
    with pytest.raises(ptfile.UnsafeGlobalError, match="unknown-class"):
        ptfile.load(data)
    assert ptfile.load(data, records=True).classname == "mylib.Thing"


# -- TorchScript ---------------------------------------------------------------


def test_torchscript_keys_match_state_dict():
    torch = pytest.importorskip("torch")
    expected = torch.jit.load(fixture("scripted.pt")).state_dict()
    with ptfile.open(fixture("scripted.pt")) as ckpt:
        assert ckpt.keys() == list(expected)
        for key, want in expected.items():
            got = ckpt[key]
            assert got.dtype == want.numpy().dtype and np.array_equal(got, want.numpy()), key
        assert "class Net(Module):" in ckpt.code["code/__torch__.py"]
        assert ckpt.constants == ()


def test_torchscript_load_returns_the_module_tree():
    root = ptfile.load(fixture("scripted.pt"))
    assert root.classname == "__torch__.Net"
    block = root.state["block"]
    assert block.classname == "__torch__.Block"
    np.testing.assert_array_equal(block.state["plain"], np.ones(2, np.float32))  # an attribute, not a buffer
    assert block.state["ints"] == [1, 2, 3] and block.state["table"] == {"a": 1.5}
    with ptfile.open(fixture("scripted.pt")) as ckpt:
        assert "block.plain" not in ckpt


def test_torchscript_class_called_by_reduce_is_dangerous():
    body = pickle_of(call(glob("__torch__", "Evil"), "payload"))
    data = with_pickle("scripted.pt", body)
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):
        ptfile.load(data, records=True)


def test_torchscript_allowance_is_container_only():
    # The same __torch__ instance in an ordinary checkpoint is an unknown class.
    body = pickle_of(Op(glob("__torch__", "M") + b")\x81" + enc({"w": 1}) + b"b"))
    with pytest.raises(ptfile.UnsafeGlobalError, match="unknown-class"):
        ptfile.load(with_pickle("metadata.pt", body))
    assert ptfile.load(with_pickle("scripted.pt", body)).state == {"w": 1}
    uses = [allowlist.judge([u], inert_classes=lambda m, n: m == "__torch__").verdict
            for u in (ptfile.pickle.inventory.GlobalUse("__torch__", "M", "call", 0),)]
    assert uses == ["dangerous"]


@pytest.mark.parametrize("builder,arg", [
    ("build_intlist", (1, 2)), ("build_intlist", [1, "2"]), ("build_doublelist", [1]), ("build_boollist", [1]),
    ("build_tensorlist", [1]), ("build_tensorlist", {}),
])
def test_jit_pickle_builders_check_their_lists(builder, arg):
    body = pickle_of(call(glob("torch.jit._pickle", builder), arg))
    with pytest.raises(ptfile.CorruptFileError):
        ptfile.load(with_pickle("scripted.pt", body))


def test_jit_pickle_builders_return_plain_lists():
    body = pickle_of((call(glob("torch.jit._pickle", "build_intlist"), [1, 2]),
                      call(glob("torch.jit._pickle", "restore_type_tag"), {"a": 1.0}, "Dict[str, float]")))
    assert ptfile.load(with_pickle("scripted.pt", body)) == ([1, 2], {"a": 1.0})


def test_torchscript_constants_resolve_their_own_storages():
    constants = pickle_of((tensor("FloatStorage", "0", 2, (2,), (1,)),))
    data = with_pickle("scripted.pt", constants, record="constants.pkl",
                       extra={"constants/0": np.array([4.0, 5.0], np.float32).tobytes()})
    with ptfile.open(data) as ckpt:
        (const,) = ckpt.constants
        assert const.shape == (2,)
        assert ckpt.keys()[0] == "scale"  # data/0 is still the parameter, not constants/0
        np.testing.assert_array_equal(ckpt["scale"], np.full(3, 0.5, np.float32))


def test_fixture_set_is_small():
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.pt")) < 150_000


# -- nested --------------------------------------------------------------------


def test_nested_tensor_components():
    nested = ptfile.load(fixture("nested.pt"))
    parts = nested["nested"].unbind()
    assert [p.shape for p in parts] == [(2, 3), (1, 3), (4, 3)]
    assert np.shares_memory(parts[0], nested["nested"].buffer)  # views of the buffer, as in torch
    assert [p.tolist() for p in nested["nested_int"].unbind()] == [[0, 1, 2, 3, 4], [0, 1]]
    with ptfile.open(fixture("nested.pt")) as handle:
        assert handle.keys() == ["nested", "nested_int"]
        assert [p.tobytes() for p in handle["nested"].unbind()] == [p.tobytes() for p in parts]


def test_nested_tensor_matches_torch():
    torch = pytest.importorskip("torch")
    expected = torch.load(fixture("nested.pt"), weights_only=True)
    got = ptfile.load(fixture("nested.pt"))
    for key in ("nested", "nested_int"):
        for mine, theirs in zip(got[key].unbind(), expected[key].unbind(), strict=True):
            assert mine.shape == tuple(theirs.shape)
            assert mine.tobytes() == theirs.contiguous().numpy().tobytes()


def test_nested_tensor_out_of_bounds_is_refused():
    from ptfile.tensors.special import NestedTensor

    buffer = np.arange(6, dtype=np.float32)
    sizes, strides = np.array([[2, 3]]), np.array([[3, 1]])
    assert NestedTensor(buffer, sizes, strides, np.array([0])).unbind()[0].shape == (2, 3)
    for offsets in (np.array([1]), np.array([-1])):
        with pytest.raises(ptfile.CorruptFileError):
            NestedTensor(buffer, sizes, strides, offsets).unbind()
    with pytest.raises(ptfile.CorruptFileError, match="do not describe"):
        NestedTensor(buffer, sizes, np.array([[3, 1, 1]]), np.array([0])).unbind()
