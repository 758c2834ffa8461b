"""Write docs/options.md: every config key with its default and its docstring, read from
src/prcl/config.py (the dataclasses' field docstrings, ``RANGES`` and the defaults).

    python scripts/options_doc.py            # rewrite docs/options.md
    python scripts/options_doc.py --check    # exit 1 if docs/options.md is not up to date

``tests/test_docs.py`` runs the check, so a changed key, default or docstring without a
regenerated page fails the tests.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import typing
from pathlib import Path

from prcl import config

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "options.md"

HEADER = """\
# Options

Every key of a prcl config, with its default and what it does. A config file (YAML) or a
built-in config sets only the keys that differ from these defaults; `section.key=value` on the
command line overrides any of them ([README](../README.md#configuration)). The defaults are
the authors' Pascal VOC recipe; the built-in configs in `src/prcl/configs/` change what their
dataset needs.

This page is generated from `src/prcl/config.py` by `python scripts/options_doc.py`; edit the
docstrings there, not this page.
"""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (Python keeps the
    string literal after an annotated assignment only in the source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, [*body[1:], None], strict=True):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def show(value: object) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def rows(cls: type, instance: object, prefix: str) -> list[tuple[str, str, str]]:
    """(key, default, description) of every leaf key under ``cls``, nested sections last."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    leaves, nested = [], []
    for f in dataclasses.fields(cls):
        key, value = f"{prefix}{f.name}", getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            nested += rows(hints[f.name], value, f"{key}.")
            continue
        text = docs.get(f.name, "")
        if key in config.RANGES:
            allowed = config.RANGES[key][2]
            text = f"{text} Allowed: {allowed}." if text else f"Allowed: {allowed}."
        leaves.append((key, show(value), text))
    return leaves + nested


def cell(text: str) -> str:
    """Table-safe text: a bar would end the cell, and <name> would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "\\<")


def render() -> str:
    """The whole page."""
    out = [HEADER]
    defaults = config.Config()
    for section in dataclasses.fields(config.Config):
        cls = typing.get_type_hints(config.Config)[section.name]
        out.append(f"## {section.name}\n")
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            out.append(" ".join(inspect.cleandoc(cls.__doc__).split()) + "\n")
        out.append("| key | default | what it does |")
        out.append("|---|---|---|")
        for key, value, text in rows(cls, getattr(defaults, section.name), f"{section.name}."):
            out.append(f"| `{key}` | `{cell(value)}` | {cell(text)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the page differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python scripts/options_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
