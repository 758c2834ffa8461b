"""Config files and overrides: what is refused while reading, in one line naming the file."""

import pytest

from prcl.cli import main
from prcl.config import load_config
from prcl.errors import ConfigError

BOMB = """a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
model:
  encoder: *d
"""


def test_an_alias_bomb_is_refused_in_a_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300
    assert f"{path}: the alias *a repeats a list or mapping" in err
    assert main(["check-data", "model.encoder=[&a [x, x, x], [*a, *a, *a]]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "override 'model.encoder': the alias *a repeats" in err


def test_aliases_of_plain_values_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: synthetic\neval:\n  window: &w 400\n  stride: *w\n")
    assert load_config(path).eval.stride == 400


def test_a_long_value_is_quoted_short(capsys):
    assert main(["check-data", "model.encoder=" + "x" * 100_000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600 and "(100,000 characters)" in err


@pytest.mark.parametrize(("text", "words"), [
    ("model:\n  encoder: resnet18\n  rep_dim: 32\n  encoder: resnet50\n",
     "the key 'encoder' appears twice in one mapping (lines 2 and 4)"),
    ("train:\n  epochs: 3\nmodel:\n  rep_dim: 32\ntrain:\n  epochs: 4\n",
     "the key 'train' appears twice in one mapping (lines 1 and 5)"),
])
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, text, words):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {words}; keep one"


@pytest.mark.parametrize(("encoding", "words"), [
    ("latin-1", "the file is not UTF-8 text (byte 0xe9 on line 2; Latin-1"),
    ("utf-16", "the file is UTF-16 text (it starts with a UTF-16 byte-order mark)"),
])
def test_a_config_that_is_not_utf8_is_one_line_naming_the_encoding(tmp_path, capsys,
                                                                   encoding, words):
    path = tmp_path / "config.yaml"
    path.write_bytes("model:\n  encoder: résnet18\n".encode(encoding))
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {words}" in err and "save it as UTF-8" in err


def test_a_utf8_config_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes("\ufeffbase: synthetic\ntrain:\n  seed: 5\n".encode())
    assert load_config(path).train.seed == 5


def test_invalid_yaml_is_one_line_with_its_line_number(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  encoder: [resnet18\n  rep_dim: 3\n")
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: not valid YAML at line 3" in err
