import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prcl.config import load_config
from prcl.data import build_datasets
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.trainer import scaled_learning_rates
from prcl.evaluation import evaluate
from prcl.losses import distribution_prototypes

HERE = Path(__file__).parent

SETTINGS = [
    "model.encoder=resnet18", "model.head_channels=32", "model.rep_dim=32",
    "data.synthetic.num_train=24", "data.synthetic.num_val=6", "data.synthetic.image_size=64",
    "data.num_labels=8", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
    "loss.num_queries=16", "loss.num_negatives=32", "optim.reference_batch_size=2",
    "train.epochs=2", "train.steps_per_epoch=2", "train.eval_every=2", "ramp.max_epoch=2",
    "train.labelled_warmup_epochs=1",  # steps 1-2 on labels only, 3-4 the whole method
    "loss.prototypes=global", "loss.gdp_forgetting=0.9", "loss.virtual_negatives=4",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two gloo processes on the CPU, launched by torchrun, train for four steps."""
    root = tmp_path_factory.mktemp("ddp")
    settings = [*SETTINGS, f"data.root={root / 'data'}", f"train.out_dir={root / 'run'}"]
    load_config("synthetic", settings)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(root), *settings]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return root, settings, ranks


def test_both_ranks_hold_identical_networks(ddp_run):
    _, settings, (a, b) = ddp_run
    for name in ("student", "teacher"):
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    config_lr = load_config("synthetic", settings).optim.lr
    assert a["lr"] == b["lr"] == pytest.approx(config_lr * 4 / 2)  # total batch 4, reference 2


def test_distributed_evaluation_equals_single_process(ddp_run):
    root, settings, (a, b) = ddp_run
    assert a["miou"] == b["miou"]
    ckpt = load_checkpoint(root / "run" / "last.pth")
    model, cfg = model_from_checkpoint(ckpt)
    assert all(torch.equal(v, a["teacher"][k]) for k, v in model.state_dict().items())
    data = build_datasets(load_config("synthetic", settings).data)
    single = evaluate(model, data.val, data.num_classes, cfg.eval)
    assert single.miou == a["miou"]
    logged = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "x 4/2: linear scaling" in logged[0]["start"]["message"]


def test_gathered_prototypes_equal_those_of_the_concatenated_batch(ddp_run):
    _, _, ranks = ddp_run
    mu, var, labels = (torch.cat(parts)
                       for parts in zip(*(r["inputs"] for r in ranks), strict=True))
    expected = distribution_prototypes(mu, var, labels, 5)
    for r in ranks:
        for got, want in zip(r["prototypes"], expected, strict=True):
            assert torch.allclose(got.float(), want.float(), rtol=1e-5, atol=1e-6)


def test_both_ranks_hold_identical_global_prototypes(ddp_run):
    root, _, (a, b) = ddp_run
    assert torch.equal(a["gdp"], b["gdp"]) and (a["gdp"][:, -1] > 0).sum() >= 2
    saved = load_checkpoint(root / "run" / "last.pth")["training"]["global_prototypes"]
    assert torch.equal(saved["sums"], a["gdp"])
    # rank 1's batch holds one class: its loss returns early, yet it folds the same sums
    assert torch.equal(a["lone_class_gdp"], b["lone_class_gdp"])
    assert (a["lone_class_gdp"][:, -1] > 0).sum() == 2


def test_class_mix_partner_is_the_global_successor(ddp_run):
    _, _, (a, b) = ddp_run
    assert a["partner"].flatten().tolist() == [1.0, 2.0, 10.0]
    assert b["partner"].flatten().tolist() == [11.0, 12.0, 0.0]


def test_a_rank_with_one_class_still_joins_the_prototype_reduction(ddp_run):
    _, _, (a, b) = ddp_run
    assert a["lone_class_loss"] > 0
    assert b["lone_class_loss"] == 0 and b["lone_class_grad"]


def test_learning_rate_scales_with_the_total_batch():
    cfg = load_config("voc_662")
    assert scaled_learning_rates(cfg, world_size=8) == (3.2e-3, 5e-5, 1.0)
    lr, head_lr, factor = scaled_learning_rates(cfg, world_size=1)
    assert factor == 2 / 16 and lr == pytest.approx(4e-4) and head_lr == pytest.approx(6.25e-6)
    off = load_config("voc_662", ["optim.scale_lr=false"])
    assert scaled_learning_rates(off, world_size=1)[2] == 1.0
