"""SemCKD (Chen et al., AAAI 2021, methods/semckd.py): the attention-weighted cross-layer MSE written out by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_fixtures import build, mean, softmax
from torch import nn

from kdbench.core.features import Features, FeatureShapes
from kdbench.methods.base import MethodContext
from kdbench.methods.semckd import layer_projector

NUM_CLASSES = 3


def test_semckd_loss_is_the_attention_weighted_cross_layer_mse():
    student_shapes = FeatureShapes(None, ((2, 4, 4), (3, 2, 2)), ((2, 4, 4), (3, 2, 2)), (3,), (NUM_CLASSES,))
    teacher_shapes = FeatureShapes(None, ((4, 4, 4), (5, 2, 2)), ((4, 4, 4), (5, 2, 2)), (5,), (NUM_CLASSES,))
    batch = 4
    torch.manual_seed(0)
    context = MethodContext(
        student_shapes, teacher_shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long), batch_size=batch
    )
    method = build("semckd", context, soft=2.0)
    student = Features(None, None, stages=[torch.randn(batch, *s) for s in student_shapes.stages])
    teacher = Features(None, None, stages=[torch.randn(batch, *s) for s in teacher_shapes.stages])
    term = method.method_terms(student, teacher, torch.zeros(batch, dtype=torch.long), None)["semckd"]

    def gram(feature):
        flat = [feature[i].flatten().tolist() for i in range(batch)]
        return [[sum(a * b for a, b in zip(u, v, strict=True)) for v in flat] for u in flat]

    def embed(module, matrix):  # the learned MLP, then L2 normalisation written out
        with torch.no_grad():
            out = module.linear2(torch.relu(module.linear1(torch.tensor(matrix)))).tolist()
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in out]

    queries = [embed(q, gram(f)) for q, f in zip(method.queries, student.stages, strict=True)]
    keys = [embed(k, gram(f)) for k, f in zip(method.keys, teacher.stages, strict=True)]
    total = 0.0
    for i in range(batch):
        for s, student_map in enumerate(student.stages):
            energies = [sum(a * b for a, b in zip(queries[s][i], keys[t][i], strict=True)) for t in range(2)]
            alpha = softmax(energies, temperature=2.0)
            for t, teacher_map in enumerate(teacher.stages):
                source, target = student_map[i : i + 1], teacher_map[i : i + 1]
                if source.shape[-1] > target.shape[-1]:
                    source = F.avg_pool2d(source, source.shape[-1] // target.shape[-1])
                elif source.shape[-1] < target.shape[-1]:
                    target = F.avg_pool2d(target, target.shape[-1] // source.shape[-1])
                with torch.no_grad():
                    projected = method.projectors[s][t].eval()(source)
                diffs = (projected - target).flatten().tolist()
                total += alpha[t] * mean([d * d for d in diffs])
    method.eval()
    term = method.method_terms(student, teacher, torch.zeros(batch, dtype=torch.long), None)["semckd"]
    assert term.item() == pytest.approx(total / (batch * 2), rel=1e-5)
    # a batch smaller than the batch size is skipped by the authors: the term is 0
    short = Features(None, None, stages=[f[:3] for f in student.stages])
    short_teacher = Features(None, None, stages=[f[:3] for f in teacher.stages])
    assert (
        method.method_terms(short, short_teacher, torch.zeros(3, dtype=torch.long), None)["semckd"].item()
        == 0.0
    )


def test_semckds_projector_is_aaembed_with_its_checkpoint_keys():
    """DefangChen/SemCKD models/util.py `AAEmbed`: conv1x1 (C_s -> 2 C_t)-BN-ReLU, conv3x3-BN-ReLU, conv1x1
    (-> C_t), no norm after the last conv; its state_dict keys are those of checkpoints written before."""
    projector = layer_projector(8, 4)
    assert [type(layer) for layer in projector] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]
    convs = [layer for layer in projector if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (8, 8, (1, 1), None),
        (8, 8, (3, 3), None),
        (8, 4, (1, 1), None),
    ]
    norm = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(projector.state_dict()) == [
        "0.weight",
        *(f"1.{key}" for key in norm),
        "3.weight",
        *(f"4.{key}" for key in norm),
        "6.weight",
    ]
