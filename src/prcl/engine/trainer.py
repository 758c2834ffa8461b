"""The mean-teacher PRCL trainer (docs/method.md section 7): set-up, the optimiser step, periodic
evaluation, checkpoints, resume, the non-finite guard and logging.

Data flows one way: datasets -> endless loaders -> ``train_step`` (losses from
``prcl.engine.step``) -> the two optimisers -> the EMA teacher.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from prcl.config import Config, ModelConfig, config_to_dict, save_config
from prcl.data import DataBundle, build_datasets
from prcl.engine import distributed
from prcl.engine.batchnorm_counts import BatchNormCounts
from prcl.engine.checkpoint import (
    atomic_save,
    checkpoint_step,
    load_checkpoint,
    make_checkpoint,
)
from prcl.engine.ema import TEACHER_UNRUN, ema_update
from prcl.engine.guard import (
    MAX_LOSS,
    SkipCounters,
    SkipCounts,
    flag_nonfinite_gradients_,
    found_inf,
    loss_skip_flag,
    zero_momentum_buffers,
)
from prcl.engine.interrupts import EXIT_CODES, Interrupted, StopRequest, catch_stop_signals
from prcl.engine.loaders import endless_loader, sample_seed, worker_error_message
from prcl.engine.run_folder import CONFIG_HEADER, hold_run_folder
from prcl.engine.run_log import RunLog
from prcl.engine.schedules import poly_lr, ramp_down
from prcl.engine.step import (
    StepLosses,
    prcl_loss_from_config,
    prcl_step_losses,
    supervised_step_losses,
)
from prcl.errors import CheckpointError, DataError, PrclError, first_line
from prcl.evaluation import Scores, evaluate
from prcl.models import model_from_config


class TrainingDiverged(PrclError):
    """Too many consecutive steps whose loss or gradients were not finite (or whose loss
    exploded), or weights that are no longer finite: no checkpoint is written from them."""


class CheckpointNotWritten(PrclError):
    """The system refused a checkpoint (a full disk); the one already there is intact."""


NETWORK_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
                     if f.name not in ("pretrained", "output_stride"))
"""The keys that shape the network's weights: a resumed run must keep them."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_miou: float
    last_miou: float
    skipped_steps: int
    rank: int = 0
    complete: bool = False
    """A resumed run that had already trained its last step: nothing was trained."""


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA when supported, else fp16; no autocast on the CPU."""
    if name == "none" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def memory_format(name: str, device: torch.device) -> torch.memory_format:
    """``auto``: channels-last on CUDA, where cuDNN's bf16 and fp16 convolutions run in that
    layout (NCHW costs a transpose around each), contiguous elsewhere."""
    if name == "channels_last" or (name == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def scaled_learning_rates(cfg: Config, world_size: int) -> tuple[float, float, float]:
    """The config's lr belongs to a total labelled batch of ``optim.reference_batch_size``;
    with another total batch (batch_size x world_size) both learning rates scale linearly.
    Returns (lr, probability_head_lr, factor)."""
    factor = 1.0
    if cfg.optim.scale_lr:
        factor = cfg.data.batch_size * world_size / cfg.optim.reference_batch_size
    return cfg.optim.lr * factor, cfg.optim.probability_head_lr * factor, factor


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    torch.manual_seed(seed)
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


class Trainer:
    """Build everything a run needs from a ``Config``; ``fit()`` trains.

    ``resume``: a checkpoint written by an earlier run (``last.pth``); training continues
    exactly where it stopped. A new run refuses a folder that holds another run's files
    unless ``overwrite`` (then they are deleted first); see ``prcl.engine.run_folder``. Under
    torchrun, each process builds its own Trainer. ``data``: datasets built elsewhere (a
    benchmark's) instead of those ``cfg.data`` names. ``bar_position``: the progress bar's
    line (tqdm's ``position``), for runs shown side by side.
    """

    def __init__(self, cfg: Config, resume: str | Path | dict[str, Any] | None = None,
                 runtime: distributed.Runtime | None = None, progress: bool = True,
                 overwrite: bool = False, data: DataBundle | None = None,
                 bar_position: int = 0) -> None:
        state = load_checkpoint(resume) if isinstance(resume, str | Path) else resume
        if state is not None:
            _check_same_network(state, cfg)
        self.cfg = cfg
        self.rt = runtime or distributed.setup_runtime(cfg.train.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic, self.rt.device)
        self.run_dir = Path(cfg.train.out_dir)
        self.progress = progress and self.rt.is_main
        self.bar_position = bar_position
        self.overwrite = overwrite
        if data is None:
            data = build_datasets(cfg.data)
            _refuse_nothing_unlabelled(data, cfg.train.method)
        self.data = data
        self.num_classes = self.data.num_classes
        self.semi = cfg.train.method != "supervised"
        self.contrastive = cfg.train.method == "prcl"
        self.total_steps = cfg.train.epochs * cfg.train.steps_per_epoch
        self.warmup_steps = cfg.train.labelled_warmup_epochs * cfg.train.steps_per_epoch

        self.student = model_from_config(cfg.model, self.num_classes).to(
            self.rt.device, memory_format=memory_format(cfg.train.memory_format, self.rt.device))
        if not self.contrastive:  # without the contrastive term the heads never train
            self.student.representation.requires_grad_(False)
            self.student.probability_head.requires_grad_(False)
        if self.semi:
            self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        else:  # the baseline has no teacher: it is evaluated and saved as the student
            self.teacher = self.student
        self.network = self.student
        if self.rt.distributed:
            if self.rt.device.type == "cuda":
                self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            # The labelled warm-up runs the baseline's step, which leaves the representation
            # and probability heads out of the graph: DDP must then look for unused parameters.
            on_gpu = self.rt.device.type == "cuda"
            self.network = DistributedDataParallel(
                self.student, device_ids=[self.rt.device] if on_gpu else None,
                find_unused_parameters=self.contrastive and self.warmup_steps > 0,
            )
        self.teacher_network = self.teacher
        if cfg.train.compile:
            self.network = torch.compile(self.network)
            self.teacher_network = torch.compile(self.teacher) if self.semi else self.network
        # compiled graphs update the counters inside themselves; DDP reads every buffer as a
        # tensor in each forward pass (it broadcasts them), so the counters stay tensors
        eager = not (cfg.train.compile or self.rt.distributed)
        self.batchnorm_counts = (BatchNormCounts(self.student, self.teacher) if eager
                                 else BatchNormCounts())

        lr, head_lr, self.lr_factor = scaled_learning_rates(cfg, self.rt.world_size)
        groups = self.student.parameter_groups()
        self.optimizer = self._optimizer(groups["network"], lr)
        self.head_optimizer = self._optimizer(groups["probability_head"], head_lr)
        self.scheduler = poly_lr(self.optimizer, self.total_steps, cfg.optim.poly_power,
                                 cfg.optim.min_lr, cfg.optim.lr_warmup_steps)
        self.head_scheduler = poly_lr(self.head_optimizer, self.total_steps,
                                      cfg.optim.poly_power, cfg.optim.min_lr,
                                      cfg.optim.lr_warmup_steps)
        self.amp = amp_dtype(cfg.train.amp, self.rt.device)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.amp == torch.float16)
        self._one = torch.ones((), device=self.rt.device)

        self.prcl_loss = prcl_loss_from_config(
            cfg.loss, distributed.all_reduce_sum if self.rt.distributed else None
        ) if self.contrastive else None
        self.global_prototypes = getattr(self.prcl_loss, "global_prototypes", None)
        self.generator = torch.Generator(self.rt.device)
        self.generator.manual_seed(sample_seed(cfg.train.seed, self.rt.rank, 1))
        self.step = 0
        self.best_miou = -1.0
        self.last_miou = float("nan")
        self.skips = SkipCounters(self.rt.device)
        self.log = RunLog(self.run_dir, enabled=False)
        if state is not None:
            self._load_state(state)

    # ----------------------------------------------------------------- set-up helpers
    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """``optim.optimizer``, fused (one kernel per device and dtype for the whole update;
        the CPU, CUDA and MPS have both): it honours the guard's ``found_inf`` on the device.
        SGD's momentum buffers start at zero (``zero_momentum_buffers``); AdamW's moments
        start at zero by themselves, and a skipped step leaves its step count as it was."""
        o = self.cfg.optim
        if o.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay, fused=True)
        optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                                    weight_decay=o.weight_decay, fused=True)
        zero_momentum_buffers(optimizer)
        return optimizer

    @staticmethod
    def _keep_fused(optimizer: torch.optim.Optimizer) -> None:
        """After ``load_state_dict``, which takes every group setting from the checkpoint:
        the fused step again (a checkpoint from before it holds ``foreach=True``), and zero
        momentum buffers where the checkpoint had none."""
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, None
        zero_momentum_buffers(optimizer)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.amp)

    def _loaders(self) -> tuple[Any, Any]:
        d, rt = self.cfg.data, self.rt
        pin = rt.device.type == "cuda"
        labelled = endless_loader(
            self.data.labelled, d.batch_size, sample_seed(self.cfg.train.seed, 2), rt.rank,
            rt.world_size, self.step * d.batch_size, d.num_workers, pin,
        )
        if not self.semi:
            return labelled, None
        batch_u = d.unlabeled_batch_size or d.batch_size
        unlabelled_steps = max(self.step - self.warmup_steps, 0)
        unlabelled = endless_loader(
            self.data.unlabelled, batch_u, sample_seed(self.cfg.train.seed, 3), rt.rank,
            rt.world_size, unlabelled_steps * batch_u, d.num_workers, pin,
        )
        return labelled, unlabelled

    def _next_batch(self, labelled: Any, unlabelled: Any) -> tuple[torch.Tensor, ...]:
        """(images_l, labels_l, images_u or None) on the training device; no unlabelled
        batch for the baseline or during the labelled warm-up."""
        images_l, labels_l = next(labelled)
        warming_up = self.step < self.warmup_steps
        images_u = None if unlabelled is None or warming_up else next(unlabelled)
        return tuple(None if t is None else t.to(self.rt.device, non_blocking=True)
                     for t in (images_l, labels_l, images_u))

    # ----------------------------------------------------------------- the step
    def lambda_c(self) -> float:
        """lambda_c for the current epoch (docs/method.md 7.8)."""
        r = self.cfg.ramp
        epoch = self.step // self.cfg.train.steps_per_epoch
        return ramp_down(epoch, r.max_value, r.min_value, r.ramp_mult, r.max_epoch)

    def train_step(self, images_l: torch.Tensor, labels_l: torch.Tensor,
                   images_u: torch.Tensor | None) -> StepLosses:
        """One optimiser step; returns the losses (device tensors, read only when logged).

        No host read: when the loss or the gradients are not finite the non-finite guard
        (``prcl.engine.guard``) skips the update on the device, leaving the student, its
        momentum and the teacher exactly as they were, and counts the step in ``skips``; the
        run stops with ``TrainingDiverged`` at the next check (``_check_skips``: every
        logging step, evaluation, save and the end) once ``train.max_nonfinite_steps``
        consecutive steps were skipped."""
        own_statistics = self.cfg.train.teacher_batchnorm == "own"
        if self.semi:  # the baseline's teacher is its student
            self.teacher.train(own_statistics)
        self.network.train()
        with self.batchnorm_counts.deferred():
            losses = self._losses(images_l, labels_l, images_u)
        self.optimizer.zero_grad(set_to_none=True)
        self.head_optimizer.zero_grad(set_to_none=True)
        skip = loss_skip_flag(losses.total, self._reduce_max if self.rt.distributed else None)
        self._optimise(losses.total, skip)
        self.scheduler.step()
        self.head_scheduler.step()
        if self.semi:
            ema_update(self.teacher, self.student, self.step, self.cfg.train.ema_alpha,
                       buffers=TEACHER_UNRUN if images_u is not None and own_statistics
                       else ("",), skip=skip)
        self.skips.update(skip)
        self.step += 1
        return losses

    def _losses(self, images_l: torch.Tensor, labels_l: torch.Tensor,
                images_u: torch.Tensor | None) -> StepLosses:
        """The step's forward passes and losses: PRCL's, or the labelled-only baseline's
        (also PRCL's labelled warm-up, when ``images_u`` is None)."""
        if not self.semi or images_u is None:
            return supervised_step_losses(self.network, images_l, labels_l, self._autocast())
        partners = None
        if self.rt.distributed and self.cfg.data.mix_across_ranks:
            partners = distributed.gathered_partners
        return prcl_step_losses(
            self.network, self.teacher_network, images_l, labels_l, images_u, self.cfg,
            self.prcl_loss, self.lambda_c(), self.generator, self._autocast(), partners,
        )

    def _optimise(self, total: torch.Tensor, skip: torch.Tensor) -> None:
        """Backward and both optimisers' steps, none of it applied when ``skip`` (``[]``, 1.0
        for an unusable loss) is set or the gradients are not finite (then ``skip`` is set
        here). With fp16 the ``GradScaler`` decides on the gradients, as always with fp16
        (its skips are not counted): an unusable loss is made NaN so that it skips too."""
        optimizers = [self.optimizer, self.head_optimizer]
        if self.scaler.is_enabled():
            self.scaler.scale(torch.where(skip > 0, torch.nan, total)).backward()
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            return
        total.backward()
        grads = [p.grad for optimizer in optimizers for group in optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        flag_nonfinite_gradients_(grads, skip, self._one)
        with found_inf(optimizers, skip):
            for optimizer in optimizers:
                optimizer.step()

    @staticmethod
    def _reduce_max(flag: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag

    @property
    def skipped_steps(self) -> int:
        """Steps skipped by the non-finite guard in the whole run (a host read)."""
        return self.skips.read().skipped

    def _check_skips(self) -> SkipCounts:
        """Stop with ``TrainingDiverged`` when ``train.max_nonfinite_steps`` consecutive steps
        were skipped since the last check (one host read); else return the counts."""
        counts = self.skips.read()
        self.skips.restart_worst()
        if counts.worst_streak >= self.cfg.train.max_nonfinite_steps:
            raise TrainingDiverged(
                f"stopped at step {self.step}: {counts.worst_streak} consecutive steps had a "
                f"non-finite or exploding (above {MAX_LOSS:g}) loss or gradient. "
                f"{self._rates_advice()}"
            )
        return counts

    # ----------------------------------------------------------------- the loop
    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train until ``train.epochs * train.steps_per_epoch`` steps (or ``max_steps``),
        evaluating every ``train.eval_every`` epochs and at the end. The main process holds
        the run folder meanwhile (``hold_run_folder``). A resumed run that had already
        reached its last step trains nothing and touches no file (``TrainResult.complete``)."""
        if self.step >= self.total_steps:
            return TrainResult(self.run_dir, self.step, self.best_miou, self.last_miou,
                               self.skipped_steps, self.rt.rank, complete=True)
        if not self.rt.is_main:
            return self._fit(max_steps)
        with hold_run_folder(self.run_dir, fresh=self.step == 0, overwrite=self.overwrite,
                             step=self.step):
            return self._fit(max_steps)

    def _fit(self, max_steps: int | None) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        stop = min(self.total_steps, max_steps) if max_steps is not None else self.total_steps
        eval_period = cfg.train.eval_every * cfg.train.steps_per_epoch
        self.log = RunLog(self.run_dir, enabled=rt.is_main, fresh=self.step == 0)
        if rt.is_main:
            save_config(cfg, self.run_dir / "config.yaml", CONFIG_HEADER)
        self._log_start()
        labelled, unlabelled = self._loaders()
        bar = tqdm(total=stop, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc=cfg.train.method, position=self.bar_position)
        started, started_step = time.perf_counter(), self.step
        with catch_stop_signals() as stop_request:
            try:
                while self.step < stop:
                    try:
                        batch = self._next_batch(labelled, unlabelled)
                        losses = self.train_step(*batch)
                        bar.update(1)
                        log_now = self.step % cfg.train.log_every == 0 or self.step == stop
                        if log_now:
                            rate = (self.step - started_step) / (time.perf_counter() - started)
                            self._log_step(losses, rate, bar)
                        if self.step % eval_period == 0 or self.step == self.total_steps:
                            self.evaluate_and_save()
                    except DataError as error:
                        self._stop_on_bad_file(error)
                    if self._stop_requested(stop_request, log_now):
                        self._stop_on_signal(stop_request.signal_name or "SIGTERM")
            finally:
                bar.close()
                self.log.close()
        self._check_skips()
        if self.step == stop and self.step % eval_period and self.step != self.total_steps:
            self._sync_buffers()
            self.save("last.pth")
        return TrainResult(self.run_dir, self.step, self.best_miou, self.last_miou,
                           self.skipped_steps, rt.rank)

    def _stop_requested(self, request: StopRequest, log_step: bool) -> bool:
        """Whether a stop signal arrived; with several processes they agree at log steps (one
        all-reduce), so that all stop after the same step."""
        if not self.rt.distributed:
            return bool(request)
        if not log_step:
            return False
        flag = torch.tensor([float(bool(request))], device=self.rt.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _stop_on_bad_file(self, error: DataError) -> None:
        """A file that could not be used, met while training: save the step reached, then end
        with the file's one-line message."""
        message = worker_error_message(error)
        if self.step == 0:
            raise DataError(f"{message} (met before the first step)") from None
        self._sync_buffers()
        path = self.save("last.pth")
        raise DataError(f"{message} Training stopped after step {self.step}; {path} holds it: "
                        f"fix the file, then continue with `prcl train --resume {path}`") from None

    def _stop_on_signal(self, name: str) -> None:
        """Save ``last.pth`` at the step reached and end the run with one line."""
        self._sync_buffers()
        path = self.save("last.pth")
        raise Interrupted(
            f"stopped by {name} after step {self.step}; {path} holds it: continue with "
            f"`prcl train --resume {path}`", EXIT_CODES.get(name, 1),
        )

    def evaluate_and_save(self) -> Scores:
        """Evaluate the teacher (the student for the supervised baseline) in eval mode on the
        whole validation set; write ``last.pth`` and, when the mIoU improved, ``best.pth``."""
        self._check_skips()
        self._sync_buffers()
        scores = evaluate(self.teacher, self.data.val, self.num_classes, self.cfg.eval,
                          self.rt.device, num_workers=min(self.cfg.data.num_workers, 2))
        self.last_miou = scores.miou
        improved = scores.miou > self.best_miou
        self.best_miou = max(self.best_miou, scores.miou)
        self.log.record(
            "eval",
            {"step": self.step, "epoch": self.step / self.cfg.train.steps_per_epoch,
             "miou": scores.miou, "best_miou": self.best_miou, "iou": scores.iou},
            step=self.step,
            message=f"step {self.step}: mIoU {scores.miou * 100:.2f} "
                    f"(best {self.best_miou * 100:.2f})",
        )
        self.save("last.pth")
        if improved:
            self.save("best.pth")
        return scores

    def _sync_buffers(self) -> None:
        """Make every rank's BatchNorm statistics the same before evaluating or saving."""
        if self.rt.distributed:
            distributed.average_buffers(self.student)
            if self.semi:
                distributed.average_buffers(self.teacher)

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume; on every rank (it gathers each rank's generator)."""
        skips = self.skips.read()
        training = {
            "step": self.step,
            "best_miou": self.best_miou,
            "last_miou": self.last_miou,
            "skipped_steps": skips.skipped,
            "nonfinite_streak": skips.streak,
            "optimizer": self.optimizer.state_dict(),
            "head_optimizer": self.head_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "head_scheduler": self.head_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generators": distributed.gather_objects(self.generator.get_state().cpu()),
            "torch_rng": torch.get_rng_state(),
            "world_size": self.rt.world_size,
        }
        if self.global_prototypes is not None:
            training["global_prototypes"] = self.global_prototypes.state_dict()
        return make_checkpoint(self.cfg, self.student, self.teacher, self.data.class_names,
                               training)

    def save(self, name: str) -> Path:
        """Write a checkpoint atomically (call on every rank: rank 0 writes). Weights that are
        not finite are never written, nor weights after too many skipped steps: the run stops
        instead, and the checkpoints already on disk stay the last good ones."""
        self._check_skips()
        ckpt = self.checkpoint()
        broken = [k for which in ("student", "teacher") for k, v in ckpt[which].items()
                  if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise TrainingDiverged(
                f"stopped at step {self.step}: {len(broken)} weight tensors are no longer finite "
                f"(first: {broken[0]}), so {name} was not written. {self._rates_advice()}"
            )
        path = self.run_dir / name
        if not self.rt.is_main:
            return path
        try:
            return atomic_save(ckpt, path)
        except OSError as exc:
            raise CheckpointNotWritten(f"could not write {path} at step {self.step} "
                                       f"({exc.strerror}); {self._last_good()}") from exc

    def _last_good(self) -> str:
        """Where the run can continue from after a failed save."""
        last = self.run_dir / "last.pth"
        try:
            step = checkpoint_step(last)
        except CheckpointError:
            return (f"no checkpoint of this run is in {self.run_dir}: make room there, or set "
                    "train.out_dir to another folder, and start again")
        return (f"{last}, the last good checkpoint (step {step}), is intact: make room in "
                f"{self.run_dir} and continue with `prcl train --resume {last}`")

    def _rates_advice(self) -> str:
        """The learning rates this run actually used, and the last good checkpoint if any."""
        lr = self.optimizer.param_groups[0]["initial_lr"]
        head_lr = self.head_optimizer.param_groups[0]["initial_lr"]
        scaled = f" (after linear scaling x{self.lr_factor:g})" if self.lr_factor != 1 else ""
        last = self.run_dir / "last.pth"
        kept = f" The last good checkpoint is {last}." if last.is_file() else ""
        return (f"The learning rates were {lr:.3g} for the network (optim.lr) and {head_lr:.3g} "
                f"for the probability head (optim.probability_head_lr){scaled}: lower the one "
                f"that is too large, most often optim.lr.{kept}")

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        training = ckpt.get("training")
        if not training:
            raise PrclError("the checkpoint holds weights only (no training state): use it with "
                            "`prcl evaluate` or as model.pretrained, not with --resume")
        if training["world_size"] != self.rt.world_size:
            raise PrclError(f"the checkpoint was written by {training['world_size']} process(es); "
                            f"resume with the same number (now {self.rt.world_size})")
        saved_optimizer = "adamw" if "betas" in training["optimizer"]["param_groups"][0] else "sgd"
        if saved_optimizer != self.cfg.optim.optimizer:
            raise PrclError(f"the checkpoint was trained with optim.optimizer={saved_optimizer}; "
                            f"resume with the same (now {self.cfg.optim.optimizer})")
        if ckpt["num_classes"] != self.num_classes:
            raise CheckpointError(
                f"the checkpoint predicts {ckpt['num_classes']} classes but the data has "
                f"{self.num_classes} ({', '.join(self.data.class_names)}); resume on the data "
                "the run was trained on (drop the data.dataset and data.root overrides)")
        try:
            self.student.load_state_dict(ckpt["student"])
            self.teacher.load_state_dict(ckpt["teacher"])
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint's weights do not fit the network "
                                  f"({first_line(exc)})") from None
        for optimizer, saved in ((self.optimizer, training["optimizer"]),
                                 (self.head_optimizer, training["head_optimizer"])):
            optimizer.load_state_dict(saved)
            self._keep_fused(optimizer)
        self.scheduler.load_state_dict(training["scheduler"])
        self.head_scheduler.load_state_dict(training["head_scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        self.generator.set_state(training["generators"][self.rt.rank])
        if self.global_prototypes is not None and "global_prototypes" in training:
            self.global_prototypes.load_state_dict(training["global_prototypes"])
        torch.set_rng_state(training["torch_rng"])
        self.step = training["step"]
        self.best_miou = training["best_miou"]
        self.last_miou = training.get("last_miou", float("nan"))
        self.skips = SkipCounters(self.rt.device, training["skipped_steps"],
                                  training["nonfinite_streak"])

    # ----------------------------------------------------------------- logging
    def _log_start(self) -> None:
        total_batch = self.cfg.data.batch_size * self.rt.world_size
        lr = self.optimizer.param_groups[0]["initial_lr"]
        message = (f"{self.cfg.train.method}: {len(self.data.labelled)} labelled, "
                   f"{len(self.data.unlabelled)} unlabelled, {len(self.data.val)} val images; "
                   f"{self.rt.world_size} process(es) on {self.rt.device}, total labelled batch "
                   f"{total_batch}; lr {lr:.3g}")
        if self.lr_factor != 1.0:
            message += (f" (config lr {self.cfg.optim.lr:.3g} x {total_batch}/"
                        f"{self.cfg.optim.reference_batch_size}: linear scaling)")
        self.log.record("start", {"message": message, "lr": lr, "lr_scale": self.lr_factor,
                                  "step": self.step}, message=message)

    def _log_step(self, losses: StepLosses, rate: float, bar: tqdm) -> None:
        """Check the skipped steps (``_check_skips``), then log the step's losses unless the
        guard skipped it: the host reads of a step happen here, one transfer for the losses."""
        skips = self._check_skips()
        if not self.rt.is_main or skips.streak:
            return
        names = StepLosses._fields
        values = dict(zip(names, torch.stack([v.detach().float() for v in losses]).tolist(),
                          strict=True))
        chance = values.pop("contrastive_chance")
        if chance > 0:  # the step scored anchors: how far from chance the term is
            values["contrastive_vs_chance"] = values["contrastive"] / chance
        else:
            del values["positive_probability"], values["mean_variance"]
        values.update(lambda_c=self.lambda_c(), lr=self.scheduler.get_last_lr()[0],
                      lr_probability_head=self.head_scheduler.get_last_lr()[0],
                      skipped_steps=skips.skipped, it_per_s=rate)
        if self.global_prototypes is not None:
            values.update(self.global_prototypes.summary())
        bar.set_postfix(loss=f"{values['total']:.3f}", sup=f"{values['supervised']:.3f}",
                        unsup=f"{values['unsupervised']:.3f}",
                        prcl=f"{values['contrastive']:.3f}", lr=f"{values['lr']:.2e}")
        self.log.record("train", {"step": self.step, **values}, step=self.step)


def _refuse_nothing_unlabelled(data: DataBundle, method: str) -> None:
    """A semi-supervised method needs unlabelled images: refuse a split without any, before
    anything is made."""
    if method != "supervised" and not len(data.unlabelled):
        raise DataError(
            f"the split has {len(data.labelled)} labelled training images and no unlabelled "
            f"one, so train.method={method} has no image to learn from without labels: use "
            "train.method=supervised, or label fewer images (data.num_labels)")


def _check_same_network(ckpt: dict[str, Any], cfg: Config) -> None:
    """A resumed run must build the network its checkpoint holds: refuse, naming the key,
    an override of a ``NETWORK_KEYS`` key."""
    saved, wanted = ckpt["config"], config_to_dict(cfg)
    for key in NETWORK_KEYS:
        section, name = key.split(".")
        was, now = saved.get(section, {}).get(name), wanted[section][name]
        if was != now:
            raise CheckpointError(f"the checkpoint's network has {key}={was}, not {now}: "
                                  f"resume with the same {key} (drop its override)")


def train(cfg: Config, resume: str | Path | dict[str, Any] | None = None,
          progress: bool = True, overwrite: bool = False, bar_position: int = 0) -> TrainResult:
    """Train from a config (or continue a run from its ``last.pth``); ``overwrite`` lets a
    new run delete an old run's files in its folder; ``bar_position`` is the progress bar's
    line (tqdm's ``position``) for runs shown side by side. Under torchrun the process group
    is closed at the end."""
    try:
        return Trainer(cfg, resume=resume, progress=progress, overwrite=overwrite,
                       bar_position=bar_position).fit()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
