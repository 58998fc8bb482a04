"""Fast paths must give exactly what the general code gives.

Each optimised path (the serialization-id set, the engine's tensor pattern, the batched
zip directory) is checked against a literal, slow reference on the same inputs.
"""

from __future__ import annotations

from ptfile import zipwriter


class _LiteralUnorderedSet(zipwriter._UnorderedSet):
    """The libstdc++ node list kept literally: O(n) per insert, obviously right."""

    def __init__(self) -> None:
        super().__init__()
        self._list: list[tuple[bytes, int]] = []

    def add(self, name: bytes) -> None:
        count = len(self._list)
        if count + 1 > self._next_resize:
            wanted = max(count + 1, 0 if self._next_resize else zipwriter._FIRST_BUCKETS)
            if wanted >= self._buckets:
                self._buckets = self._next_bucket_count(max(wanted + 1, self._buckets * 2))
                relinked: list[tuple[bytes, int]] = []
                for node in self._list:
                    relinked = self._put(relinked, node)
                self._list = relinked
            else:
                self._next_resize = self._buckets
        self._list = self._put(self._list, (name, zipwriter.std_string_hash(name)))

    def _put(self, nodes: list, node: tuple[bytes, int]) -> list:
        bucket = node[1] % self._buckets
        for index, other in enumerate(nodes):
            if other[1] % self._buckets == bucket:
                return [*nodes[:index], node, *nodes[index:]]
        return [node, *nodes]

    def hashes(self) -> list[int]:
        return [h for _, h in self._list]


def test_unordered_set_order_matches_the_literal_node_list():
    fast, literal = zipwriter._UnorderedSet(), _LiteralUnorderedSet()
    names = [f"data/{i}".encode() for i in range(700)] + [b"data.pkl", b"version", b".data/version"]
    for count, name in enumerate(names, 1):
        fast.add(name)
        literal.add(name)
        if count in (1, 2, 11, 12, 13, 24, 100, 400, len(names)):  # around and past rehashes
            assert fast.hashes() == literal.hashes(), count
