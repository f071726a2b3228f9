"""Data-parallel training (PyTorch DDP under torchrun) and mixed precision in one helper.

:class:`DistributedContext` joins the process group from torchrun's environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; NCCL on CUDA, gloo on CPU), wraps the renderer in
``torch.nn.parallel.DistributedDataParallel`` and offers the collectives the trainer needs
(OR of a flag over ranks, gradient averaging of modules outside DDP, all-gather, barrier).

:class:`Precision` is the AMP policy: on CUDA bfloat16 autocast where the GPU supports it
(float32's range: no loss scaling), else float16 autocast + ``torch.amp.GradScaler``; on CPU
plain float32 unless ``optim.cpu_bf16`` asks for bfloat16 autocast (native bfloat16 CPUs
only). :meth:`Precision.backward_step` is the one backward / gradient-averaging / clipping /
optimiser step used for the renderer and the discriminator.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import weakref
from typing import Callable

import torch
from torch import nn

from ram_avatar.utils import resolve_device

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


class DistributedContext:
    """Process-group state from torchrun's environment (module docstring).

    Args:
        device_arg: ``auto|cpu|cuda[:N]`` or a torch.device; under torchrun on CUDA each rank
            uses ``cuda:LOCAL_RANK``.
    """

    def __init__(self, device_arg) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0) if self.world > 1 else 0
        self.device = resolve_device(device_arg)
        self.owns_group = False
        self._wrapped: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # DDP modules of wrap()
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self.owns_group = True
            self.world = dist.get_world_size()
            self.rank = dist.get_rank()

    @property
    def enabled(self) -> bool:
        """True with more than one rank."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on rank 0 (the rank that writes and validates)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` with several ranks, else ``model``."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)
        self._wrapped.add(ddp)
        return ddp

    def any(self, *flags: bool) -> list[bool]:
        """Logical OR of each flag over all ranks (so every rank stops / fails together)."""
        if not self.enabled:
            return list(flags)
        import torch.distributed as dist

        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def average_grads(self, module: nn.Module | None) -> None:
        """Average the gradients of ``module`` (outside DDP) over the ranks, in place."""
        if not self.enabled or module is None:
            return
        import torch.distributed as dist

        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation of ``t`` (same shape on every rank) over the ranks."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        """Wait for every rank (no-op with one rank)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group when this context joined it.

        The DDP modules of :meth:`wrap` first drop their reducer (and the logger holding it)
        while the group is still registered. Otherwise the group's last reference may go with
        the reducer, whenever the model is freed: gloo's destructor then joins its worker
        thread while holding the GIL, and that thread needs the GIL to free the tensors of the
        last collective, so the rank hangs at exit (PyTorch issue #56297; seen on CI).
        """
        if self.owns_group:
            import torch.distributed as dist

            for ddp in list(self._wrapped):
                for name in ("logger", "reducer"):      # the logger holds the reducer
                    ddp.__dict__.pop(name, None)
            gc.collect()
            dist.destroy_process_group()


class NonFiniteGradients(RuntimeError):
    """Raised by :meth:`Precision.backward_step` when the clipped gradient norm is NaN/Inf."""


def cpu_has_native_bf16() -> bool:
    """True when PyTorch's oneDNN runs bfloat16 natively on this CPU (AMX or AVX512-BF16),
    where CPU bfloat16 autocast is faster than float32 instead of emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Precision:
    """Mixed-precision policy of a run (module docstring).

    Args:
        enabled: the config's ``optim.amp``; only used on CUDA.
        device: the training device.
        dist: the run's :class:`DistributedContext` (gradient averaging, agreeing on failures).
        grad_clip: max global gradient norm (0 disables clipping).
        cpu_bf16: on a CPU, bfloat16 autocast where oneDNN runs it natively
            (:func:`cpu_has_native_bf16`; else float32, said once in the log): ``optim.cpu_bf16``,
            on in the CPU presets (measured there).

    Attributes:
        dtype: autocast dtype (bfloat16 or float16) when AMP is on, else None.
        scale_loss: True with float16 (a GradScaler scales the loss).
    """

    def __init__(self, enabled: bool, device: torch.device, dist: DistributedContext,
                 grad_clip: float, cpu_bf16: bool = False) -> None:
        self.device = device
        self.dist = dist
        self.grad_clip = float(grad_clip)
        use_amp = bool(enabled and device.type == "cuda")
        self.dtype = None
        if use_amp:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif cpu_bf16 and device.type == "cpu":
            if cpu_has_native_bf16():
                self.dtype = torch.bfloat16
            else:
                log.info("optim.cpu_bf16: this CPU has no native bfloat16 (AMX / AVX512-BF16); "
                         "training in float32")
        self.scale_loss = self.dtype == torch.float16  # bf16 has float32's range

    def autocast(self):
        """Context manager: autocast to :attr:`dtype` on the training device, nothing when
        AMP is off."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self):
        """A GradScaler on CUDA (disabled unless float16 AMP), None on CPU (checkpoints store
        its state when present)."""
        if self.device.type != "cuda":
            return None
        return torch.amp.GradScaler("cuda", enabled=self.scale_loss)

    def backward_step(self, optimizer: torch.optim.Optimizer, scaler, params,
                      loss: torch.Tensor, average: nn.Module | None = None) -> None:
        """Backward, average ``average``'s gradients over ranks (modules outside DDP), clip the
        global norm of ``params`` and step ``optimizer`` (through ``scaler`` with float16).

        Raises:
            NonFiniteGradients: without loss scaling, the gradient norm is NaN/Inf on any rank
                (nothing was stepped).
        """
        if scaler is not None and self.scale_loss:
            scaler.scale(loss).backward()
            self.dist.average_grads(average)
            if self.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            return
        loss.backward()
        self.dist.average_grads(average)
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            if self.dist.any(not bool(torch.isfinite(norm)))[0]:
                raise NonFiniteGradients("non-finite gradients")
        optimizer.step()


#: signature of the step function the discriminator update takes (see training.model)
StepFn = Callable[[torch.optim.Optimizer, object, object, torch.Tensor], None]
