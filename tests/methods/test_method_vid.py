"""VID (Ahn et al., CVPR 2019, methods/vid.py): the Gaussian negative log-likelihood per element.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from method_fixtures import build_between, features


def test_vid_is_the_gaussian_negative_log_likelihood_per_element():
    vid = build_between("vid")
    for regressor in vid.regressors:
        assert torch.allclose(regressor.variance(), torch.full_like(regressor.variance(), 5.0))
        for conv in regressor.mean:
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.zeros_(conv.weight)  # mu(s) = 0: the loss depends on the teacher only
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]
    student = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)]  # last stage: teacher pooled 4x4 -> 2x2

    def nll(values: list[float], variance: float) -> float:
        # -log N(t; 0, sigma^2) without the constant: log sigma + t^2 / (2 sigma^2), averaged
        return statistics.fmean(math.log(math.sqrt(variance)) + v**2 / (2 * variance) for v in values)

    pooled_teacher = teacher[1].view(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 average pooling by hand
    expected = nll(teacher[0].flatten().tolist(), 5.0) + nll(pooled_teacher.flatten().tolist(), 5.0)
    terms = vid.method_terms(features(stages=student), features(stages=teacher), None, None)
    assert terms["vid"].item() == pytest.approx(expected, rel=1e-5)
