"""The training step, run eagerly or replayed as one captured CUDA graph (`engine.cuda_graph`).

    step = EagerStep(module, optimizer, params, grad_clip, autocast)   # or CapturedStep(...)
    step(batch)               # forward, backward, clip, optimiser step, metric sums (on the device)
    step.sums                 # (3 + T,) [loss * n, correct, labelled, term_1 * n, ...], read once per log interval

Nothing in a step is read back to the host: the loss, the top-1 hits and every named loss term are
summed into one device tensor that the engine reads at log intervals and at the epoch's end (where it
also checks that the loss is finite).

CapturedStep records the whole step (the task's forward, teachers and every loss included: CRD's
negative sampling and memory update are device-only and of static shape; backward; gradient clipping;
the fused SGD step; the metric sums) as one CUDA graph after `WARMUP_STEPS` eager steps (cuDNN's
autotuning, lazily built state such as momentum buffers), then replays it: a step becomes a few copies
into the graph's input buffers and one launch. The learning rate lives in a device tensor that is
refilled from the scheduler's value before each replay, so the schedule stays a plain host function
and checkpoints keep plain numbers. Where capture fails, `auto` logs why and goes on eagerly; `true`
raises. The engine uses the fused SGD kernel on this path for every step, warm-up and resumed steps
included, so a resumed run performs the same arithmetic as an uninterrupted one.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import torch.nn as nn

from crossmodal.engine.logging import get_logger
from crossmodal.errors import ConfigError, CrossmodalError

log = get_logger()

WARMUP_STEPS = 3  # eager steps before capture


class CaptureFailed(CrossmodalError):
    """engine.cuda_graph true, but the step could not be captured."""


def cuda_graph_plan(setting, device: torch.device, distributed: bool, engine, optim, task) -> tuple[bool, str]:
    """(capture?, why) for `engine.cuda_graph` = "auto" | True | False; True that cannot apply is a ConfigError."""
    if setting is False:
        return False, "engine.cuda_graph is false"
    if setting not in ("auto", True):
        raise ConfigError(f"engine.cuda_graph must be auto, true or false, got {setting!r}")
    obstacles = []
    if device.type != "cuda":
        obstacles.append(f"the device is {device}, not CUDA")
    if distributed:
        obstacles.append("DDP runs eagerly")
    if engine.precision == "fp16":
        obstacles.append("fp16's GradScaler reads the host; use bf16")
    if engine.compile:
        obstacles.append("engine.compile is on (use one or the other)")
    if optim.name != "sgd":
        obstacles.append(f"optim.name {optim.name!r}: only SGD is captured")
    if not getattr(task, "capturable", False):
        obstacles.append(f"{type(task).__name__} has a loss that is not marked capturable")
    if obstacles:
        if setting is True:
            raise ConfigError(f"engine.cuda_graph true: {'; '.join(obstacles)}; set engine.cuda_graph to auto or false")
        return False, "auto: " + "; ".join(obstacles)
    return True, "engine.cuda_graph is true" if setting is True else "auto: CUDA, one process, SGD, capturable task"


class EagerStep:
    """One training step, launched op by op; see the module docstring."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, params: list, grad_clip,
                 autocast: Callable, scaler=None):
        self.module, self.optimizer, self.params = module, optimizer, params
        self.grad_clip, self.autocast, self.scaler = grad_clip, autocast, scaler
        self.sums: torch.Tensor | None = None  # allocated by the first step, once the term names are known
        self.term_names: list[str] = []

    def reset_sums(self) -> None:
        """Zero the metric sums in place (a captured graph keeps writing to the same tensor)."""
        if self.sums is not None:
            self.sums.zero_()

    def __call__(self, batch: dict) -> None:
        """Run one step on `batch` (on the device)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._body(batch)

    def _body(self, batch: dict) -> None:
        """Forward, backward, clip, optimiser step, metric sums: what CapturedStep records."""
        labels = batch["label"]
        with self.autocast():
            loss, terms, logits = self.module(batch)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        else:
            loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        n = labels.shape[0]
        mask = labels >= 0
        correct = ((logits.detach().argmax(1) == labels) & mask).sum()
        values = [loss.detach().float() * n, correct.float(), mask.sum().float()]
        values += [value.detach().float() * n for value in terms.values()]
        if self.sums is None:
            self.term_names = list(terms)
            self.sums = torch.zeros(len(values), device=loss.device)
        self.sums += torch.stack(values)


class CudaGraph:
    """torch.cuda.CUDAGraph behind the two calls CapturedStep needs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.graph = torch.cuda.CUDAGraph()

    def warmup(self, fn: Callable[[], None]) -> None:
        """Run `fn` eagerly on a side stream, as CUDA graph capture asks of warm-up iterations."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, fn: Callable[[], None]) -> None:
        """Record `fn` (its kernels do not run now)."""
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        """Launch the recorded kernels."""
        self.graph.replay()


class CapturedStep(EagerStep):
    """EagerStep recorded once as a graph and replayed; see the module docstring."""

    def __init__(self, module, optimizer, params, grad_clip, autocast, strict: bool = False,
                 graph_factory: Callable[[], object] | None = None):
        super().__init__(module, optimizer, params, grad_clip, autocast)
        self.strict = strict  # engine.cuda_graph true: a failed capture raises
        self.graph_factory = graph_factory
        self.graph = None  # set once captured
        self.backend = None  # the graph object (CudaGraph), made on first use
        self.failed = False
        self.calls = 0
        self.static: dict[str, torch.Tensor] = {}
        self.lr: torch.Tensor | None = None  # (groups,) the learning rates the graph reads

    def __call__(self, batch: dict) -> None:
        self.calls += 1
        if self.graph is not None and self._fits(batch):
            for key, value in batch.items():
                self.static[key].copy_(value)
            self._replay()
        elif self.failed or self.graph is not None or self.calls <= WARMUP_STEPS:
            if self.graph is None and not self.failed:
                self._backend().warmup(lambda: EagerStep.__call__(self, batch))
            else:
                EagerStep.__call__(self, batch)
        else:
            self._capture(batch)

    def _backend(self):
        if self.backend is None:
            device = next(iter(self.params)).device
            self.backend = self.graph_factory() if self.graph_factory is not None else CudaGraph(device)
        return self.backend

    def _fits(self, batch: dict) -> bool:
        """The batch has the captured keys, shapes and dtypes (a graph replays fixed shapes)."""
        return batch.keys() == self.static.keys() and all(
            v.shape == self.static[k].shape and v.dtype == self.static[k].dtype for k, v in batch.items())

    @contextmanager
    def _lr_tensors(self):
        """The optimiser's groups read their lr from self.lr (what the fused kernel is recorded with)."""
        groups = self.optimizer.param_groups
        plain = [group["lr"] for group in groups]
        for i, group in enumerate(groups):
            group["lr"] = self.lr[i]
        try:
            yield
        finally:
            for group, lr in zip(groups, plain):
                group["lr"] = lr

    def _replay(self) -> None:
        """Set this step's lr (the scheduler's float) in the graph's tensor, then launch the graph."""
        for i, group in enumerate(self.optimizer.param_groups):
            self.lr[i].fill_(group["lr"])  # a kernel argument, not a host-to-device copy
        with self._lr_tensors():
            self.graph.replay()

    def _capture(self, batch: dict) -> None:
        """Record the step on static copies of `batch`, then replay it for this batch."""
        graph = self._backend()
        self.static = {key: value.clone() for key, value in batch.items()}
        self.lr = torch.tensor([group["lr"] for group in self.optimizer.param_groups], dtype=torch.float32,
                               device=self.sums.device)
        try:
            with self._lr_tensors():  # the fused kernel is recorded reading the lr tensor
                # Setting the gradients to None is host-side only: the recorded backward then writes them afresh.
                graph.capture(lambda: EagerStep.__call__(self, self.static))
        except Exception as err:  # capture is an optimisation: a task that defeats it still trains
            self.failed = True
            self.static = {}
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if self.strict:
                raise CaptureFailed(f"engine.cuda_graph true: the step could not be captured ({first}); "
                                    "set engine.cuda_graph to auto or false") from err
            log.warning(f"engine.cuda_graph: the step could not be captured ({first}); running it eagerly")
        if self.failed:
            self.optimizer.zero_grad(set_to_none=True)
            EagerStep.__call__(self, batch)
            return
        self.graph = graph
        self._replay()


def autocast_factory(device: torch.device, precision: str, cache_enabled: bool = True) -> Callable:
    """A no-argument callable returning the step's autocast context (a capture needs cache_enabled=False)."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)
