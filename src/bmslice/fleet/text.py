"""How the files a fleet generates are written (pure): YAML in one of two styles, and user
text made safe for a header comment.

- `block_yaml`: multi-line strings (scripts, config files) as literal blocks, so specs and
  user-data read as written; through libyaml when PyYAML has it (same text, about five
  times faster on a fleet of 1,000 servers).
- `indented_yaml`: the same, with block sequences indented under their key, as yamllint
  (and so ansible-lint) wants them in Ansible content; `Unsafe` text gets Ansible's `!unsafe`. PyYAML's emitter writes a list at its
  key's own indentation, and libyaml's emitter cannot be told otherwise, so this one always
  runs in Python.
"""

from __future__ import annotations

from typing import Any

import yaml


class Unsafe(str):
    """Text Ansible must never template: written with YAML's `!unsafe` tag (`indented_yaml`)."""


class _Dumper(yaml.SafeDumper):
    pass


class _FastDumper(yaml.CSafeDumper):
    pass


class _IndentedDumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper | yaml.CSafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _unsafe(dumper: yaml.SafeDumper, value: Unsafe) -> yaml.ScalarNode:
    # Quoted, so a value that reads as a number or a boolean stays the text it is.
    return dumper.represent_scalar("!unsafe", str(value), style="|" if "\n" in value else "'")


for _dumper in (_Dumper, _FastDumper, _IndentedDumper):
    _dumper.add_representer(str, _str)
_IndentedDumper.add_representer(Unsafe, _unsafe)


def block_yaml(data: Any) -> str:
    dumper = _FastDumper if yaml.__with_libyaml__ else _Dumper
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, width=120)


def indented_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False, width=120)


def one_line(text: str) -> str:
    """`text` for a comment line of a generated file: control characters (a newline in a file
    name) escaped, so user text can never start a line of YAML or a Junos command.

    >>> one_line("fleet.yaml"), one_line("x\\nset system services telnet")
    ('fleet.yaml', 'x\\\\nset system services telnet')
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
