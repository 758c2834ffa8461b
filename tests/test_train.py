import json

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.cli import main, parse_args
from prcl.config import load_config
from prcl.data import build_datasets
from prcl.data.synthetic import CLASS_NAMES
from prcl.demo import run_demo, threads_each
from prcl.engine import Trainer, TrainingDiverged, train
from prcl.engine import trainer as trainer_module
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.ema import ema_decay
from prcl.errors import CheckpointError, PrclError
from prcl.evaluation import predict_whole
from prcl.losses import PRCLLoss
from prcl.models import build_encoder

TINY = [
    "model.encoder=resnet18",
    "model.head_channels=32",
    "model.rep_dim=32",
    "data.synthetic.num_train=24",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "data.num_labels=6",
    "data.crop_size=48",
    "data.batch_size=2",
    "data.num_workers=0",
    "loss.num_queries=16",
    "loss.num_negatives=32",
    "optim.reference_batch_size=2",
    "optim.optimizer=sgd",  # the authors' optimiser, which the guard and resume tests follow
    "optim.lr=0.06",
    "optim.weight_decay=5e-4",
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.eval_every=1",
    "train.log_every=1",
    "ramp.max_epoch=2",
    "train.labelled_warmup_epochs=0",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def tiny(cache, out, *extra):
    return load_config("synthetic", [*TINY, f"data.root={cache}", f"train.out_dir={out}", *extra])


def test_the_demo_side_by_side_trains_each_run_as_alone_and_prints_the_claim(cache, tmp_path,
                                                                          capsys):
    """Two spawned one-thread trainings at once give each method the network one run in
    this process with one thread gives: the same mIoU to the bit."""
    overrides = [*TINY, f"data.root={cache}"]
    results = run_demo(tmp_path / "demo", overrides, progress=False, side_by_side=True)
    out = capsys.readouterr().out
    assert "training both side by side, 1 thread(s) each" in out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in ("supervised", "prcl"):
            alone = train(tiny(cache, tmp_path / method, f"train.method={method}"),
                          progress=False)
            assert results[method].last_miou == alone.last_miou
            assert f"{method:<10}  mIoU {alone.last_miou * 100:.1f}\n" in out
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "demo" / "demo.png").is_file()


def test_the_demo_runs_one_after_the_other_on_a_gpu_or_one_core(monkeypatch):
    cfg = load_config("synthetic", ["train.device=cpu"])
    monkeypatch.setattr("prcl.demo.available_cores", lambda: 2)
    assert threads_each(cfg) == 1 and threads_each(cfg, side_by_side=False) == 0
    monkeypatch.setattr("prcl.demo.available_cores", lambda: 16)
    assert threads_each(cfg) == 8
    monkeypatch.setattr("prcl.demo.available_cores", lambda: 1)
    assert threads_each(cfg) == 0 and threads_each(cfg, side_by_side=True) == 1
    monkeypatch.setattr("prcl.demo.select_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr("prcl.demo.available_cores", lambda: 16)
    assert threads_each(cfg) == 0


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "prcl"])
def test_few_steps_end_to_end(cache, tmp_path, method):
    result = train(tiny(cache, tmp_path, f"train.method={method}"), progress=False)
    assert result.steps == 4 and result.skipped_steps == 0
    assert 0 <= result.last_miou <= 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    train_logs = [r["train"] for r in records if "train" in r]
    assert [e["step"] for e in evals] == [2, 4]
    assert len(train_logs) == 4 and all(t["total"] == t["total"] for t in train_logs)
    if method == "prcl":
        assert all(t["contrastive"] > 0 for t in train_logs)
        # a fresh network's term is at chance: ln(1 + 32 negatives), the positive 1 in 33
        assert all(abs(t["contrastive_vs_chance"] - 1) < 0.01 for t in train_logs)
        assert all(abs(t["positive_probability"] - 1 / 33) < 0.003 for t in train_logs)
        assert all(0 < t["mean_variance"] < 1 for t in train_logs)
    else:
        assert all(t["contrastive"] == 0 for t in train_logs)
        assert not any("positive_probability" in t or "contrastive_vs_chance" in t
                       for t in train_logs)
    if method == "supervised":
        assert all(t["unsupervised"] == 0 for t in train_logs)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "best.pth").is_file()
    assert any((tmp_path / "tensorboard").iterdir())
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["training"]["step"] == 4 and ckpt["num_classes"] == len(CLASS_NAMES)


def test_the_mean_teacher_is_prcl_without_the_contrastive_term(cache, tmp_path, monkeypatch):
    """The same teacher, pseudo-labels and unsupervised loss; the PRCL loss and the
    representation and variance heads are never run, and those heads never change."""
    def refused(*args, **kwargs):
        raise AssertionError("the mean teacher ran the PRCL loss")

    monkeypatch.setattr(PRCLLoss, "forward", refused)
    heads_run = []
    cfg = tiny(cache, tmp_path, "train.method=mean_teacher", "loss.un_threshold=0.0")
    trainer = Trainer(cfg, progress=False)
    for module in (trainer.student.representation, trainer.student.probability_head):
        module.register_forward_hook(lambda *args: heads_run.append(1))
    heads = {k: v.clone() for k, v in trainer.student.state_dict().items()
             if k.startswith(("representation.", "probability_head."))}
    assert trainer.prcl_loss is None and trainer.teacher is not trainer.student
    trainer.fit()
    assert not heads_run
    after = trainer.student.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in heads.items())
    logs = [json.loads(line)["train"] for line in
            (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert all(t["unsupervised"] > 0 and t["contrastive"] == 0 for t in logs)
    assert all(t["total"] == pytest.approx(t["supervised"] + t["unsupervised"]) for t in logs)


def test_labelled_warmup_trains_on_labels_before_the_teacher_joins(cache, tmp_path,
                                                                     monkeypatch):
    calls = []
    real = trainer_module.prcl_step_losses

    def counted(*args, **kwargs):
        calls.append(args[4].shape[0])  # the unlabelled batch
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "prcl_step_losses", counted)
    train(tiny(cache, tmp_path, "train.labelled_warmup_epochs=1"), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logs = [r["train"] for r in records if "train" in r]
    assert calls == [2, 2]  # steps 3 and 4 only
    assert [(t["unsupervised"], t["contrastive"]) for t in logs[:2]] == [(0.0, 0.0)] * 2
    assert all(t["contrastive"] > 0 for t in logs[2:])


def test_labelled_warmup_is_the_supervised_run_until_the_teacher_joins(cache, tmp_path):
    runs = {}
    for method in ("supervised", "prcl"):
        cfg = tiny(cache, tmp_path / method, f"train.method={method}",
                   "train.labelled_warmup_epochs=1")
        runs[method] = Trainer(cfg, progress=False)
        runs[method].fit(max_steps=2)
    supervised, prcl = (runs[m].student.state_dict() for m in ("supervised", "prcl"))
    assert supervised.keys() == prcl.keys()
    assert all(torch.equal(supervised[k], prcl[k]) for k in supervised)
    runs["prcl"].fit(max_steps=3)  # the first step with the unlabelled batch
    after = runs["prcl"].student.state_dict()
    assert not torch.equal(after["classifier.3.weight"], supervised["classifier.3.weight"])


GDP_VN = ("loss.prototypes=global", "loss.gdp_forgetting=0.9", "loss.virtual_negatives=4",
          "loss.virtual_radius=2")


def test_evaluating_does_not_change_what_a_run_trains(cache, tmp_path):
    """A run evaluated after every epoch ends with the same networks, to the bit, as one
    evaluated only at its end: the validation loader draws from torch's global generator, and
    training must not read it afterwards."""
    networks = []
    for every in (1, 2):
        cfg = tiny(cache, tmp_path / f"every{every}", "train.deterministic=true",
                   "train.labelled_warmup_epochs=1", f"train.eval_every={every}")
        trainer = Trainer(cfg, progress=False)
        trainer.fit()
        networks.append([getattr(trainer, n).state_dict() for n in ("student", "teacher")])
    evals = [line for line in (tmp_path / "every1" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert len(evals) == 2
    for a, b in zip(*networks, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options", [("train.labelled_warmup_epochs=0",),
                                     ("train.labelled_warmup_epochs=1",), GDP_VN,
                                     ("optim.optimizer=adamw",)],
                         ids=["no-warmup", "warmup", "gdp-vn", "adamw"])
def test_resume_continues_bitwise(cache, tmp_path, options):
    extra = ("train.deterministic=true", "train.eval_every=2", *options)
    cfg = tiny(cache, tmp_path / "straight", *extra)
    straight = Trainer(cfg, progress=False)
    straight.fit()
    cfg_a = tiny(cache, tmp_path / "split", *extra)
    Trainer(cfg_a, progress=False).fit(max_steps=2)
    resumed = Trainer(cfg_a, resume=tmp_path / "split" / "last.pth", progress=False)
    assert resumed.step == 2
    resumed.fit()
    for name in ("student", "teacher"):
        a = getattr(straight, name).state_dict()
        b = getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state, state_resumed = (t.optimizer.state_dict()["state"][0] for t in (straight, resumed))
    assert state.keys() == state_resumed.keys() and state.keys() >= (
        {"exp_avg", "exp_avg_sq"} if "optim.optimizer=adamw" in options else {"momentum_buffer"})
    assert all(torch.equal(state[k], state_resumed[k]) for k in state)
    if options == GDP_VN:
        gdp = straight.prcl_loss.global_prototypes.sums
        assert torch.equal(gdp, resumed.prcl_loss.global_prototypes.sums)
        saved = load_checkpoint(tmp_path / "straight" / "last.pth")["training"]
        assert torch.equal(saved["global_prototypes"]["sums"], gdp)
        records = [json.loads(line) for line in
                   (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
        logged = [r["train"] for r in records if "train" in r]
        seen = [t["gdp_classes_seen"] for t in logged]  # a class seen once stays seen
        assert len(seen) == 4 and seen == sorted(seen) and seen[-1] == (gdp[:, -1] > 0).sum()
        assert all(0 < t["gdp_mean_var"] < 1 for t in logged)



def test_resuming_with_another_optimiser_is_one_clear_error(cache, tmp_path):
    Trainer(tiny(cache, tmp_path), progress=False).fit(max_steps=1)
    with pytest.raises(PrclError, match=r"trained with optim\.optimizer=sgd; resume with the same"):
        Trainer(tiny(cache, tmp_path, "optim.optimizer=adamw"), resume=tmp_path / "last.pth",
                progress=False)


def test_teacher_heads_it_never_runs_carry_trained_statistics(cache, tmp_path):
    trainer = Trainer(tiny(cache, tmp_path), progress=False)
    trainer.fit()
    for head in ("probability_head", "representation"):
        teacher = trainer.teacher.get_submodule(head)
        student = trainer.student.get_submodule(head)
        norms = [(t, s) for t, s in zip(teacher.modules(), student.modules(), strict=True)
                 if isinstance(t, torch.nn.BatchNorm2d)]
        assert norms, head
        for t, s in norms:
            assert not torch.equal(t.running_mean, torch.zeros_like(t.running_mean)), head
            assert not torch.equal(t.running_var, torch.ones_like(t.running_var)), head
            # The EMA follows the student's statistics: closer to them than to the init.
            assert (t.running_var - s.running_var).abs().mean() < (
                (t.running_var - 1).abs().mean()), head


@pytest.mark.parametrize("statistics", ["own", "student"])
def test_teacher_batchnorm_own_or_averaged_from_the_student(cache, tmp_path, statistics):
    trainer = Trainer(tiny(cache, tmp_path, f"train.teacher_batchnorm={statistics}"),
                      progress=False)
    trainer.fit(max_steps=1)
    batch = trainer._next_batch(*trainer._loaders())
    modes = []
    trainer.teacher.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    name = next(n for n, m in trainer.teacher.named_modules()
                if isinstance(m, torch.nn.BatchNorm2d))
    teacher, student = (net.get_submodule(name) for net in (trainer.teacher, trainer.student))
    before = teacher.running_mean.clone()
    trainer.train_step(*batch)
    assert modes == [statistics == "own"]
    weight = 1 - ema_decay(1, trainer.cfg.train.ema_alpha)
    averaged = torch.lerp(before, student.running_mean, weight)
    assert torch.allclose(teacher.running_mean, averaged) == (statistics == "student")


def test_the_baseline_trains_in_train_mode_whatever_teacher_batchnorm_says(cache, tmp_path):
    cfg = tiny(cache, tmp_path, "train.method=supervised", "train.teacher_batchnorm=student")
    trainer = Trainer(cfg, progress=False)
    modes = []
    trainer.student.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer.fit(max_steps=1)
    assert modes == [True]


def test_non_finite_guard_skips_counts_and_stops(cache, tmp_path, monkeypatch):
    cfg = tiny(cache, tmp_path, "train.max_nonfinite_steps=2", "train.epochs=4")
    trainer = Trainer(cfg, progress=False)
    trainer.fit(max_steps=2)
    good = (tmp_path / "last.pth").read_bytes()
    weights = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    real = trainer_module.prcl_step_losses

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        return losses._replace(total=losses.total * float("nan"))

    monkeypatch.setattr(trainer_module, "prcl_step_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"0\.06 for the network \(optim\.lr\)"):
        trainer.fit()
    assert trainer.skipped_steps == 2 and trainer.step == 4
    assert (tmp_path / "last.pth").read_bytes() == good
    now = trainer.student.state_dict()
    assert all(torch.equal(weights[k], now[k]) for k in weights if k.endswith("weight"))


@pytest.mark.parametrize("lr", ["1e3", "1e6"])
def test_a_diverging_run_stops_and_writes_no_broken_checkpoint(cache, tmp_path, lr):
    cfg = tiny(cache, tmp_path, f"optim.lr={lr}", "train.epochs=10", "train.eval_every=1",
               "train.max_nonfinite_steps=3")
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert f"{float(lr):.3g} for the network (optim.lr)" in message
    for name in ("last.pth", "best.pth"):
        if (tmp_path / name).exists():
            ckpt = load_checkpoint(tmp_path / name)
            for which in ("student", "teacher"):
                assert all(torch.isfinite(v).all() for v in ckpt[which].values()
                           if v.is_floating_point()), (name, which)
            assert f"The last good checkpoint is {tmp_path / 'last.pth'}" in message


def test_weights_that_are_not_finite_are_never_saved(cache, tmp_path):
    trainer = Trainer(tiny(cache, tmp_path), progress=False)
    trainer.fit(max_steps=2)
    good = (tmp_path / "last.pth").read_bytes()
    with torch.no_grad():
        trainer.teacher.classifier[-1].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"1 weight tensors are no longer finite \(first: "
                                               r"classifier\.3\.weight\), so last\.pth was not"):
        trainer.save("last.pth")
    assert (tmp_path / "last.pth").read_bytes() == good


def test_evaluate_command_matches_an_independent_confusion_matrix(cache, tmp_path, capsys):
    cfg = tiny(cache, tmp_path, "train.epochs=1")
    train(cfg, progress=False)
    ckpt = tmp_path / "last.pth"
    assert main(["evaluate", str(ckpt), "--json", str(tmp_path / "scores.json")]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())

    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    model.eval()
    data = build_datasets(cfg.data)
    n = data.num_classes
    counts = torch.zeros(n, n, dtype=torch.long)
    for image, label in (data.val[i] for i in range(len(data.val))):
        pred = predict_whole(model, image[None]).probs[0].argmax(0)
        for t in range(n):
            for p in range(n):
                counts[t, p] += int(((label == t) & (pred == p)).sum())
    ious = []
    for c in range(n):
        union = counts[c].sum() + counts[:, c].sum() - counts[c, c]
        if union > 0:
            ious.append(counts[c, c].item() / union.item())
    assert scores["miou"] == pytest.approx(sum(ious) / len(ious))
    assert f"{scores['miou'] * 100:7.2f}" in printed


def test_evaluate_checks_the_classes_and_needs_no_training_split(cache, tmp_path, capsys):
    train(tiny(cache, tmp_path, "train.epochs=1"), progress=False)
    ckpt = str(tmp_path / "last.pth")
    assert main(["evaluate", ckpt, "data.num_labels=100000"]) == 0
    capsys.readouterr()
    folder = tmp_path / "three"
    (folder / "classes.txt").parent.mkdir()
    (folder / "classes.txt").write_text("sky\nroad\ncar\n")
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (folder / sub / split).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(folder / "images" / split / "x.png")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "masks" / split / "x.png")
    assert main(["evaluate", ckpt, "data.dataset=folder", f"data.root={folder}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"predicts {len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)})" in err
    assert "the dataset has 3 (sky, road, car)" in err
    assert main(["evaluate", ckpt, "--json", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert main(["evaluate", ckpt, "--json", str(tmp_path / "last.pth" / "x.json")]) == 2
    assert "cannot make its folder" in capsys.readouterr().err


def test_predict_writes_mask_overlay_and_uncertainty(cache, tmp_path, capsys):
    cfg = tiny(cache, tmp_path, "train.epochs=1")
    train(cfg, progress=False)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (70, 50), (120, 30, 200)).save(images / "a.png")
    Image.new("RGB", (40, 64), (10, 200, 30)).save(images / "b.jpg")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "last.pth"), str(images), "--out", str(out)]) == 0
    for stem, size in (("a", (70, 50)), ("b", (40, 64))):
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "P" and mask.size == size
        assert max(np.asarray(mask).flatten()) < len(CLASS_NAMES)
        assert Image.open(out / f"{stem}_overlay.png").size == size
        assert Image.open(out / f"{stem}_uncertainty.png").mode == "RGB"
    assert "wrote 6 files for 2 images" in capsys.readouterr().out


def test_predict_keeps_every_output_and_skips_a_bad_image(cache, tmp_path, capsys):
    train(tiny(cache, tmp_path, "train.epochs=1"), progress=False)
    for folder, name in (("a", "same.jpg"), ("a", "same.png"), ("b", "same.jpg"),
                         ("b", "other.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (30, 20), (90, 20, 200)).save(tmp_path / folder / name)
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "pred"
    code = main(["predict", str(tmp_path / "last.pth"), str(tmp_path / "a"),
                 str(tmp_path / "b"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "wrote 12 files for 4 images" in captured.out
    assert "skipped" in captured.err and "broken.jpg" in captured.err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 12
    assert {n.rsplit("_", 1)[0] for n in names} == {"a__same.jpg", "a__same.png",
                                                     "b__same.jpg", "other"}
    (tmp_path / "file").write_text("")
    assert main(["predict", str(tmp_path / "last.pth"), str(tmp_path / "a"), "--out",
                 str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_the_system_refusing_a_file_is_one_line_unless_debugging(cache, tmp_path, capsys,
                                                                 monkeypatch):
    (tmp_path / "a_file").write_text("")
    args = ["train", "synthetic", *TINY, f"data.root={cache}",
            f"train.out_dir={tmp_path / 'a_file' / 'run'}", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_file/run" in err and "the system refused it" in err
    monkeypatch.setenv("PRCL_DEBUG", "1")
    with pytest.raises(OSError):
        main(args)


def test_an_offline_torchvision_download_is_one_clear_error(monkeypatch):
    import urllib.error

    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match=r"could not download .* resnet18 .* "
                                              r"model\.pretrained=/path/to/it\.pth"):
        build_encoder("resnet18", weights="torchvision")


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "no_such_config"]) == 2
    assert "config 'no_such_config' not found" in capsys.readouterr().err
    assert main(["train", "synthetic", "data.crop_sise=3"]) == 2
    assert "did you mean 'data.crop_size'" in capsys.readouterr().err
    assert main(["train", "synthetic", "train.labelled_warmup_epochs=99"]) == 2
    assert "'train.labelled_warmup_epochs' must be between 0 and train.epochs" in (
        capsys.readouterr().err)
    assert main(["evaluate", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err
    assert main(["train", "voc_662", f"data.root={tmp_path / 'VOC2012'}"]) == 2
    assert "VOC2012" in capsys.readouterr().err
    (tmp_path / "weights.pth").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "weights.pth"), str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_overrides_may_sit_on_either_side_of_options(capsys):
    args = parse_args(["train", "synthetic", "train.epochs=1", "--no-progress", "train.seed=3"])
    assert args.config == ["synthetic", "train.epochs=1", "train.seed=3"] and args.no_progress
    with pytest.raises(SystemExit):
        parse_args(["train", "synthetic", "--no-progress", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "words"), [
    ("train.epochs=0", "'train.epochs' is 0; it must be at least 1"),
    ("train.eval_every=0", "'train.eval_every' is 0"),
    ("ramp.max_epoch=0", "'ramp.max_epoch' is 0"),
    ("data.batch_size=0", "'data.batch_size' is 0"),
    ("data.crop_size=-5", "'data.crop_size' is -5; it must be at least 32"),
    ("data.crop_size=1", "'data.crop_size' is 1"),
    ("loss.temperature=0", "'loss.temperature' is 0.0; it must be above 0"),
    ("loss.num_queries=0", "'loss.num_queries' is 0"),
    ("eval.stride=0", "'eval.stride' is 0"),
    ("train.device=banana", "'train.device' is 'banana'; use auto, cpu, cuda, cuda:N or mps"),
    ("train.ema_alpha=1.5", "'train.ema_alpha' is 1.5; it must be in [0, 1)"),
    ("optim.lr=nan", "'optim.lr' is nan; it must be above 0"),
    ("data.unlabeled_batch_size=0", "'data.unlabeled_batch_size' is 0"),
    ("loss.prototypes=globl", "'loss.prototypes' is 'globl'; did you mean 'global'?"),
    ("loss.gdp_forgetting=1.5", "'loss.gdp_forgetting' is 1.5; it must be between 0 and 1"),
    ("loss.virtual_negatives=-1", "'loss.virtual_negatives' is -1; it must be 0 (off) or more"),
    ("loss.virtual_radius=-0.5", "'loss.virtual_radius' is -0.5; it must be 0 or more"),
    ("train.compile=maybe", "'train.compile' must be bool, got 'maybe'"),
    ("train.memory_format=nhwc", "'train.memory_format' is 'nhwc' (choose from auto, "
                                 "channels_last, contiguous)"),
])
def test_values_out_of_range_are_refused_before_anything_is_made(tmp_path, capsys, override,
                                                                  words):
    run = tmp_path / "run"
    assert main(["train", "synthetic", override, f"train.out_dir={run}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert not run.exists()
