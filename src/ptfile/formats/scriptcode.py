"""TorchScript code records judged by parsing them: every call resolved, only allowlisted ones pass.

``torch.jit.load`` compiles the ``code/`` records of an archive (Python syntax, written by
torch's printer) and runs them: a class's ``__setstate__`` runs while the archive loads,
``forward`` when the model is called.  A name pattern cannot judge such code (``torch
.from_file(...)``, an alias, ``ops.aten.from_file``), so each record is parsed with
:mod:`ast` and every call target is resolved to a dotted path the way TorchScript's
importer resolves names:

* ``torch.X`` and ``torch.autograd.X`` are the operator ``aten::X``, written ``torch.X``;
  ``ops.NS.X`` is ``NS::X`` (``ops.aten.X`` is ``torch.X``; ``torch.ops.NS.X`` is read the same way);
* ``__torch__.*`` names classes and functions of the archive's own code, which is judged
  too; ``__torch__.torch.classes.*`` are C++ classes registered in the process, never archive code;
* bare names are TorchScript's builtins (``len``, ``range``, ``annotate``, ...);
* a name assigned a path (``_0 = __torch__.f``, ``t = torch``) or bound by an import is an
  alias for every path it is ever given, in any function of the record; ``CONSTANTS.cN``
  and everything else (parameters, results, attributes of values) are values;
* a method of a value (``(self).forward(x)``, ``x.view(...)``) reaches archive code or an
  operator whose ``self`` argument the value is; ``getattr(value, "0")`` is an attribute.

A call is clean only when its target is on :data:`OPERATORS` or :data:`BUILTINS` (each row
with its reason), an archive-defined ``__torch__`` name, or a method of a value.  Anything
else (``torch.from_file``, ``torch.save``, an operator not on the list, ``getattr`` on a
namespace, a namespace passed around as a value, where it could be called unseen) is entered in
the inventory as a ``call`` of its path, so :func:`ptfile.policy.allowlist.judge` grades it
dangerous.  A record that does not parse, or that torch's lexer could read differently
(control characters, ``# type:`` comments), is a fault: the archive is ``invalid``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import CorruptFileError, LimitExceededError
from ..pickle.inventory import GlobalUse

__all__ = ["CodeJudgement", "judge_code", "OPERATORS", "BUILTINS", "is_code_record", "ascii_lower"]

#: One record is parsed only up to this size: CPython's AST of torch's code takes about 180 bytes of
#: memory per byte of source (3 MiB measured at 540 MiB); torch's largest records are far smaller.
MAX_PARSED_CODE_BYTES = 4 << 20
#: Alias chains (``a = torch``, ``b = a.ops``, ...) are followed this many steps; torch writes one.
MAX_ALIAS_ROUNDS = 32
#: Paths one alias may stand for; torch gives each alias one.
MAX_ALIAS_TARGETS = 64

#: Names TorchScript's importer binds before any builtin: operator namespaces and the archive's own.
NAMESPACES = ("torch", "ops", "__torch__")
#: ``CONSTANTS.cN`` is a value of ``constants.pkl``; these names are constants of the importer.
VALUE_NAMES = frozenset({"CONSTANTS", "inf", "nan", "infj", "nanj"})
#: TorchScript's builtins a call may name; each is language plumbing that computes in memory.
BUILTINS: dict[str, str] = {}
#: Builtins allowed only as ``getattr(value, "name")``: on a namespace they would fetch an operator.
ATTRIBUTE_BUILTINS = frozenset({"getattr", "hasattr"})
#: Positions of the arguments of these builtins that are types, never evaluated (``annotate(List[int], [])``).
TYPE_ARGUMENTS = {"annotate": (0,), "unchecked_cast": (0,), "uninitialized": (0,), "isinstance": (1,)}
#: Archive paths that are not archive code: TorchBind classes registered by C++ libraries.
CUSTOM_CLASSES = "__torch__.torch.classes"
#: Operators a call may name (``torch.X`` for ``aten::X``, ``ops.NS.X`` otherwise), each with its reason.
OPERATORS: dict[str, str] = {}

_VALUE = ""  # the target of anything that is not a namespace path
_NEW = ".__new__"


def _builtins(names: str, reason: str) -> None:
    for name in names.split():
        BUILTINS[name] = reason


def _operators(namespace: str, names: str, reason: str) -> None:
    prefix = "torch." if namespace == "aten" else f"ops.{namespace}."
    for name in names.split():
        OPERATORS[prefix + name] = reason


_builtins("annotate unchecked_cast uninitialized isinstance", "type plumbing torch.jit.save writes; no computation")
_builtins("getattr hasattr", "attribute of a value by a literal name (getattr(self, \"0\") for Sequential children)")
_builtins("range len int float bool str complex tuple list dict zip enumerate sorted min max abs all any sum "
          "divmod pow round hash id ord chr bin hex oct rangelist _to_tensor",
          "TorchScript builtins over values in memory")
_builtins("print AssertionError", "writes to standard output or raises; no file, process or network")
_builtins("fork awaitable", "runs a function value asynchronously; the function is itself judged where it is named")

_operators("aten", """
    abs absolute acos acosh add addcdiv addcmul addmm addmv addbmm all allclose amax amin angle any argmax argmin
    asin asinh atan atan2 atanh baddbmm bernoulli bitwise_and bitwise_not bitwise_or bitwise_xor bmm ceil clamp
    clamp_max clamp_min clip copysign cos cosh cumprod cumsum deg2rad diff digamma div divide dot eq equal erf erfc
    erfinv exp exp2 expm1 floor floor_divide fmod frac ge gcd gt heaviside hypot isclose isfinite isinf isnan le
    lerp lgamma log log10 log1p log2 logaddexp logical_and logical_not logical_or logical_xor logsumexp lt matmul
    max maximum mean median min minimum mm mode mul multiply mv nan_to_num neg negative ne norm outer pow prod
    rad2deg reciprocal remainder round rsqrt sgn sign signbit sin sinc sinh sqrt square std std_mean sub subtract
    sum tan tanh true_divide trunc var var_mean xlogy einsum tensordot kron cross cdist dist renorm trace
    tril triu diag diagonal diag_embed inner vdot addr floordiv __and__ __or__ __xor__ __lshift__ __rshift__
    __iand__ __ior__ __ixor__ __ilshift__ __irshift__ bitwise_left_shift bitwise_right_shift mvlgamma polygamma
    i0 special_i0 logit logcumsumexp cummax cummin nansum nanmean quantile nanquantile sort topk kthvalue msort
    argsort unique_consecutive bucketize searchsorted histc bincount count_nonzero frexp ldexp float_power
    log_softmax softmax _softmax _log_softmax
    abs_ add_ addcmul_ addcdiv_ clamp_ clamp_min_ clamp_max_ div_ mul_ sub_ neg_ pow_ sqrt_ exp_ log_ fill_
    zero_ copy_ masked_fill_ masked_scatter_ index_add_ index_copy_ index_fill_ index_put_ scatter_ scatter_add_
    scatter_reduce_ uniform_ normal_ bernoulli_ exponential_ geometric_ log_normal_ cauchy_ random_ lerp_ floor_
    ceil_ round_ trunc_ sign_ sigmoid_ tanh_ relu_ hardtanh_ leaky_relu_ elu_ celu_ selu_ rrelu_ hardsigmoid_
    hardswish_ silu_ mish_ threshold_ dropout_ feature_dropout_ alpha_dropout_ feature_alpha_dropout_ clip_
    remainder_ fmod_ reciprocal_ rsqrt_ erf_ t_ transpose_ squeeze_ unsqueeze_ resize_ resize_as_ requires_grad_
    """, "arithmetic, comparison and reduction on tensors and numbers in memory")
_operators("aten", """
    zeros zeros_like ones ones_like empty empty_like full full_like arange linspace logspace eye tensor
    scalar_tensor rand rand_like randn randn_like randint randint_like randperm normal poisson multinomial
    empty_strided new_zeros new_ones new_empty new_full new_empty_strided zeros_like clone detach detach_
    contiguous to type_as dequantize quantize_per_tensor quantize_per_channel q_scale q_zero_point
    q_per_channel_scales q_per_channel_zero_points int_repr _empty_affine_quantized
    _empty_per_channel_affine_quantized as_tensor complex polar view_as_real view_as_complex real imag conj
    resolve_conj resolve_neg
    """, "allocates a tensor in memory from values, shapes and other tensors")
_operators("aten", """
    view reshape view_as reshape_as expand expand_as permute transpose t squeeze unsqueeze flatten unflatten
    narrow select slice index_select masked_select masked_fill masked_scatter gather scatter scatter_add
    scatter_reduce take take_along_dim index index_put index_fill index_copy index_add cat concat concatenate
    stack hstack vstack dstack split split_with_sizes tensor_split chunk unbind repeat repeat_interleave tile
    flip fliplr flipud roll rot90 movedim moveaxis swapaxes swapdims where nonzero argwhere broadcast_tensors
    broadcast_to meshgrid tril_indices triu_indices unique pad constant_pad_nd reflection_pad1d
    reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d replication_pad3d circular_pad
    unfold fold im2col col2im pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
    diag_embed block_diag atleast_1d atleast_2d atleast_3d _unsafe_view alias numpy_T mT mH adjoint
    __getitem__ _set_item __setitem__ __contains__ __not__ __is__ __isnot__ __round_to_zero_floordiv
    """, "shapes, views and indexing of tensors and containers in memory")
_operators("aten", """
    linear bilinear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d convolution
    _convolution batch_norm instance_norm layer_norm group_norm rms_norm native_layer_norm native_batch_norm
    local_response_norm dropout feature_dropout alpha_dropout feature_alpha_dropout relu relu6 leaky_relu
    prelu rrelu elu selu celu gelu silu mish sigmoid hardsigmoid hardswish hardtanh hardshrink softshrink
    tanhshrink softplus softsign threshold glu logsigmoid log_sigmoid _log_softmax softmin
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d lp_pool3d fractional_max_pool2d
    fractional_max_pool3d max_unpool1d max_unpool2d max_unpool3d upsample_nearest1d upsample_nearest2d
    upsample_nearest3d upsample_linear1d upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d
    _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d
    _upsample_bilinear2d_aa _upsample_bicubic2d_aa grid_sampler affine_grid_generator embedding embedding_bag
    _embedding_bag one_hot lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
    _pack_padded_sequence _pad_packed_sequence scaled_dot_product_attention _native_multi_head_attention
    _transformer_encoder_layer_fwd _masked_softmax cosine_similarity pairwise_distance pdist cosine_embedding_loss
    l1_loss mse_loss smooth_l1_loss huber_loss nll_loss nll_loss2d nll_loss_nd cross_entropy_loss binary_cross_entropy
    binary_cross_entropy_with_logits kl_div poisson_nll_loss hinge_embedding_loss margin_ranking_loss
    multi_margin_loss multilabel_margin_loss soft_margin_loss multilabel_soft_margin_loss triplet_margin_loss
    ctc_loss gaussian_nll_loss _weight_norm weight_norm _upsample_lanczos2d_aa _nested_tensor_from_mask
    _nested_tensor_from_mask_left_aligned to_padded_tensor quantized_lstm quantized_gru quantized_lstm_cell
    quantized_gru_cell quantized_rnn_tanh_cell quantized_rnn_relu_cell
    """, "neural-network kernels (torch.nn layers and functional) computing on tensors in memory")
_operators("aten", """
    dim size numel len format split strip lstrip rstrip join lower upper startswith endswith replace find
    count isdigit isalpha isalnum isspace islower isupper isidentifier istitle title capitalize swapcase
    center ljust rjust zfill partition rpartition rsplit splitlines expandtabs rfind index rindex
    append extend insert pop remove clear reverse copy keys values items get setdefault update
    dict list str Int Float Bool ComplexImplicit ScalarImplicit IntImplicit FloatImplicit Delete __derive_index
    __range_length __interpolate __upsample __upsample_bilinear _infer_size _assert_int_or_pair _pair _single
    _triple _quadruple _list_with_default _no_grad_uniform_ _no_grad_normal_ _no_grad_fill_ _no_grad_zero_
    warn is_grad_enabled is_autocast_enabled is_autocast_cpu_enabled is_scripting is_floating_point is_complex
    is_nonzero is_contiguous is_same_size is_pinned has_torch_function _get_tracing_state
    item stride storage_offset element_size nbytes itemsize new_tensor result_type can_cast
    promote_types floor ceil sqrt log exp gcd factorial fabs isnan radians degrees modf cpu cuda
    device get_device _unwrap_optional _grad_sum_to_size list_with_default _size_if_not_equal
    _shape_as_tensor _reshape_from_tensor broadcast_shapes
    """, "TorchScript language plumbing: strings, lists, dicts, numbers and tensor properties")
_operators("aten", "set_grad_enabled", "autograd mode for the code that follows (what `with torch.no_grad():` compiles to)")
_operators("prim", """
    RaiseException dtype device layout requires_grad is_cuda is_cpu is_xpu is_mps is_meta is_quantized
    is_sparse is_mkldnn is_vulkan is_nested data shape name grad unchecked_unwrap_optional
    unchecked_cast NumToTensor min max abs Uninitialized TupleIndex TupleUnpack ListUnpack ListConstruct
    TupleConstruct DictConstruct isinstance is_scripting AutogradZero AutogradAnyNonZero AutogradAdd
    rangelist id type index layout itemsize nbytes EnumName EnumValue
    """, "TorchScript primitives: properties of values, raising, building tuples and lists")
_operators("quantized", """
    linear linear_relu linear_dynamic linear_relu_dynamic linear_dynamic_fp16 linear_prepack linear_prepack_fp16
    linear_unpack linear_unpack_fp16 conv1d conv2d conv3d conv1d_relu conv2d_relu conv3d_relu conv_transpose1d
    conv_transpose2d conv_transpose3d conv1d_prepack conv2d_prepack conv3d_prepack conv_transpose1d_prepack
    conv_transpose2d_prepack conv_transpose3d_prepack conv1d_unpack conv2d_unpack conv3d_unpack
    conv2d_stride conv2d_padding conv2d_dilation conv2d_groups conv2d_transpose conv2d_output_padding
    conv3d_stride conv3d_padding conv3d_dilation conv3d_groups conv3d_transpose conv3d_output_padding
    add add_relu add_scalar mul mul_relu mul_scalar cat cat_relu relu6 leaky_relu hardswish sigmoid
    batch_norm1d batch_norm2d batch_norm3d batch_norm2d_relu batch_norm3d_relu layer_norm group_norm
    instance_norm elu threshold embedding_bag_byte embedding_bag_4bit embedding_byte embedding_4bit
    embedding_bag_prepack embedding_bag_unpack embedding_bag_byte_prepack embedding_bag_byte_unpack
    """, "quantized kernels over packed weights in memory (torch.ao.nn.quantized layers)")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(name: str) -> str:
    """``name`` with ASCII letters lowered, as miniz compares names (``str.lower`` also folds other letters)."""
    return name.translate(_ASCII_LOWER)


def is_code_record(name: str) -> bool:
    """Whether torch could compile a record (its name after the archive folder) as TorchScript code.

    Torch's zip lookups ignore ASCII case (miniz), so ``CODE/__torch__.PY`` is found as
    ``code/__torch__.py``; the ``.debug_pkl`` records beside the code are pickles of source ranges.
    """
    lower = ascii_lower(name)
    if lower.endswith(".debug_pkl"):
        return False
    return lower.startswith("code/") or lower.endswith(".py")


@dataclass
class CodeJudgement:
    """What the code records of one archive call that is not on the allowlist."""

    uses: list[GlobalUse] = field(default_factory=list)  # one ``call`` per disallowed target and place
    defined: set[str] = field(default_factory=set)  # every ``__torch__`` path the records define

    def calls(self) -> dict[str, list[str]]:
        """record -> sorted distinct paths it calls off the allowlist."""
        found: dict[str, set[str]] = {}
        for use in self.uses:
            found.setdefault(use.record, set()).add(use.path)
        return {record: sorted(paths) for record, paths in found.items()}


def judge_code(records: Iterable[tuple[str, str, str]]) -> CodeJudgement:
    """Judge ``(record, module, text)`` code records; ``module`` is ``__torch__.a.b`` for ``code/__torch__/a/b.py``.

    Raises :class:`~ptfile.errors.CorruptFileError` for a record that does not parse as torch
    would read it, and :class:`~ptfile.errors.LimitExceededError` past a limit of this module.
    """
    judgement = CodeJudgement()
    pending: list[tuple[str, int, str]] = []  # archive paths called, checked once every record is read
    for record, module, text in records:
        tree, line_starts = _parse(record, text)
        judgement.defined.update(_definitions(module, tree))
        for path, offset in _RecordJudge(tree, record).calls():
            byte = line_starts[offset[0] - 1] + offset[1] if 0 < offset[0] <= len(line_starts) else 0
            if path.startswith("__torch__."):
                pending.append((path, byte, record))
            elif not _allowed(path):
                judgement.uses.append(_use(path, byte, record))
    for path, byte, record in pending:
        # ``C.__new__(C)`` is how the printer writes ``C()`` for a class the archive defines
        target = path[: -len(_NEW)] if path.endswith(_NEW) else path
        if target.startswith(CUSTOM_CLASSES + ".") or target not in judgement.defined:
            judgement.uses.append(_use(path, byte, record))
    return judgement


def _use(path: str, offset: int, record: str) -> GlobalUse:
    module, _, name = path.rpartition(".")
    return GlobalUse(module or "builtins", name, "call", offset, record)


def _allowed(path: str) -> bool:
    return path == _VALUE or path in OPERATORS or (path in BUILTINS and path not in ATTRIBUTE_BUILTINS)


def _canonical(path: str) -> str:
    """The operator a namespace path names, written as torch's printer writes it (``ops.aten.X`` is ``torch.X``)."""
    parts = path.split(".")
    if parts[:2] == ["torch", "ops"]:  # not TorchScript (torch.ops is aten::ops there), read as the operator it spells
        parts = parts[1:]
    if len(parts) == 3 and parts[:2] in (["ops", "aten"], ["torch", "autograd"]):
        return "torch." + parts[2]
    return ".".join(parts)


# -- reading a record as torch would ----------------------------------------------------------


_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")


def _parse(record: str, text: str) -> tuple[ast.Module, list[int]]:
    data = text.encode("utf-8")
    if len(data) > MAX_PARSED_CODE_BYTES:
        raise LimitExceededError(
            f"code record {record!r} has {len(data)} bytes, over the {MAX_PARSED_CODE_BYTES}-byte limit of one parsed code record")
    bad = _CONTROL.search(data)
    if bad is not None:
        # torch's lexer reads \r, \t, \v and \f as blanks where Python sees line ends or columns
        raise CorruptFileError(f"code record {record!r} has control character 0x{data[bad.start()]:02x} at byte {bad.start()}; "
                               "torch's printer writes none and torch's lexer reads them unlike Python")
    try:
        # type_comments: every '# type:' comment becomes part of the tree or a syntax error
        tree = ast.parse(text, filename=record, type_comments=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CorruptFileError(f"code record {record!r} does not parse as TorchScript source: "
                               f"{type(exc).__name__}: {exc}") from None
    # only statements and arguments carry a type_comment
    typed = next((node for node in ast.walk(tree)
                  if isinstance(node, (ast.stmt, ast.arg)) and getattr(node, "type_comment", None)), None) or next(
        iter(tree.type_ignores), None)
    if typed is not None:
        # a comment to Python, a type annotation token to torch's lexer
        raise CorruptFileError(f"code record {record!r} has a '# type:' comment on line {typed.lineno}")
    line_starts = [0]
    for line in data.split(b"\n")[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)
    return tree, line_starts


def _definitions(module: str, tree: ast.Module) -> Iterator[str]:
    """``module.Class``, ``module.Class.method`` and ``module.function`` for every definition."""
    stack: list[tuple[str, ast.AST]] = [(module, tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}.{child.name}"
                stack.append((f"{prefix}.{child.name}", child))


# -- resolving names --------------------------------------------------------------------------

_BINDINGS = (ast.Assign, ast.AnnAssign, ast.NamedExpr)


class _RecordJudge:
    """The call targets of one parsed record, by the resolution rules of the module docstring."""

    def __init__(self, tree: ast.Module, record: str) -> None:
        self.tree = tree
        self.record = record
        self.locals: set[str] = set()  # names bound to values anywhere in the record
        self.aliases: dict[str, set[str]] = {}  # names bound to namespace paths
        self._bind()

    def _bind(self) -> None:
        chains: list[tuple[str, ast.expr]] = []
        for node in ast.walk(self.tree):
            binding = _alias_binding(node)
            if binding is not None:
                names, chain = binding
                chains.extend((name, chain) for name in names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.locals.add(node.id)
            elif isinstance(node, ast.arg):
                self.locals.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    base = f"{node.module}." if isinstance(node, ast.ImportFrom) and node.module else ""
                    bound = alias.asname or alias.name.split(".")[0]
                    path = base + (alias.name if alias.asname or base else alias.name.split(".")[0])
                    self.aliases.setdefault(bound, set()).add(path)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.locals.add(node.name)
        for _ in range(MAX_ALIAS_ROUNDS):
            changed = False
            for name, chain in chains:
                targets = self.aliases.setdefault(name, set())
                before = len(targets)
                targets.update(self.resolve(chain))
                if len(targets) > MAX_ALIAS_TARGETS:
                    raise LimitExceededError(f"code record {self.record!r}: alias {name!r} stands for more than "
                                             f"{MAX_ALIAS_TARGETS} paths, the limit of one alias")
                changed |= len(targets) != before
            if not changed:
                return
        raise LimitExceededError(f"code record {self.record!r}: aliases chain more than {MAX_ALIAS_ROUNDS} steps deep, "
                                 "the limit of alias resolution")

    def resolve(self, chain: ast.expr) -> set[str]:
        """The paths a name or attribute chain may stand for; ``_VALUE`` for a value."""
        attrs: list[str] = []
        node = chain
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return {_VALUE}
        name = node.id
        bases = set(self.aliases.get(name, ()))
        if name in self.locals or name in VALUE_NAMES:
            bases.add(_VALUE)
        if name in NAMESPACES or name in BUILTINS or not (name in self.aliases or name in self.locals
                                                           or name in VALUE_NAMES):
            # a global: a namespace, a builtin, or a name torch does not know; a local of the same name
            # may not be bound where it is used, so the importer's reading is judged too
            bases.add(name)
        suffix = "".join("." + attr for attr in reversed(attrs))
        return {_VALUE if base == _VALUE else _canonical(base + suffix) for base in bases}

    def calls(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """Every path that may be called, with its (line, column): calls, and chains that escape."""
        stack: list[tuple[ast.AST, bool]] = [(self.tree, False)]  # (node, is a type expression)
        while stack:
            node, is_type = stack.pop()
            if isinstance(node, ast.Call):
                yield from self._call(node, stack, is_type)
                continue
            if _is_chain(node) and isinstance(node, ast.expr):
                stored = isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)
                if not (is_type or stored):
                    for path in self.resolve(node):
                        if not _is_plain_value(path):
                            yield path, (node.lineno, node.col_offset)  # passed on, it may be called anywhere
                continue
            if _is_annotation_entry(node):
                # a class body's __annotations__["0"] = T: the type of an attribute that is not a name
                stack.extend(((node.targets[0].slice, False), (node.value, True)))  # type: ignore[attr-defined]  # _is_annotation_entry found a Subscript target
                continue
            if _alias_binding(node) is not None and not isinstance(node, ast.NamedExpr):  # (x := chain) is also a value
                # judged where the alias is called or passed on
                if isinstance(node, ast.AnnAssign):
                    stack.append((node.annotation, True))
                continue
            stack.extend(self._children(node, is_type))

    def _call(self, node: ast.Call, stack: list, is_type: bool) -> Iterator[tuple[str, tuple[int, int]]]:
        where = (node.lineno, node.col_offset)
        types: tuple[int, ...] = ()
        args = list(node.args)
        if _is_chain(node.func):
            paths = self.resolve(node.func)
            for path in paths:
                if path in ATTRIBUTE_BUILTINS:
                    fetched = self._fetched(node)
                    if fetched is None:
                        yield path, where  # getattr(x, name) where x or name is not plain: unknown
                    else:
                        yield from ((target, where) for target in fetched if target != _VALUE)
                        args = args[1:]  # the namespace it fetches from is judged as the paths above
                elif path != _VALUE:
                    yield path, where
            if paths <= TYPE_ARGUMENTS.keys():  # every reading of the name is annotate / unchecked_cast / ...
                types = tuple(set.intersection(*(set(TYPE_ARGUMENTS[p]) for p in paths)))
        else:
            stack.append((node.func, is_type))  # calling a value computed some other way
        offset = len(node.args) - len(args)
        stack.extend((arg, is_type or index + offset in types) for index, arg in enumerate(args))
        stack.extend((keyword.value, is_type) for keyword in node.keywords)

    def _fetched(self, node: ast.Call) -> set[str] | None:
        """What ``getattr(x, "name")`` / ``hasattr`` fetches: ``x``'s paths dot the name, or None when unknown."""
        if len(node.args) != 2 or node.keywords:
            return None
        obj, name = node.args
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            return None
        if not _is_chain(obj):
            return {_VALUE}
        return {_VALUE if base == _VALUE else _canonical(f"{base}.{name.value}") for base in self.resolve(obj)}

    def _children(self, node: ast.AST, is_type: bool) -> Iterator[tuple[ast.AST, bool]]:
        if isinstance(node, ast.arg):
            if node.annotation is not None:
                yield node.annotation, True
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                yield node.returns, True
            yield node.args, False
            yield from ((child, False) for child in (*node.decorator_list, *node.body))
            return
        if isinstance(node, ast.ClassDef):
            yield from ((base, True) for base in node.bases)
            yield from ((child, False) for child in (*node.keywords, *node.decorator_list, *node.body))
            return
        if isinstance(node, ast.AnnAssign):
            yield node.annotation, True
            yield node.target, False
            if node.value is not None:
                yield node.value, False
            return
        for child in ast.iter_child_nodes(node):
            yield child, is_type


def _alias_binding(node: ast.AST) -> tuple[list[str], ast.expr] | None:
    """``name = chain`` (or ``name: T = chain``): the names that become aliases of the chain's paths, and the chain."""
    if not isinstance(node, _BINDINGS) or node.value is None or not _is_chain(node.value):
        return None
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = [target.id for target in targets if isinstance(target, ast.Name)]
    return (names, node.value) if len(names) == len(targets) else None


def _is_annotation_entry(node: ast.AST) -> bool:
    return (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript)
            and isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "__annotations__")


def _chain_root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _is_chain(node: ast.AST) -> bool:
    """A name, or attributes of a name: what may stand for a namespace path."""
    return isinstance(node, (ast.Name, ast.Attribute)) and isinstance(_chain_root(node), ast.Name)


def _is_plain_value(path: str) -> bool:
    """Paths that may be passed around: values, archive code (not TorchBind classes), allowed targets."""
    if path == _VALUE or path.startswith("CONSTANTS.") or path in OPERATORS:
        return True
    if path in BUILTINS:
        return path not in ATTRIBUTE_BUILTINS
    return path.startswith("__torch__.") and not path.startswith(CUSTOM_CLASSES + ".") or path == "__torch__"
