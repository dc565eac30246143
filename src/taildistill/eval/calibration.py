"""Temperature scaling (Guo et al. 2017): one scalar T minimising the NLL of logits / T."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """argmin_T NLL(softmax(logits / T), labels), T > 0 (optimised in log space with LBFGS)."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())
