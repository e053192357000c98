"""Logit standardisation: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

Instead of sharing one temperature between teacher and student, each logit vector z (of K
classes) is z-scored with its own mean and standard deviation before the temperature softmax:

    Z(z) = (z - mean(z)) / std(z),      std(z) = sqrt(1/K * sum_k (z_k - mean(z))^2)
    p    = softmax(Z(z) / tau)

so the effective temperature of each sample is tau * std(z) and the student only has to match
the teacher's logit *relations*, not their range. `tau` is what the paper calls the base
temperature; kdbench passes the method's `temperature` hyper-parameter as tau and keeps the
T^2 gradient factor of the KL term (as the authors' code does).

Hyper-parameters of the paper's CIFAR-100 runs (README and tools/train.py of
github.com/sunshangquan/logit-standardization-KD): base temperature 2 (3 for a few pairs) and a
KD weight of 9 next to CE weight 1, i.e. for kd `--hp kd.logit_std=true --hp kd.temperature=2
--hp kd.kd_weight=9 --hp kd.ce_weight=1`. Turning `logit_std` on changes no other default.

The standard deviation is the paper's (1/K, no Bessel correction); the authors' code uses
torch's default unbiased std, which scales the effective temperature by sqrt(K / (K - 1)).
"""

from __future__ import annotations

from torch import Tensor

STD_EPS = 1e-7  # as in the authors' code: keeps a constant logit vector finite


def standardize_logits(logits: Tensor) -> Tensor:
    """Z-score each row of `logits` (N, K): zero mean, unit (population) standard deviation."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, correction=0)
    return (logits - mean) / (std + STD_EPS)
