"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Trains a few steps through the library, then writes what each rank holds: its networks, its
global prototypes, the mIoU of the distributed evaluation, prototypes built from every rank's
pixels, and class-mix partners from the gathered batch."""

import sys
from pathlib import Path

import torch

from prcl.config import load_config
from prcl.engine import Trainer
from prcl.engine.distributed import all_reduce_sum, gathered_partners
from prcl.losses import PRCLLoss, distribution_prototypes

out = Path(sys.argv[1])
trainer = Trainer(load_config("synthetic", sys.argv[2:]), progress=False)
result = trainer.fit()
rank = trainer.rt.rank

g = torch.Generator().manual_seed(100 + rank)
mu, var = torch.randn(40, 6, generator=g), torch.rand(40, 6, generator=g) + 0.05
labels = torch.randint(-1, 4, (40,), generator=g)
labels[:3] = rank
prototypes = distribution_prototypes(mu, var, labels, 5, reduce_sum=all_reduce_sum)

images = torch.arange(3.0).view(3, 1, 1) + 10 * rank
(partner,) = gathered_partners(images)

# rank 1 holds a single class: it returns a zero, yet must still join the prototype reduction
loss_fn = PRCLLoss(num_queries=8, num_negatives=8, reduce_sum=all_reduce_sum,
                   prototypes="global")
mu4 = torch.randn(1, 6, 4, 4, generator=g, requires_grad=True)
var4 = (torch.rand(1, 6, 4, 4, generator=g) + 0.05).requires_grad_()
labels4 = torch.zeros(1, 4, 4, dtype=torch.long)
labels4[:, :2] = 1 - rank
probs4 = torch.full((1, 2, 4, 4), 0.5)
lone_class_loss = loss_fn(mu4, var4, labels4, probs4)
lone_class_loss.backward()

torch.save({
    "student": trainer.student.state_dict(),
    "teacher": trainer.teacher.state_dict(),
    "gdp": trainer.prcl_loss.global_prototypes.sums,
    "miou": result.last_miou,
    "lr": trainer.optimizer.param_groups[0]["initial_lr"],
    "inputs": (mu, var, labels),
    "prototypes": prototypes,
    "partner": partner,
    "lone_class_loss": lone_class_loss.item(),
    "lone_class_grad": mu4.grad is not None,
    "lone_class_gdp": loss_fn.global_prototypes.sums,
}, out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()
