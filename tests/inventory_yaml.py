"""The inventory `bmslice fleet ansible` writes, read as Ansible reads it: every value from the
fleet file carries Ansible's `!unsafe` tag (text Ansible never templates), which PyYAML's safe
loader does not know."""

from __future__ import annotations

from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_inventory(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)
