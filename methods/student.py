"""The baseline: the student trained alone on cross-entropy, no teacher.

Every leaderboard delta is measured against this method, trained by the same engine and recipe.
"""

from __future__ import annotations

from .base import Method, register_method


@register_method
class Student(Method):
    """Plain supervised training: total loss = CE(student_logits, y) (ce_weight 1, no KD, no extra terms)."""

    name = "student"
    needs_teacher = False
    fuses = True
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.0}
