"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS DL workshop 2015.

    loss = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The KL term is shared by every method (`kd_kl_div` in methods/base.py), so KD adds no own terms.
"""

from __future__ import annotations

from .base import Method, register_method


@register_method
class KD(Method):
    """Vanilla logit distillation.

    Defaults from RepDistiller (Tian et al., ICLR 2020), README and scripts/run_cifar_distill.sh:
    `--distill kd -r 0.1 -a 0.9 -b 0` with `--kd_T 4`.
    """

    name = "kd"
    fuses = True
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9, "method_weight": 0.0, "temperature": 4.0}
