"""Dotted paths of a walked object tree: the names ``ptfile.open`` lists tensors under."""

from __future__ import annotations

from ptfile.pickle.tree import walk
from ptfile.pickle.values import Global, Record


class Leaf:
    pass


def is_leaf(node: object) -> bool:
    return type(node) is Leaf


def test_paths_of_top_level_keys_nested_keys_and_list_items() -> None:
    a, b, c, d, e = (Leaf() for _ in range(5))
    tree = {"w": a, 3: b, (1, 2): c, "layers": [{"bias": d}, ("x", e)]}
    assert [(path, leaf) for path, leaf in walk(tree, is_leaf)] == [
        ("w", a), ("3", b), ("(1, 2)", c), ("layers.0.bias", d), ("layers.1.1", e)]


def test_a_leaf_at_the_root_has_the_empty_path() -> None:
    leaf = Leaf()
    assert list(walk(leaf, is_leaf)) == [("", leaf)]


def test_module_slots_add_no_path_component() -> None:
    weight, inner = Leaf(), Leaf()
    child = Record(Global("torch.nn.modules.linear", "Linear"), ())
    child.state = {"_parameters": {"weight": inner}}
    module = Record(Global("torch.nn.modules.container", "Sequential"), ())
    module.state = {"_parameters": {"weight": weight}, "_modules": {"0": child}}
    assert list(walk(module, is_leaf)) == [("weight", weight), ("0.weight", inner)]
