"""The training step as one CUDA graph (`train.cuda_graph: true`).

At batch 128 a ResNet-32 step is launch-bound: the teacher's forward, the student's forward and
backward, the losses and the optimizer are about a thousand small kernels, each costing more to
launch than to run. A graph captured once replays all of them with one launch. What it covers:
everything :class:`~taildistill.engine.step.TrainStep` does (autocast forwards, backward, SAM's
second pass, gradient clipping, the fused optimizer step). What stays eager: the batch's gather and
augmentation, because they draw host-side numbers per batch (mixup's lambda, cutmix's box, the
policies' choices); the batch is copied into static input buffers before each replay.

A graph replays kernels with the arguments they had at capture, so everything that changes from
step to step must be a device tensor the kernels read:

- the learning rate: a 0-d device tensor in every parameter group, filled by `set_lr`;
- the batch: static buffers, mixup's lambda a 0-d device buffer;
- what changes with the epoch in Python (deferred re-weighting switching on, a ramp): the method's
  `graph_key(epoch)`; a new key captures a new graph (and frees the old ones). The batch's layout
  (which keys, e.g. whether mixup fired) is part of the key too.

The first `WARMUP_STEPS` steps run eager, on the stream the graphs are later captured on, so that
lazily created state (momentum buffers, cuDNN's algorithm choice, cuBLAS workspaces, compiled
kernels) exists before capture; then the first step of each new graph runs eager under CUDA's sync
debug mode: a step that reads a device value on the host cannot be captured, and is found there
(after the warm-up, so that one-off work such as compilation is not taken for the step's). Where capture is
impossible (a CPU device, DDP, gradient accumulation, streamed inputs, a host read), the run
trains eager and says why in one line. A capture that fails anyway stops the run with the way
on (CUDA's state is not recoverable in that process).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Hashable

import torch

from ..errors import TrainingError
from ..methods import Batch
from .step import TrainStep

WARMUP_STEPS = 3  # as in torch's whole-network capture example: lazy state exists before capture


class CudaGraph:
    """Real CUDA graphs: eager steps and captures on one side stream, replays with one launch each."""

    SYNC = "synchronizing CUDA operation"  # what CUDA's sync debug mode warns

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device)

    def new(self):
        return torch.cuda.CUDAGraph()

    @contextmanager
    def eager(self, watch: bool):
        """An eager step on the capture stream (ordered after and before the default stream); with
        `watch`, under CUDA's sync debug mode: yields a list that holds, afterwards, the host syncs
        seen. (Found here, a sync costs nothing; found by a capture, it leaves CUDA's state unusable.)"""
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        syncs: list[str] = []
        try:
            with torch.cuda.stream(self.stream), warnings.catch_warnings():
                # AdamW says once that capturable=True is slower uncaptured: these steps are, on purpose
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                with self._watch(syncs) if watch else nullcontext():
                    yield syncs
        finally:
            current.wait_stream(self.stream)

    @contextmanager
    def _watch(self, syncs: list[str]):
        """CUDA's sync debug mode set to warn: the syncs it reports go into `syncs`, the step's other
        warnings on through the usual filters."""
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        for w in caught:
            if self.SYNC in str(w.message):
                syncs.append(str(w.message).splitlines()[0])
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def capture(self, graph):
        return torch.cuda.graph(graph, stream=self.stream)


class _Captured:
    """One graph with its static input buffers and the outputs its replay writes."""

    def __init__(self, graph, inputs: dict[str, torch.Tensor]):
        self.graph = graph
        self.inputs = inputs
        self.outputs = None

    def load(self, batch: Batch) -> None:
        for k, v in batch.items():
            if k == "mix_lam":  # a host number: fill_ passes it as a kernel argument, no copy, no sync
                self.inputs[k].fill_(float(v))
            else:
                self.inputs[k].copy_(v, non_blocking=True)


def batch_layout(batch: Batch) -> tuple:
    """What a graph's static inputs depend on: the batch's keys, shapes and dtypes."""
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


class GraphedStep:
    """`step(batch, epoch) -> (loss, terms, logits)` like :class:`TrainStep`, replayed from CUDA
    graphs. The first `WARMUP_STEPS` steps run eager, and so does the first step of every new
    graph (a new method key or batch layout): lazily created state exists before its capture, and
    a step that reads a device value on the host is found there, where it costs nothing (the run
    then trains eager, with a notice). The outputs are the graph's static tensors: the next step
    overwrites them (the trainer only accumulates them, in stream order). `backend` makes the
    graphs (a :class:`CudaGraph` by default; the tests pass a CPU stand-in with the same
    semantics). `notice` receives the one line that says why a run trains eager."""

    def __init__(self, step: TrainStep, backend=None, notice: Callable[[str], None] | None = None):
        self.step = step
        self.backend = backend if backend is not None else CudaGraph(step.device)
        self.notice = notice or (lambda line: None)
        self.graphs: dict[Hashable, _Captured] = {}  # batch layout -> graph, for the current method key
        self.ready: set[Hashable] = set()  # batch layouts run eager once under the current method key
        self.method_key: Hashable = None
        self.lrs: list[torch.Tensor] | None = None  # the device learning rates the graphs read
        self.eager_steps = 0
        self.captures = 0
        self.replays = 0
        self.eager_reason: str | None = None  # set when the step cannot be captured: every later step is eager
        step.autocast_cache = False  # autocast's weight-cast cache would hold tensors from outside the graph

    @property
    def calls(self) -> int:
        return self.step.calls

    def __call__(self, batch: Batch, epoch: int):
        if self.eager_reason is not None:
            return self.step(batch, epoch)
        method_key = self.step.method.graph_key(epoch)
        if method_key != self.method_key:  # the loss is a different function now: the old graphs go
            self.graphs.clear()
            self.ready.clear()
            self.method_key = method_key
        layout = batch_layout(batch)
        if self.eager_steps < WARMUP_STEPS or layout not in self.ready:
            return self._eager(batch, epoch, layout, watch=self.eager_steps >= WARMUP_STEPS)
        captured = self.graphs.get(layout)
        if captured is None:
            captured = self.graphs[layout] = self._capture(batch, epoch)
        captured.load(batch)
        captured.graph.replay()
        self.replays += 1
        self.step.calls += 1
        return captured.outputs

    def _eager(self, batch: Batch, epoch: int, layout: Hashable, watch: bool):
        """An eager step; `watch`ed, it is the one before its layout's capture (found sync-free, the
        layout is ready)."""
        self._device_lr()  # the optimizer's path the graph will take (tensor lr, capturable)
        self.eager_steps += 1
        with self.backend.eager(watch) as syncs:
            out = self.step(batch, epoch)
        if syncs:
            self._stay_eager(f"the step reads a device value on the host ({syncs[0]})")
        elif watch:
            self.ready.add(layout)
        return out

    def _stay_eager(self, reason: str) -> None:
        """From now on the plain eager step, with the optimizer and autocast as eager has them."""
        self.eager_reason = reason
        self.graphs.clear()
        self.step.autocast_cache = True
        for group in self.step.optimizer.param_groups:
            group["lr"] = float(group["lr"])
            if group.get("capturable"):
                group["capturable"] = False
        self.lrs = None
        self.notice(f"train.cuda_graph: {reason}; training on eager")

    def _device_lr(self) -> None:
        """Every parameter group's learning rate as a 0-d device tensor, made once, so that
        `set_lr` changes it in place between replays: float32 on CUDA (the fused kernels read it
        through a float pointer; eager, they take the Python double, so the two differ by float32
        rounding, relative 6e-8), float64 on the CPU (the emulated graphs of the tests, where the
        kernels take a double: there captured and eager are bit-identical). Tensors replaced since
        (a loaded optimizer state) are made again and every graph that read the old ones recaptured."""
        groups = self.step.optimizer.param_groups
        if self.lrs is not None and all(g["lr"] is t for g, t in zip(groups, self.lrs)):
            return
        self.graphs.clear()
        device = self.step.device
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.lrs = []
        for group in groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)
            self.lrs.append(group["lr"])
            if "capturable" in group:  # AdamW: its step counter lives on the device (fused) and is read there
                group["capturable"] = True

    def _capture(self, batch: Batch, epoch: int) -> _Captured:
        self._device_lr()
        inputs = {k: (torch.empty((), dtype=torch.float32, device=self.step.device) if k == "mix_lam"
                      else torch.empty_like(v)) for k, v in batch.items()}
        captured = _Captured(self.backend.new(), inputs)
        captured.load(batch)  # (a real capture runs nothing; the emulated one of the tests runs the step on them)
        calls = self.step.calls
        try:
            with self.backend.capture(captured.graph):
                captured.outputs = self.step(captured.inputs, epoch)
        except RuntimeError as exc:
            # (a host sync would have been found by the eager step before; this is an operation
            # CUDA graphs cannot hold) a failed capture leaves CUDA's stream and generator state
            # unusable in this process: stop, with the way on
            cause = exc.__context__ if exc.__context__ is not None else exc
            raise TrainingError(f"train.cuda_graph: capturing the training step failed ({str(cause).splitlines()[0]}); "
                                "resume from the last checkpoint without it: taildistill train --resume RUN_DIR "
                                "train.cuda_graph=false (a suite: run it without train.cuda_graph=true)") from exc
        finally:
            self.step.calls = calls  # capturing records the step; it does not take it
            # (the gradients were none before, and are after a good capture; a failed one may leave some)
            self.step.optimizer.zero_grad(set_to_none=True)
        self.captures += 1
        return captured

    def record(self) -> dict:
        """What the run's env.json notes about its graphs."""
        return {"captures": self.captures, "replays": self.replays, "eager_steps": self.eager_steps,
                **({"eager_reason": self.eager_reason} if self.eager_reason else {})}


def graph_blocker(step: TrainStep, streamed: bool, distributed: bool) -> str | None:
    """Why this run cannot capture its step (None: it can)."""
    if step.device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {step.device.type})"
    if distributed:
        return "DDP's gradient all-reduce is not captured here"
    if step.grad_accum > 1:
        return "train.grad_accum > 1 steps the optimizer on every k-th call only"
    if streamed:
        return "streamed inputs (list files) keep a loader thread busy with CUDA calls during capture"
    return None


__all__ = ["CudaGraph", "GraphedStep", "WARMUP_STEPS", "batch_layout", "graph_blocker"]
