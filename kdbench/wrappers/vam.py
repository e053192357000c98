"""VAM, the Virtual Attention Module of KDExplainer (Xue et al., IJCAI 2021), as a student wrapper: its
settings (`VAMConfig`, in every spec that uses it) and its wrapper (`VAM`). The attention itself, which
needs torch, is kdbench/wrappers/virtual_attention.py, imported when a student is wrapped: specs and
records know VAM by this module alone, and a report reads them without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdbench.core.spec import require_number, wrapper_config
from kdbench.wrappers.base import StudentWrapper, register_wrapper

if TYPE_CHECKING:
    from types import ModuleType

    from torch import Tensor, nn


@dataclass(frozen=True)
class VAMConfig:
    """Virtual Attention Module settings (see kdbench/wrappers/virtual_attention.py). kdbench's own
    defaults: the KDExplainer paper does not publish VAM hyper-parameters."""

    groups: int = 4  # G virtual blocks per convolution (filters and input channels alike)
    last_stages: int = 1  # wrap the convolutions of the student's last N stages
    entropy_weight: float = 0.01  # gamma in  loss += gamma * mean row entropy of A
    t0: float = 1.0  # temperature schedule t = max(t_min, t0 / epoch), like the HME's routing
    t_min: float = 0.1
    # lr of the attention logits V relative to the recipe lr: at 1x, V barely leaves uniform attention
    # in a short run (README, "VAM", has the entropies measured on the quick preset)
    lr_scale: float = 10.0

    def __post_init__(self) -> None:
        require_number(self.groups, "vam-groups", whole=True, low=1)
        require_number(self.last_stages, "vam last_stages", whole=True, low=1)
        require_number(self.entropy_weight, "vam entropy_weight", low=0.0)
        require_number(self.t0, "vam t0", above=0.0)
        require_number(self.t_min, "vam t_min", above=0.0)
        require_number(self.lr_scale, "vam-lr-scale", above=0.0)

    @classmethod
    def from_dict(cls, data: dict) -> VAMConfig:
        return wrapper_config(cls, data, "vam")


def _attention() -> ModuleType:
    from kdbench.wrappers import virtual_attention  # torch: imported where a student is trained

    return virtual_attention


@register_wrapper
class VAM(StudentWrapper):
    """VAM as a student wrapper: configured by a `VAMConfig`, summarised in the record's "vam" (each
    wrapped layer's mean attention row entropy, nats)."""

    name = "vam"
    config_class = VAMConfig
    in_every_spec = True

    def wrap(self, student: nn.Module) -> None:
        _attention().wrap(student, self.config)

    def parameters(self, student: nn.Module) -> list[nn.Parameter]:
        return _attention().attention_parameters(student)

    def param_groups(self, student: nn.Module, lr: float) -> list[dict]:
        # attention logits are not weights: no weight decay pulls them to uniform
        return [{"params": self.parameters(student), "weight_decay": 0.0, "lr": lr * self.config.lr_scale}]

    def loss_terms(self, student: nn.Module) -> dict[str, Tensor]:
        return {"vam_entropy": _attention().entropy_loss(student)}

    def export(self, student: nn.Module, plain: nn.Module) -> nn.Module:
        return _attention().fold(student, plain)

    def summary(self, student: nn.Module) -> dict[str, float]:
        return _attention().entropies(student)
