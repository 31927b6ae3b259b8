"""Manifests read as kubectl reads them, not as PyYAML's defaults would.

- A key written twice in one mapping is an error with both line numbers (kubectl refuses it;
  PyYAML silently keeps the last).
- ``1e-5`` is a number, as in YAML 1.2 and kubectl (PyYAML's YAML 1.1 resolver needs a dot and
  would read a string, which the strict schema then refuses).
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class DuplicateKey(yaml.YAMLError):
    def __init__(self, path: str, first_line: int, second_line: int):
        self.path, self.first_line, self.second_line = path, first_line, second_line
        super().__init__(f"{path}: written twice (lines {first_line} and {second_line}); keep one")


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKey(_path_to(loader, node, key), seen[key], line)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _path_to(loader: _Loader, mapping: yaml.MappingNode, key: Any) -> str:
    """The dotted path of ``key`` in the document being read (found by node identity)."""
    parts = _find(loader.document_root, mapping) if loader.document_root is not None else None
    return ".".join([*(parts or []), str(key)])


def _find(node: yaml.Node, target: yaml.Node, trail: list[str] | None = None) -> list[str] | None:
    trail = trail or []
    if node is target:
        return trail
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            found = _find(value_node, target, [*trail, str(key_node.value)])
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _find(item, target, [*trail[:-1], f"{trail[-1]}[{index}]"] if trail else [f"[{index}]"])
            if found is not None:
                return found
    return None


def _construct_document(loader: _Loader, node: yaml.Node) -> Any:
    loader.document_root = node
    return yaml.SafeLoader.construct_document(loader, node)


_Loader.document_root = None
_Loader.construct_document = _construct_document
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream (empty ones left out)."""
    return [document for document in yaml.load_all(text, Loader=_Loader) if document is not None]


def load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)
