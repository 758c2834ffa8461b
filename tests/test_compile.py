"""train.compile: torch.compile of the networks, on the CPU with the tiny config. The
default run checks the trainer's side of it with the aot_eager backend (graph capture and
AOT autograd, no code generation); ``-m slow`` adds Inductor, torch.compile's default, which
compiles C++ for the CPU (~50 s here)."""

import functools
import shutil

import pytest
import torch
from test_train import tiny

from prcl.engine import Trainer
from prcl.engine.ema import TEACHER_UNRUN as UNRUN


def compiler_missing() -> str | None:
    """Why torch.compile cannot run here, or None: Inductor needs a C++ compiler on the CPU."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return "no C++ compiler for torch.compile's CPU code"
    return None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize("backend", [
    pytest.param("aot_eager", marks=pytest.mark.skipif(
        not torch._dynamo.is_dynamo_supported(), reason="no torch.compile on this Python")),
    pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
        compiler_missing() is not None, reason=str(compiler_missing()))]),
])
def test_a_compiled_step_computes_what_the_eager_step_does(cache, tmp_path, monkeypatch,
                                                          backend):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    losses = {}
    for compiled in (False, True):
        # the baseline's step: one graph forward and one backward keep the compile short
        trainer = Trainer(tiny(cache, tmp_path / str(compiled), "train.log_every=100",
                               "train.method=supervised",
                               f"train.compile={str(compiled).lower()}"), progress=False)
        labelled, unlabelled = trainer._loaders()
        steps = [trainer.train_step(*trainer._next_batch(labelled, unlabelled))
                 for _ in range(2)]
        losses[compiled] = torch.stack([s.total for s in steps])
        counters = {int(v) for k, v in trainer.student.state_dict().items()
                    if k.endswith("num_batches_tracked") and not k.startswith(UNRUN)}
        assert counters == {2}, compiled  # one pass per step, in the graph or not
        assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule) == compiled
    torch.testing.assert_close(losses[True][0], losses[False][0], rtol=1e-5, atol=1e-6)
    # after one update (lr 0.06) rounding differences have grown
    torch.testing.assert_close(losses[True][1], losses[False][1], rtol=1e-3, atol=1e-4)
