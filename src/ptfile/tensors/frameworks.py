"""Tensors for other frameworks: the one conversion layer over ptfile's numpy values.

Every reader hands out numpy arrays (and ptfile's values for quantized, sparse, nested
and meta tensors).  ``framework=`` on :func:`ptfile.open`, :func:`ptfile.load`, a
handle's ``get_tensor`` and ``get_slice`` converts them here, once, whatever the format:

=================  ===================================================================
framework          gives
=================  ===================================================================
``numpy``          the arrays as read (the default; nothing is imported)
``pt``/``torch``   ``torch.Tensor`` viewing the same memory: dtype (bfloat16, float8,
                   complex32, bool), strides and offsets kept, one torch storage per
                   storage of the file so tied weights stay tied; ``nn.Parameter`` with
                   ``requires_grad`` as saved; quantized, sparse, nested and meta tensors
                   rebuilt as torch's own
``jax``/``flax``   ``jax.Array`` on the CPU (bfloat16 and float8 kept; JAX copies only what
                   it cannot alias)
``mlx``            ``mlx.core.array`` (a copy; bfloat16 and float64 kept; complex128,
                   complex32 and float8, which MLX lacks, refused)
=================  ===================================================================

Containers are rebuilt around the converted tensors with their own types
(``OrderedDict`` keeps ``_metadata``, so ``load_state_dict(strict=True)`` works); a
sub-tree shared in the file stays shared.  Nothing here imports a framework until it is
asked for, and a missing one is a :class:`~ptfile.errors.FrameworkMissingError`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FrameworkMissingError, PtfileError, UnsupportedFormatError
from ..pickle.engine import gc_paused
from ..pickle.values import Parameter, Record
from .dtypes import by_numpy
from .objects import is_namespace
from .special import MetaTensor, NestedTensor, QuantizedTensor, SparseTensor, SpecialTensor
from .views import root_of

__all__ = ["FRAMEWORKS", "framework_name", "import_framework", "Converter", "converter", "map_tree"]

#: Names ``framework=`` accepts, and the framework each one means (safetensors' spellings included).
FRAMEWORKS = {
    "numpy": "numpy", "np": "numpy",
    "pt": "torch", "torch": "torch",
    "jax": "jax", "flax": "jax",
    "mlx": "mlx",
}
#: The module each framework is imported from, and the extra that installs it.
_MODULES = {"torch": ("torch", "torch"), "jax": ("jax.numpy", "jax"), "mlx": ("mlx.core", "mlx")}


def framework_name(framework: str) -> str:
    """The framework a ``framework=`` value names; raise PtfileError for an unknown one."""
    try:
        return FRAMEWORKS[framework]
    except (KeyError, TypeError):
        names = ", ".join(repr(name) for name in FRAMEWORKS)
        raise PtfileError(f"unknown framework {framework!r}; ptfile converts to {names}") from None


def import_framework(name: str) -> Any:
    """The framework's module, imported now; FrameworkMissingError says how to install it."""
    module, extra = _MODULES[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FrameworkMissingError(
            f"framework={name!r} needs {name}, which cannot be imported ({exc}); "
            f"install it, for example with: pip install 'ptfile[{extra}]'"
        ) from None


# -- torch ----------------------------------------------------------------------------


class _TorchTensors:
    """numpy arrays to torch tensors over the same memory, one torch storage per root buffer."""

    def __init__(self, device: Any = None, private: bool = False) -> None:
        self.torch = import_framework("torch")
        self.device = None if device is None else self.torch.device(device)
        self.private = private  # read-only arrays may view memory of this load alone (a copy-on-write map)
        # id(root buffer) -> its storage: every view of one root gets one torch storage, as torch.load
        # gives tied tensors one storage.  The entry holds the root, which keeps its id unique.
        self._storages: dict[int, _Storage] = {}

    def convert(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return self._place(self._parameter(value) if isinstance(value, Parameter) else self.array(value))
        if isinstance(value, QuantizedTensor):
            return self._place(self.quantized(value))
        if isinstance(value, SparseTensor):
            return self._place(self.sparse(value))
        if isinstance(value, NestedTensor):
            return self._place(self.nested(value))
        if isinstance(value, MetaTensor):
            return self.meta(value)
        return value

    def _place(self, tensor: Any) -> Any:
        if self.device is None or tensor.device == self.device:
            return tensor
        moved = tensor.to(self.device)
        if isinstance(tensor, self.torch.nn.Parameter):
            return self._as_parameter(moved.detach(), tensor.requires_grad, vars(tensor))
        return moved

    def dtype_of(self, array: np.ndarray) -> Any:
        info = by_numpy(array.dtype)
        if info is None:
            raise UnsupportedFormatError(f"numpy arrays of dtype {array.dtype} have no torch dtype")
        return getattr(self.torch, info.torch_name)

    def array(self, array: np.ndarray) -> Any:
        """A tensor viewing ``array``'s memory, or a copy where torch cannot view it."""
        root = root_of(array)
        storage = self._storages.get(id(root))
        if storage is None:
            tensor = self._first_view(array, root)
            if tensor is not None:
                return tensor
            storage = self._storage_of(root)
        dtype = self.dtype_of(array)
        itemsize = array.dtype.itemsize
        offset = _address(array) - storage.address if array.size and storage else 0
        if storage is None or offset % itemsize or any(s < 0 or s % itemsize for s in array.strides):
            return self._copy(array, dtype)
        strides = tuple([s // itemsize for s in array.strides])
        # One call places the view on the root's storage: cheaper, for 20,000 small tensors, than
        # a typed view of the whole storage followed by as_strided.  torch checks the bounds again.
        return self.torch.empty(0, dtype=dtype).set_(storage.untyped, offset // itemsize, array.shape, strides)

    def _first_view(self, array: np.ndarray, root: np.ndarray) -> Any:
        """The tensor of the first view of a root that covers it whole, with the root's storage kept; else None.

        A file of many small storages gives little else: its tensor is torch's own view of the
        array, and the root's storage is that tensor's, for any later view.  Five times cheaper
        than placing a view on a storage.
        """
        if self.private and not array.flags.writeable:
            _writable_if_private(root)
            _writable_if_private(array)
        if not _whole_view(array, root):
            return None
        try:
            tensor = self.torch.from_numpy(array)
        except TypeError:  # a numpy type torch has not: dtype_of refuses it, with the reason
            return None
        self._storages[id(root)] = _Storage(root, tensor)
        return tensor

    def _storage_of(self, root: np.ndarray) -> _Storage | None:
        """One torch storage per root buffer, so every view of it shares it; None where torch cannot view it."""
        if not root.flags.c_contiguous:
            return None
        if not root.size:  # nothing to share; numpy's empty arrays have strides torch cannot view
            return _Storage(root, self.torch.empty(0, dtype=self.torch.uint8))
        if self.private and not root.flags.writeable:
            _writable_if_private(root)
        flat = root.reshape(-1).view(np.uint8)
        if not flat.flags.writeable:
            # torch tensors are writable: over a read-only map a write would crash, over a caller's
            # buffer it would change the caller's bytes.  One copy per storage keeps its tensors sharing it.
            flat = flat.copy()
        storage = self._storages[id(root)] = _Storage(root, self.torch.from_numpy(flat))
        return storage

    def _copy(self, array: np.ndarray, dtype: Any) -> Any:
        dense = np.ascontiguousarray(array)
        flat = dense.reshape(-1).view(np.uint8) if dense.size else np.empty(0, np.uint8)
        return self.torch.from_numpy(flat.copy()).view(dtype).reshape(array.shape)

    def _parameter(self, array: Parameter) -> Any:
        tensor = self.array(array.view(np.ndarray))
        return self._as_parameter(tensor, bool(array.requires_grad), array.attributes or {})

    def _as_parameter(self, tensor: Any, requires_grad: bool, attributes: dict) -> Any:
        param = self.torch.nn.Parameter(tensor, requires_grad=requires_grad)
        for name, value in attributes.items():  # as torch._utils._rebuild_parameter_with_state sets them
            setattr(param, name, value)
        return param

    def quantized(self, value: QuantizedTensor) -> Any:
        torch = self.torch
        data = self.array(np.asarray(value.data))
        if value.dtype not in ("qint8", "quint8", "qint32"):
            raise UnsupportedFormatError(f"torch builds no {value.dtype} tensor from its integers")
        if value.qscheme == "per_tensor_affine":
            q = torch._make_per_tensor_quantized_tensor(data, value.scale, value.zero_point)
        else:
            q = torch._make_per_channel_quantized_tensor(
                data, self.array(np.asarray(value.scales)), self.array(np.asarray(value.zero_points)), value.axis)
        q.requires_grad_(value.requires_grad)
        return q

    def sparse(self, value: SparseTensor) -> Any:
        torch = self.torch
        values = self.array(np.asarray(value.values))
        if value.layout == "sparse_coo":
            return torch.sparse_coo_tensor(self.array(np.asarray(value.indices)), values, value.shape,
                                           is_coalesced=value.is_coalesced)
        return torch.sparse_compressed_tensor(
            self.array(np.asarray(value.compressed_indices)), self.array(np.asarray(value.plain_indices)), values,
            value.shape, layout=getattr(torch, value.layout))

    def nested(self, value: NestedTensor) -> Any:
        torch = self.torch
        parts = [self.array(np.ascontiguousarray(part)) for part in value.unbind()]
        return torch.nested.nested_tensor(parts)

    def meta(self, value: MetaTensor) -> Any:
        torch = self.torch
        return torch.empty_strided(value.shape, value.strides, dtype=getattr(torch, value.dtype), device="meta",
                                   requires_grad=value.requires_grad)


class _Storage:
    """A root buffer as one torch storage, which every tensor viewing the root is placed on."""

    __slots__ = ("root", "_data", "_untyped", "_address")

    def __init__(self, root: np.ndarray, data: Any) -> None:
        self.root = root  # held: its id is the key of this entry
        self._data = data  # a tensor over the whole root: torch.from_numpy's storage holds the memory alive
        self._untyped: Any = None
        self._address: int | None = None

    # Both are asked for only when a second tensor views the root: most roots have one.
    @property
    def untyped(self) -> Any:
        if self._untyped is None:
            self._untyped = self._data.untyped_storage()
        return self._untyped

    @property
    def address(self) -> int:
        """The root's address (the storage may be a copy of a read-only root: offsets count from the root)."""
        if self._address is None:
            self._address = _address(self.root)
        return self._address


def _whole_view(array: np.ndarray, root: np.ndarray) -> bool:
    """True when torch can view ``array`` itself and it is all of ``root``'s memory, from its first byte.

    A contiguous view inside a contiguous root, as large as the root, can start nowhere else.  Only
    numpy's own types in native byte order (not ml_dtypes' bfloat16 or float8), in writable memory.
    """
    return (array.flags.c_contiguous and root.flags.c_contiguous and array.flags.writeable
            and array.nbytes == root.nbytes and array.size > 0
            and array.dtype.isbuiltin == 1 and array.dtype.isnative and array.dtype.kind in "biufc")


def _writable_if_private(array: np.ndarray) -> None:
    """Let torch write an array whose memory is private to this load (a copy-on-write map).

    numpy allows it only when the memory below is writable: otherwise the tensors stay read-only.
    """
    with contextlib.suppress(ValueError):
        array.flags.writeable = True


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


# -- jax and mlx ----------------------------------------------------------------------


#: Arrays of at least this many bytes go to JAX by ``device_put``, which aliases aligned host memory
#: on the CPU; smaller ones by ``jnp.asarray``, whose copy costs less than aliasing's work per array.
JAX_ALIAS_BYTES = 256 * 1024


class _JaxArrays:
    """numpy arrays to ``jax.Array``: large ones aliased where JAX allows, small ones copied."""

    def __init__(self, device: Any = None) -> None:
        self.jnp = import_framework("jax")
        import jax  # lazy: optional dependency (ptfile[jax])

        self.jax = jax
        if isinstance(device, str):  # "cpu", "gpu": the first device of that platform
            device = jax.devices(device)[0]
        self.device = device

    def convert(self, value: Any) -> Any:
        if isinstance(value, SpecialTensor):
            raise UnsupportedFormatError(f"JAX has no {type(value).__name__}; read it with framework='numpy' or 'pt'")
        if not isinstance(value, np.ndarray):
            return value
        plain = self._exact(value.view(np.ndarray))
        try:
            if plain.nbytes >= JAX_ALIAS_BYTES:
                return self.jax.device_put(plain, self.device)
            return self.jnp.asarray(plain, device=self.device)
        except TypeError as exc:  # a dtype JAX lacks (complex32)
            raise UnsupportedFormatError(f"JAX has no array of dtype {value.dtype}: {exc}") from None

    def _exact(self, array: np.ndarray) -> np.ndarray:
        """The array in the type JAX will hold it in, refused where that would change a value.

        Without ``jax_enable_x64`` JAX narrows 64-bit arrays to 32 bits, wrapping integers and
        rounding floats silently; ptfile narrows only arrays whose every value survives.
        """
        try:
            narrow = np.dtype(self.jax.dtypes.canonicalize_dtype(array.dtype))
        except TypeError:
            return array  # not a JAX type: device_put says so
        if narrow == array.dtype:
            return array
        cast = array.astype(narrow)
        if not np.array_equal(cast.astype(array.dtype), array, equal_nan=array.dtype.kind in "fc"):
            raise UnsupportedFormatError(
                f"a {array.dtype} tensor holds values {narrow} cannot: JAX would change them; "
                f"enable 64-bit types with jax.config.update('jax_enable_x64', True)")
        return cast


#: numpy dtypes MLX holds, by name, and MLX's name for each.  MLX would read float64 and
#: complex128 arrays too, but narrowed to 32 bits without a word; float64 is asked for by name
#: (MLX keeps it on the CPU), and what is missing here (complex128, complex32, float8) is refused.
MLX_DTYPES = {
    "bool": "bool_",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64",
    "complex64": "complex64",
}


class _MlxArrays:
    """numpy arrays to ``mlx.core.array`` (MLX copies them), in the same dtype or refused."""

    def __init__(self, device: Any = None) -> None:
        self.mx = import_framework("mlx")

    def convert(self, value: Any) -> Any:
        if isinstance(value, SpecialTensor):
            raise UnsupportedFormatError(f"MLX has no {type(value).__name__}; read it with framework='numpy' or 'pt'")
        if not isinstance(value, np.ndarray):
            return value
        plain = value.view(np.ndarray)
        name = MLX_DTYPES.get(plain.dtype.name)
        if name is None:
            raise UnsupportedFormatError(f"MLX has no {plain.dtype} arrays; read them with framework='numpy' or 'pt'")
        dtype = getattr(self.mx, name)
        if name == "bfloat16":  # MLX reads no ml_dtypes array: its bits, then MLX's bfloat16
            return self.mx.array(plain.view(np.uint16), dtype=self.mx.uint16).view(dtype)
        return self.mx.array(plain, dtype=dtype)


# -- trees ----------------------------------------------------------------------------


class Converter:
    """Converts tensors, and trees holding them, to one framework."""

    def __init__(self, name: str, device: Any = None, *, private: bool = False) -> None:
        self.name = name
        self._leaf: Callable[[Any], Any] | None = None
        if name == "torch":
            self._leaf = _TorchTensors(device, private).convert
        elif name == "jax":
            self._leaf = _JaxArrays(device).convert
        elif name == "mlx":
            self._leaf = _MlxArrays(device).convert

    def tensor(self, value: Any) -> Any:
        """One tensor value (an array or a special tensor) in the framework."""
        return value if self._leaf is None else self._leaf(value)

    def tree(self, tree: Any) -> Any:
        """The tree with every tensor converted and every container rebuilt around them.

        Iterative, with each container converted once: a sub-tree the file shares stays
        shared, and a hostile tree's depth or sharing costs no recursion and no repeat work.
        """
        if self._leaf is None:
            return tree
        return map_tree(tree, lambda node: isinstance(node, (np.ndarray, SpecialTensor)), self._leaf)


def map_tree(tree: Any, is_leaf: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Any:
    """``tree`` with ``convert(leaf)`` for every leaf, containers rebuilt around them (see :meth:`Converter.tree`)."""
    with gc_paused():  # every container built stays reachable: a collection would only walk them all again
        return _map_tree(tree, is_leaf, convert)


def _map_tree(tree: Any, is_leaf: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Any:
    done: dict[int, Any] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, list | None]] = [(tree, None)]
    while stack:
        node, children = stack.pop()
        key = id(node)
        if children is None:
            if key in done:
                continue
            if is_leaf(node):
                done[key] = convert(node)
                continue
            kids = _children(node)
            if kids is None:
                done[key] = node
                continue
            if key in open_:
                raise UnsupportedFormatError("the checkpoint's object tree contains itself; "
                                             "read it with framework='numpy'")
            open_.add(key)
            stack.append((node, kids))
            stack.extend((kid, None) for kid in kids)
            continue
        open_.discard(key)
        done[key] = _rebuilt(node, [done[id(kid)] for kid in children])
    return done[id(tree)]


def _children(node: Any) -> list | None:
    """The values a container holds, in a fixed order; None for anything else."""
    if isinstance(node, dict):
        return list(node.values())
    if type(node) in (list, tuple):
        return list(node)
    if type(node) is Record:
        return [node.args, node.state, *node.items.values(), *node.listitems]
    if is_namespace(node):
        return list(vars(node).values())
    return None


def _rebuilt(node: Any, values: list) -> Any:
    """A copy of the container ``node`` holding ``values`` in place of its own."""
    if type(node) is list:
        return values
    if type(node) is tuple:
        return tuple(values)
    if isinstance(node, dict):
        new = copy.copy(node)  # keeps the type and its attributes: OrderedDict._metadata
        for key, value in zip(list(node), values, strict=True):
            new[key] = value
        return new
    if is_namespace(node):
        return type(node)(**dict(zip(vars(node), values, strict=True)))
    record = Record(node.cls, values[0], values[1])
    count = len(node.items)
    record.items = dict(zip(node.items, values[2 : 2 + count], strict=True))
    record.listitems = values[2 + count :]
    return record


def converter(framework: str, device: Any = None, *, private: bool = False) -> Converter:
    """A converter to ``framework`` (see :data:`FRAMEWORKS`), importing it now.

    ``private`` says that read-only arrays to convert view memory no one else sees (a
    copy-on-write map): torch tensors over it are then writable, as ``torch.load``'s are.
    """
    return Converter(framework_name(framework), device, private=private)
