"""Walking a loaded object tree without recursion.

Checkpoints nest tensors inside dicts, lists, tuples and records; users address
them by dotted paths (``model.layers.0.weight``).  A hostile pickle can build a
tree that shares sub-trees exponentially or nests a million levels deep, so the
walk is iterative and visits each container once: a container met again under a
second path is not expanded again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .values import Record

__all__ = ["walk", "MODULE_SLOTS"]

#: nn.Module attributes whose entries torch's state_dict() names without the attribute itself.
MODULE_SLOTS = ("_parameters", "_buffers", "_modules")


def _children(node: Any) -> list[tuple[str | None, Any]]:
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if type(node) in (list, tuple):
        return [(str(i), v) for i, v in enumerate(node)]
    if type(node) is Record:
        children: list[tuple[str | None, Any]] = []
        state = node.state
        if type(state) is tuple and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict, slots) state
        if isinstance(state, dict):
            for key, value in state.items():
                children.append((None if key in MODULE_SLOTS else str(key), value))
        children.extend((str(k), v) for k, v in node.items.items())
        children.extend((str(i), v) for i, v in enumerate(node.listitems))
        return children
    if hasattr(node, "__dict__") and type(node).__module__ == "argparse":
        return [(str(k), v) for k, v in vars(node).items()]
    return []


def walk(tree: Any, is_leaf: Callable[[Any], bool]) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, leaf)`` for every leaf, in the order of the tree."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        if is_leaf(node):
            yield path, node
            continue
        if id(node) in seen:
            continue
        children = _children(node)
        if not children:
            continue
        seen.add(id(node))
        for key, child in reversed(children):
            child_path = path if key is None else (f"{path}.{key}" if path else key)
            stack.append((child_path, child))
