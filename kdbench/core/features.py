"""The `Features` record every model returns when asked (docs/DESIGN.md, "Core contracts").

Shapes for a CIFAR-style ResNet on a batch of N 32x32 images, as an example:
    stem    (N, C0, 32, 32)          output of the first conv-bn-relu
    stages  [(N, C1, 32, 32), (N, C2, 16, 16), (N, C3, 8, 8)]   post-activation
    preact  same shapes as `stages`, before the last ReLU of each stage
    pooled  (N, C3)                   penultimate vector, input of the classifier
    logits  (N, num_classes)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

FEATURE_KEYS = ("stem", "stages", "preact", "pooled", "logits")


@dataclass
class Features:
    logits: Tensor
    pooled: Tensor
    stem: Tensor | None = None
    stages: list[Tensor] = field(default_factory=list)
    preact: list[Tensor] = field(default_factory=list)

    def only(self, fields: tuple[str, ...]) -> Features:
        """These features with every field outside `fields` (and logits) left empty."""
        return Features(
            logits=self.logits,
            pooled=self.pooled if "pooled" in fields else None,
            stem=self.stem if "stem" in fields else None,
            stages=self.stages if "stages" in fields else [],
            preact=self.preact if "preact" in fields else [],
        )


@dataclass(frozen=True)
class FeatureShapes:
    """Per-sample shapes (no batch dimension) of a model's `Features`, probed once.

    Methods build their connectors / embeddings from these.
    """

    stem: tuple[int, ...] | None
    stages: tuple[tuple[int, ...], ...]
    preact: tuple[tuple[int, ...], ...]
    pooled: tuple[int, ...]
    logits: tuple[int, ...]

    @classmethod
    def of(cls, features: Features) -> FeatureShapes:
        return cls(
            stem=None if features.stem is None else tuple(features.stem.shape[1:]),
            stages=tuple(tuple(s.shape[1:]) for s in features.stages),
            preact=tuple(tuple(p.shape[1:]) for p in features.preact),
            pooled=tuple(features.pooled.shape[1:]),
            logits=tuple(features.logits.shape[1:]),
        )
