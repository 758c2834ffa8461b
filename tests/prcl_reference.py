"""A straightforward loop implementation of the PRCL loss (docs/method.md sections 4-6).

The yardstick for ``prcl.losses.PRCLLoss``: written the way the method reads, one class at
a time, a Python loop over queries x classes for the negative counts, the ``[Q, 1 + K, D]``
tensors materialised and autograd doing the backward. Tests compare the vectorised loss with
it in distribution; ``benchmarks/loss.py`` times it. It shares no code with ``prcl.losses``.
"""

import torch
import torch.nn.functional as F

VAR_FLOOR = 1e-6


def loop_mls(mu_a: torch.Tensor, mu_b: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor):
    """Section 3, written out: ``[..., D]`` inputs broadcast, ``[...]`` scores."""
    mu_a = F.normalize(mu_a, dim=-1)
    mu_b = F.normalize(mu_b, dim=-1)
    down = var_a.clamp_min(VAR_FLOOR) + var_b.clamp_min(VAR_FLOOR)
    return -0.5 * ((mu_a - mu_b) ** 2 / down + torch.log(down)).mean(-1)


def loop_prcl_loss(
    mu: torch.Tensor,
    var: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    num_queries: int = 256,
    num_negatives: int = 512,
    temperature: float = 100.0,
    strong_threshold: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PRCL loss of sections 5-6 with loops. mu, var: [B, D, h, w]; labels: [B, h, w] (-1 =
    not taking part); probs: [B, C, h, w]. Returns a scalar."""
    num_feat = mu.shape[1]
    num_classes = probs.shape[1]
    device = mu.device
    mu_pix = mu.permute(0, 2, 3, 1)
    var_pix = var.permute(0, 2, 3, 1)

    mu_all_list, var_all_list, mu_hard_list, var_hard_list, num_list = [], [], [], [], []
    proto_mu_list, proto_var_list = [], []
    for c in range(num_classes):
        valid = labels == c
        if valid.sum() == 0:
            continue
        hard = valid & (probs[:, c] < strong_threshold)
        with torch.no_grad():
            var_c = var_pix[valid].clamp_min(VAR_FLOOR)
            proto_var = 1 / torch.sum(1 / var_c, dim=0, keepdim=True)
            proto_mu = torch.sum(proto_var / var_c * mu_pix[valid], dim=0, keepdim=True)
        proto_mu_list.append(proto_mu)
        proto_var_list.append(proto_var)
        mu_all_list.append(mu_pix[valid])
        var_all_list.append(var_pix[valid])
        mu_hard_list.append(mu_pix[hard])
        var_hard_list.append(var_pix[hard])
        num_list.append(int(valid.sum()))

    if len(num_list) < 2:
        return 0 * (mu.sum() + var.sum())

    proto_mu = torch.cat(proto_mu_list)
    proto_var = torch.cat(proto_var_list)
    valid_num = len(num_list)
    loss = 0 * (mu.sum() + var.sum())
    for i in range(valid_num):
        if len(mu_hard_list[i]) == 0:
            continue
        sample_idx = torch.randint(
            len(mu_hard_list[i]), (num_queries,), generator=generator, device=device
        )
        anchor_mu = mu_hard_list[i][sample_idx]
        anchor_var = var_hard_list[i][sample_idx]
        with torch.no_grad():
            others = [k for k in range(valid_num) if k != i]
            proto_sim = loop_mls(proto_mu[i : i + 1], proto_mu[others], proto_var[i : i + 1],
                                 proto_var[others])
            proto_prob = torch.softmax(proto_sim / temperature, dim=0)
            samp_class = torch.multinomial(
                proto_prob, num_queries * num_negatives, replacement=True, generator=generator
            ).reshape(num_queries, num_negatives)
            samp_num = torch.stack([(samp_class == j).sum(1) for j in range(len(others))], 1)
            samp_num = samp_num.tolist()
            negative_num_list = [num_list[k] for k in others]
            negative_index = []
            for q in range(num_queries):
                low = 0
                for j, num in enumerate(negative_num_list):
                    negative_index.append(torch.randint(
                        low, low + num, (samp_num[q][j],), generator=generator,
                        device=device,
                    ))
                    low += num
            negative_index = torch.cat(negative_index)
            negative_mu_all = torch.cat([mu_all_list[k] for k in others])
            negative_var_all = torch.cat([var_all_list[k] for k in others])
            negative_mu = negative_mu_all[negative_index].reshape(
                num_queries, num_negatives, num_feat
            )
            negative_var = negative_var_all[negative_index].reshape(
                num_queries, num_negatives, num_feat
            )
            positive_mu = proto_mu[i].expand(num_queries, 1, num_feat)
            positive_var = proto_var[i].expand(num_queries, 1, num_feat)
            all_mu = torch.cat((positive_mu, negative_mu), dim=1)
            all_var = torch.cat((positive_var, negative_var), dim=1)
        logits = loop_mls(anchor_mu.unsqueeze(1), all_mu, anchor_var.unsqueeze(1), all_var)
        target = torch.zeros(num_queries, dtype=torch.long, device=device)
        loss = loss + F.cross_entropy(logits / temperature, target)
    return loss / valid_num
