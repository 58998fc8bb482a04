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


def _children(node: Any) -> Iterator[tuple[Any, Any]] | None:
    """The (key, child) pairs of a container, lazily; None for a leaf value.

    Keys stay as the pickle gave them until a path is needed: a key of ``None`` marks an
    ``nn.Module`` slot that adds no path component.
    """
    if isinstance(node, dict):
        return iter(node.items())
    if type(node) in (list, tuple):
        return enumerate(node)
    if type(node) is Record:
        return _record_children(node)
    if type(node).__module__ == "argparse" and hasattr(node, "__dict__"):
        return iter(vars(node).items())
    return None


def _record_children(node: Record) -> Iterator[tuple[Any, Any]]:
    state = node.state
    if type(state) is tuple and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict, slots) state
    if isinstance(state, dict):
        for key, value in state.items():
            yield (None if key in MODULE_SLOTS else key), value
    yield from node.items.items()
    yield from enumerate(node.listitems)


def _join(link: tuple | None) -> str:
    """The dotted path of a chain of ``(parent link, key)`` links, built only when asked for."""
    parent, key = link if link is not None else (None, "")
    if parent is None:  # a key of the top container (a flat state dict's every tensor): the key is the path
        return key if type(key) is str else str(key)
    parts = []
    while link is not None:
        link, key = link
        parts.append(key if type(key) is str else str(key))
    return ".".join(reversed(parts))


def walk(tree: Any, is_leaf: Callable[[Any], bool]) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, leaf)`` for every leaf, in the order of the tree.

    The walk holds one iterator per open container and one link per path component, so
    memory grows with the depth and the number of containers, never with their width, and
    each path is joined once, for its leaf.
    """
    if is_leaf(tree):
        yield "", tree
        return
    root = _children(tree)
    if root is None:
        return
    seen = {id(tree)}
    stack: list[tuple[tuple | None, Iterator]] = [(None, root)]
    while stack:
        link, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        key, child = item
        child_link = link if key is None else (link, key)
        if is_leaf(child):
            yield _join(child_link), child
            continue
        if id(child) in seen:
            continue
        grandchildren = _children(child)
        if grandchildren is not None:
            seen.add(id(child))
            stack.append((child_link, grandchildren))
