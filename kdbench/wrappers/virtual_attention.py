"""Virtual Attention Module (VAM), from the description in KDExplainer (Xue et al., IJCAI 2021,
arXiv 2105.04181, Sec. 5). The authors' public code does not contain VAM; this is kdbench's
implementation of the paper's description, with kdbench's own default hyper-parameters
(`VAMConfig`, kdbench/wrappers/vam.py, where `VAM`, its student wrapper, calls the functions here).

A convolution's C_out filters are viewed as G "virtual" blocks (virtual experts) and its
C_in input channels likewise. A learned attention matrix A = softmax(V / t) (one row per
output block, a distribution over input blocks) scales the weight slices:

    W_eff[i, j] = G * A[i, j] * W[i, j]        (i: output block, j: input block)

so at uniform attention (V = 0, the initial state) W_eff = W and the wrapped network is the
plain one. Training adds gamma * mean row entropy of A to the loss, pushing each virtual
expert to specialise on few input blocks. `fold` multiplies A into W once training is done:
the deployed student is the plain architecture with the same state_dict keys, so inference
cost does not change.

The attention is a `torch.nn.utils.parametrize` parametrisation of the conv weight: folding
evaluates the parametrised weight once and stores it as the plain conv's weight. The temperature
is annealed by `VirtualAttention.set_epoch`, which the engine calls like every student module's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kdbench.core.errors import ConfigError, PairNotSupportedError

# the settings are a `VAMConfig` (kdbench/wrappers/vam.py, which imports this module where a student is
# wrapped; importing it back would make a cycle)
VAMSettings = Any


class VirtualAttention(nn.Module):
    """Parametrisation W -> W * G * expand(A) of one conv weight of shape (C_out, C_in, k, k)."""

    def __init__(self, out_channels: int, in_channels: int, config: VAMSettings):
        super().__init__()
        groups = config.groups
        self.groups = groups
        self.t0, self.t_min = config.t0, config.t_min
        self.out_block = out_channels // groups
        self.in_block = in_channels // groups
        self.attention_logits = nn.Parameter(torch.zeros(groups, groups))  # V, uniform A at start
        self.register_buffer("temperature", torch.tensor(1.0))

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Anneal t = max(t_min, t0 / epoch) (1-based epochs), as the HME anneals its routing."""
        self.temperature.fill_(max(self.t_min, self.t0 / epoch))

    def attention(self) -> Tensor:
        """A: (G, G), rows sum to 1."""
        return F.softmax(self.attention_logits / self.temperature, dim=1)

    def row_entropy(self) -> Tensor:
        """Mean over output blocks of H(A[i, :]) in nats (max log G at uniform attention)."""
        attention = self.attention()
        return -(attention * torch.log(attention.clamp_min(1e-12))).sum(dim=1).mean()

    def forward(self, weight: Tensor) -> Tensor:
        scale = self.groups * self.attention()
        scale = scale.repeat_interleave(self.out_block, dim=0).repeat_interleave(self.in_block, dim=1)
        return weight * scale[:, :, None, None]


def _wrappable(conv: nn.Conv2d, groups: int) -> bool:
    # Grouped / depthwise convs already have no cross-block mixing; blocks must tile the channels.
    return conv.groups == 1 and conv.out_channels % groups == 0 and conv.in_channels % groups == 0


def wrap(student: nn.Module, config: VAMSettings) -> list[str]:
    """Put VAM on the convs of the student's last `config.last_stages` stages; returns their names."""
    stages = student.stage_modules()[-config.last_stages :]
    wrapped_ids = {id(m) for stage in stages for m in stage.modules() if isinstance(m, nn.Conv2d)}
    names = []
    for name, module in student.named_modules():
        if id(module) in wrapped_ids and _wrappable(module, config.groups):
            attention = VirtualAttention(module.out_channels, module.in_channels, config)
            parametrize.register_parametrization(module, "weight", attention.to(module.weight.device))
            names.append(name)
    if not wrapped_ids:
        raise PairNotSupportedError(
            f"VAM re-weights convolutions and the student {getattr(student, 'architecture', type(student).__name__)} "
            f"has none in its last {config.last_stages} stage(s) (a token model: ViT / Swin / MLP-Mixer); "
            "VAM serves CNN students (--vam off for this pair)"
        )
    if not names:
        raise ConfigError(
            f"VAM found no convolution to wrap in the last {config.last_stages} stage(s) with "
            f"{config.groups} groups; try another --vam-groups"
        )
    student.vam_config = config
    return names


def attention_modules(student: nn.Module) -> dict[str, VirtualAttention]:
    found = {}
    for name, module in student.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for parametrisation in module.parametrizations.weight:
                if isinstance(parametrisation, VirtualAttention):
                    found[name] = parametrisation
    return found


def entropy_loss(student: nn.Module) -> Tensor:
    """gamma * mean over wrapped layers of the mean row entropy of A."""
    attentions = list(attention_modules(student).values())
    mean_entropy = torch.stack([a.row_entropy() for a in attentions]).mean()
    return student.vam_config.entropy_weight * mean_entropy


def entropies(student: nn.Module) -> dict[str, float]:
    """Per-layer mean row entropy (nats), for the run record; log G means no specialisation."""
    with torch.no_grad():
        return {name: float(a.row_entropy()) for name, a in attention_modules(student).items()}


def attention_parameters(student: nn.Module) -> list[nn.Parameter]:
    return [a.attention_logits for a in attention_modules(student).values()]


def folded_state_dict(student: nn.Module) -> dict[str, Tensor]:
    """The plain architecture's state_dict with A multiplied into each wrapped weight."""
    state = {k: v for k, v in student.state_dict().items() if ".parametrizations.weight." not in k}
    with torch.no_grad():
        for name in attention_modules(student):
            state[f"{name}.weight"] = student.get_submodule(name).weight.detach().clone()
    return state


def fold(student: nn.Module, plain: nn.Module) -> nn.Module:
    """Load the VAM student's folded weights into `plain`, a fresh un-wrapped copy of its architecture.

    strict=True: the folded network has exactly the plain student's keys and shapes.
    """
    plain.load_state_dict(folded_state_dict(student), strict=True)
    return plain
