"""Cost measurements: parameters, FLOPs, peak training memory, step time relative to the student.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` records every
convolution / matmul the step actually executes (forward and backward), and reports
FLOPs = 2 x multiply-accumulates. Papers that quote "FLOPs" for CIFAR nets usually mean
MACs: divide by 2 to compare.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` over the training step. The CPU
allocator keeps no such statistic, so on CPU kdbench reports what one training step must
hold at its peak: parameters + gradients + optimizer momentum of everything trained, the
frozen teacher's parameters, and the activations autograd saves for backward (counted with
saved-tensor hooks, each storage once). The record says which method gave the number.

`measure_costs` measures a member (kdbench/training/member.py) before its first epoch, on copies
of its modules and with generators of its own: no state of the run changes, and no random stream.
On the same batch it times the member's step against its student baseline's (kdbench/training/ratios.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdbench.core import distributed
from kdbench.data import iterate_batches
from kdbench.training.member import Member
from kdbench.training.ratios import probe_time_ratio


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def inference_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of one image (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example[:1])
    model.train(was_training)
    return counter.get_total_flops()


class _SavedTensorBytes:
    """Sums the bytes of distinct storages autograd saves for backward."""

    def __init__(self):
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
        return tensor


def measure_train_step(
    step: Callable[[], torch.Tensor],
    trained_parameters: list[nn.Parameter],
    frozen_modules: list[nn.Module],
    batch_size: int,
    device: torch.device,
) -> dict:
    """Run one training step (forward + backward, no optimizer update) under the counters.

    `step` returns the total loss. Gradients it leaves are the caller's to discard.
    """
    saved = _SavedTensorBytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with (
        FlopCounterMode(display=False) as counter,
        torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t),
    ):
        step().backward()
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
        method = "cuda_max_memory_allocated"
    else:
        state_bytes = sum(p.numel() * p.element_size() for p in trained_parameters)
        frozen_bytes = sum(p.numel() * p.element_size() for m in frozen_modules for p in m.parameters())
        # weights + grads + SGD momentum of what is trained, weights of what is frozen, saved activations
        peak_bytes = 3 * state_bytes + frozen_bytes + saved.total
        method = "cpu_params_grads_momentum_plus_saved_activations"
    return {
        "train_flops_per_image": counter.get_total_flops() / batch_size,
        "peak_memory_bytes": int(peak_bytes),
        "peak_memory_method": method,
    }


def measure_costs(member: Member, time_probe: bool = True) -> dict:
    """One counted training step of `member` on copies (no state of the real run changes) + the
    teacher's inference FLOPs, the extra parameters the method and the wrappers train, and its step
    time relative to the student baseline's, timed on the same batch (null where `time_probe` is off)."""
    data, device = member.data, member.device
    info = data.info
    rng_state = torch.get_rng_state()
    student, method = copy.deepcopy(member.student), copy.deepcopy(member.method)
    measure_generator = torch.Generator().manual_seed(0)
    images, labels, indices = next(
        iter(
            iterate_batches(
                data.train,
                info,
                member.spec.recipe.batch_size,
                shuffle=True,
                augment=True,
                device=device,
                generator=measure_generator,
            )
        )
    )
    trained = [p for p in student.parameters()] + [p for p in method.parameters() if p.requires_grad]

    views = torch.Generator().manual_seed(0)  # the run's own view stream stays untouched

    def step():
        with member.precision.autocast():
            terms = member.loss_terms(images, labels, indices, student, method, view_generator=views)
            return sum(terms.values())

    teacher = member.teacher
    frozen = [teacher] if teacher is not None else []
    costs = measure_train_step(step, trained, frozen, len(labels), device)
    torch.set_rng_state(rng_state)
    example = torch.zeros(1, info.in_chans, *info.image_size, device=device)
    costs["teacher_flops_per_image"] = inference_flops(teacher, example) if teacher else 0
    costs["extra_trainable_params"] = parameter_count(method, trainable_only=True) + sum(
        p.numel() for wrapper in member.wrappers for p in wrapper.parameters(member.student)
    )
    costs.update(probe_time_ratio(member, distributed.shard(images, labels, indices), time_probe))
    return costs
