"""The README and docs/ against the software: every `prcl ...` command in their code blocks
parses and its overrides are keys of the config it loads, every relative link and image
resolves, every config file shown loads, docs/options.md is up to date, and every
"docs/method.md N.M" that a docstring cites is a section of that page. Nothing is trained."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import typing
from pathlib import Path

import pytest

from prcl.cli import parse_args
from prcl.config import BUILTIN_CONFIGS, Config, load_config
from prcl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_COMMANDS = ("train", "check-data", "splits", "demo")
"""Subcommands that load a config (a name or file, default synthetic) plus overrides."""

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(prcl [^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
COMMIT_ID = re.compile(r"\b[0-9a-f]{7,40}\b")
KNOWN_HEX = {"63fe2227"}
"""Hex-looking words that are no commit: the hash in torchvision's weights file name."""


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def shell_lines(body: str) -> list[str]:
    """Logical lines of a shell block, continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", body).splitlines()


def prcl_argv(line: str) -> list[str] | None:
    """The arguments after `prcl` (or `python -m prcl`, `torchrun ... -m prcl`), else None."""
    words = shlex.split(line, comments=True)
    for index, word in enumerate(words):
        named = word == "prcl" or word.endswith("/prcl")
        if named and (index == 0 or words[index - 1] == "-m"):
            return words[index + 1:]
    return None


def commands(pages: list[Path] = PAGES) -> list[tuple[str, list[str]]]:
    """(page, argv) of every prcl command in the code blocks of the pages."""
    found = []
    for page in pages:
        for language, body in code_blocks(page.read_text()):
            if language not in ("bash", "sh", "shell", "console"):
                continue
            for line in shell_lines(body):
                argv = prcl_argv(line)
                if argv is not None:
                    found.append((page_id(page), argv))
    return found


def config_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Every leaf key of the config, e.g. ``data.root``."""
    keys, hints = set(), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def check_command(argv: list[str]) -> None:
    """Raise AssertionError (or ConfigError) if the command would not start: an unknown
    subcommand or option, an override that is no config key, or a config that does not load
    with its overrides. Placeholder values (paths) are fine: no data is read."""
    if argv in (["--version"], ["--help"]):
        return
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`prcl {' '.join(argv)}` does not parse") from exc
    items = getattr(args, "config", None) or getattr(args, "overrides", None) or []
    name = items[0] if items and "=" not in items[0] else None
    overrides = [item for item in items if "=" in item]
    unknown = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] not in config_keys()]
    assert not unknown, f"`prcl {' '.join(argv)}`: no such config key {unknown}"
    if args.command in CONFIG_COMMANDS and not getattr(args, "resume", None):
        if args.command == "demo":
            name = "synthetic"
        if name is not None and name.endswith((".yaml", ".yml")) and not Path(name).is_file():
            return  # a file of the reader's own: its keys were checked above
        load_config(name, overrides)


def test_docs_have_prcl_commands():
    """The extraction works: the README's VOC commands are found, continuation lines joined."""
    found = [argv for page, argv in commands() if page == "README.md"]
    assert ["train", "voc_662", "data.root=data/VOCdevkit/VOC2012"] in found
    assert any(argv[:2] == ["train", "voc_662"] and "train.out_dir=runs/voc_662_supervised"
               in argv for argv in found)
    assert len(commands()) >= 20


@pytest.mark.parametrize(("page", "argv"), commands(), ids=lambda v: v if isinstance(v, str)
                         else " ".join(v)[:60])
def test_command_starts(page, argv):
    check_command(argv)


@pytest.mark.parametrize("argv", [
    ["trian", "voc_662"],                                    # no such subcommand
    ["train", "voc_662", "data.rot=/data/VOC2012"],          # no such key
    ["train", "voc662", "data.root=/data/VOC2012"],          # no such built-in config
    ["train", "voc_662", "train.method=semi"],               # no such choice
    ["evaluate", "runs/x/best.pth", "eval.flp=true"],        # no such key in evaluate's overrides
    ["export", "runs/x/best.pth"],                           # --out is required
    ["train", "--resume", "runs/x/last.pth", "train.epoch=3"],
])
def test_a_wrong_command_fails(argv):
    """The check can fail: each of these would stop before training."""
    with pytest.raises((AssertionError, ConfigError)):
        check_command(argv)


def test_inline_commands_name_real_subcommands():
    """`prcl <word>` in running text names a subcommand (or an option such as --version)."""
    from prcl.cli import COMMANDS

    for page in PAGES:
        for snippet in INLINE.findall(page.read_text()):
            word = snippet.split()[1]
            assert word in COMMANDS or word.startswith("-"), f"{page_id(page)}: `{snippet}`"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {github_anchor(h) for h in re.findall(r"^#+\s+(.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return LINK.findall(text) + HTML_SOURCE.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    """Every relative link and image points to a file in the repository, and an anchor to a
    heading of its page."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        outside = not file.exists() or ROOT not in (file, *file.parents)
        if outside or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page_id(page)}: broken links {broken}"


REPO_PATH = re.compile(r"(?<![\w/.])((?:benchmarks|scripts|tests|src)/[\w/.-]*\w)")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_files_named_exist(page):
    """A script, test or source path the page names (`benchmarks/step.py`,
    `src/prcl/configs/`) is in the repository."""
    missing = sorted({p for p in REPO_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


def test_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nowhere) ![d](img.png)\n")
    targets = links(page)
    assert targets == ["missing.md", "#title", "#nowhere", "img.png"]
    assert "title" in anchors(page) and "nowhere" not in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_config_files_shown_load(page, tmp_path):
    """A YAML block that is a config (it names a base or config sections) loads."""
    for language, body in code_blocks(page.read_text()):
        if language != "yaml":
            continue
        path = tmp_path / "shown.yaml"
        path.write_text(body)
        load_config(path)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_commit_ids(page):
    """History lives in git log: no commit id in the README or docs/."""
    ids = [w for w in COMMIT_ID.findall(page.read_text())
           if re.search(r"[a-f]", w) and re.search(r"\d", w) and w not in KNOWN_HEX]
    assert not ids, f"{page_id(page)} names commit ids {ids}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_options_page_is_up_to_date():
    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "scripts" /
                                                  "options_doc.py")
    options_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(options_doc)
    assert (ROOT / "docs" / "options.md").read_text() == options_doc.render(), (
        "docs/options.md is out of date: run python scripts/options_doc.py")
    missing = [k for k in config_keys() if f"`{k}`" not in options_doc.render()]
    assert not missing


def method_sections() -> set[str]:
    """Section numbers of docs/method.md: '7' for '## 7. ...', '7.3' for '### 7.3 ...'."""
    text = (ROOT / "docs" / "method.md").read_text()
    return set(re.findall(r"^#{2,3}\s+(\d+(?:\.\d+)?)\.?\s", text, re.M))


CITATION = re.compile(r"docs/method\.md,?\s+(?:sections?\s+)?"
                      r"(\d+(?:\.\d+)?(?:\s*(?:,|-|and)\s*\d+(?:\.\d+)?)*)")


def test_method_citations_exist():
    """Every section that src/, tests/ and benchmarks/ cite as "docs/method.md 7.3" exists."""
    sections = method_sections()
    assert {"1", "6", "6.2", "7", "7.1", "7.9", "9"} <= sections
    missing = []
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for cited in CITATION.findall(path.read_text()):
                missing += [f"{path.relative_to(ROOT)}: {number}"
                            for number in re.findall(r"\d+(?:\.\d+)?", cited)
                            if number not in sections]
    assert not missing, f"cited sections that docs/method.md lacks: {missing}"


def test_builtin_configs_are_documented():
    """The README's table of built-in configs names each one."""
    readme = (ROOT / "README.md").read_text()
    missing = [p.stem for p in BUILTIN_CONFIGS.glob("*.yaml") if f"`{p.stem}`" not in readme]
    assert not missing, f"README.md does not name the built-in configs {missing}"
