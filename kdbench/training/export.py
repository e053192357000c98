"""The deployed student of a trained member, and the check that exporting it changed nothing.

Each wrapper exports the student into the plain architecture (VAM folds its attention into the
weights), then the method's `deploy` gives the model that is deployed (SimKD: backbone + projector +
the teacher's classifier). The export check is the max |deployed - trained| output on a test batch.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.data import iterate_batches
from kdbench.models import build_model
from kdbench.training.member import Member


def deployed_student(member: Member) -> tuple[nn.Module, float | None]:
    """The student as deployed (each wrapper exported into the plain architecture, then the
    method's `deploy`), and the max |deployed - trained| output on a test batch; (the
    deployed model, None) without wrappers."""
    trained = member.method.deploy(member.student)
    if not member.wrappers:
        return trained, None
    info, device = member.data.info, member.device
    deployed = member.student
    for wrapper in member.wrappers:
        plain = build_model(
            member.spec.student,
            num_classes=info.num_classes,
            in_chans=info.in_chans,
            image_size=info.image_size,
        )
        deployed = wrapper.export(deployed, plain.to(device)).eval()
    deployed = member.method.deploy(deployed).eval()
    member.student.eval()
    trained.eval()
    example, _, _ = next(
        iter(
            iterate_batches(
                member.data.test, info, 64, shuffle=False, augment=False, device=device, generator=None
            )
        )
    )
    with torch.no_grad():
        export_error = float((deployed(example) - trained(example)).abs().max())
    return deployed, export_error
