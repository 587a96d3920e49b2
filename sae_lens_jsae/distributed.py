"""torch.distributed for JSAE training: data-parallel pairs and λ/layer sweeps spread over ranks.

`torchrun --nproc_per_node N -m sae_lens_jsae train CONFIG [--sweep ...]` sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous in the environment; `init_from_env` joins the process group
("nccl" on CUDA, "gloo" on CPU, or `RunOptions.dist_backend`). With WORLD_SIZE 1 (or no torchrun)
nothing here runs: the single-process path is untouched.

One activation stream for the whole job. Every rank reads the same token batches of P prompts
(cheap), runs the LLM on its own P/W of them (the expensive part) and all-gathers the
activations. So every rank holds the same mixing buffer, draws the same shuffle and serves the
same global batch of B tokens as a single-process run of the same config:
- data parallel (`train`): rank r trains on rows [r·B/W, (r+1)·B/W) of each batch, and DDP
  averages the gradients. Every loss term is a per-element mean over equal-size slices, so the
  mean of the W slice gradients is the gradient over all B tokens (TopK, the MLP and J are
  per token): the same weights as one process, to float rounding. Gradient clipping, Adam, the
  lr schedule, λ warm-up and the decoder renormalisation then see identical gradients and weights
  on every rank. Firing statistics (dead latents, both SAEs) are summed over ranks each step.
- sweep (`--sweep`): rank r trains the pairs values[r::W] on the full batch; no gradient traffic.
The gather moves B·d_in activations per step, small beside the gradient all-reduce of
4·d_sae·d_in weights (Pythia-410m, d_sae 65536, B 4096: 16 MB vs 1 GB in float32). Since all
ranks share rank 0's stream and store state, a checkpoint (written by rank 0) does not depend on
the world size: a run resumes under any world size that divides the batches.

Only rank 0 writes the JSON-lines log, W&B and checkpoints (in a sweep each rank writes its own
pairs); `jsae train` runs the other ranks in `progress_bars_disabled`, so one bar shows. A collective that fails (a rank died) or waits longer than
`dist_timeout_s` stops the run with `RankFailureError`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from torch import nn
from torch.distributed import nn as dist_nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from sae_lens_jsae import saelens_private
from sae_lens_jsae.sae import JacobianTrainingSAE
from sae_lens_jsae.training import (
    JacobianSAETrainer,
    JacobianSAETrainingRunner,
    RunOptions,
    check_sweep_keys,
    run_variants,
)


@dataclass
class CommTimes:
    """Seconds spent in collectives, summed over the run (this rank)."""

    gather_s: float = 0.0
    """All-gathering the LLM activations (blocking)."""
    gradient_s: float = 0.0
    """DDP's gradient all-reduce, launch to completion per bucket (overlaps the backward)."""
    stats_s: float = 0.0
    """Summing the firing statistics and logged losses."""
    products_s: float = 0.0
    """Gathering the penalty's weight products, and in backward summing their gradients
    (`shard_weight_products`)."""


@dataclass
class DistributedContext:
    """This process's place in a torchrun job."""

    rank: int
    """Global rank, 0..world_size-1; rank 0 writes logs and checkpoints."""
    world_size: int
    """Number of processes in the job (all nodes)."""
    local_rank: int
    """Rank on this node: the CUDA device index."""
    backend: str
    """"nccl" or "gloo"."""
    timeout_s: float = 600.0
    """How long a collective waits for the other ranks (`RunOptions.dist_timeout_s`)."""
    times: CommTimes = field(default_factory=CommTimes)
    """Communication time of this rank (for benchmarks and the log)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, values: list[Any]) -> list[Any]:
        """This rank's part of a sweep: values[rank::world_size]."""
        return values[self.rank :: self.world_size]


class RankFailureError(RuntimeError):
    """A collective failed or timed out: another rank died, hangs or is unreachable."""


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str, backend: str | None = None, timeout_s: float = 600.0) -> DistributedContext | None:
    """Join the torchrun process group; None when this is a single process (no torchrun, or N=1).

    `device` is the run's `cfg.device`: a CUDA run gets "nccl" and the device cuda:LOCAL_RANK,
    anything else "gloo". `timeout_s` bounds every collective: a rank that died or hangs makes
    the others stop with an error after at most that long (gloo notices a dead peer at once).
    """
    world_size = world_size_from_env()
    if world_size <= 1:
        return None
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: launch with torchrun (see README, multi-GPU).")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.device(device).type == "cuda"
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"dist_backend={backend!r}: use 'nccl' (CUDA), 'gloo' (CPU or CUDA) or None (automatic).")
    if backend == "nccl" and not cuda:
        raise ValueError(f"dist_backend='nccl' needs a CUDA device, but runner.device={device!r}; use gloo on CPU.")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistributedContext(rank, world_size, local_rank, backend, timeout_s)


@contextlib.contextmanager
def progress_bars_disabled(disable: bool = True) -> Iterator[None]:
    """Inside the block, SAELens' trainers make their progress bars with `disable=True` (the
    `jsae train` CLI wraps ranks other than 0 in it: one bar per job); both trainer modules'
    `tqdm` come back on exit. SAELens has no option for this and reads the `tqdm` name of its
    trainer modules when `fit` starts, so those names are swapped for the block's duration
    (a user's own bars, and anything outside the block, are untouched)."""
    if not disable:
        yield
        return
    from functools import partial

    from sae_lens.training import multi_sae_trainer, sae_trainer

    modules = (sae_trainer, multi_sae_trainer)
    saved = [module.tqdm for module in modules]  # type: ignore[attr-defined]
    for module, bar in zip(modules, saved):
        module.tqdm = partial(bar, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, bar in zip(modules, saved):
            module.tqdm = bar  # type: ignore[attr-defined]


def place_on_rank_device(cfg: Any, context: DistributedContext) -> None:
    """Under torchrun every CUDA device of the config becomes this rank's cuda:LOCAL_RANK."""
    local = f"cuda:{context.local_rank}"
    for name in ("device", "llm_device", "act_store_device"):
        value = getattr(cfg, name, None)
        if isinstance(value, str) and value.startswith("cuda"):
            setattr(cfg, name, local)
    if str(getattr(cfg.sae, "device", "cpu")).startswith("cuda"):
        cfg.sae.device = local


@contextlib.contextmanager
def fail_fast(context: DistributedContext) -> Iterator[None]:
    """Turn a failed or timed-out collective into a `RankFailureError` naming this rank."""
    try:
        yield
    except (dist.DistError, RuntimeError) as error:
        if isinstance(error, RankFailureError) or not _is_collective_failure(error):
            raise
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise RankFailureError(
            f"rank {context.rank} of {context.world_size}: a collective failed ({first}). Another rank died, "
            "hangs or is unreachable. This rank stops; resume every rank from the latest complete checkpoint "
            "with `--resume CHECKPOINT_ROOT`."
        ) from error


def _is_collective_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(s in text for s in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe"))


# ---- the shared activation stream -----------------------------------------------------------
def shard_llm_forward(store: Any, context: DistributedContext) -> None:
    """Make `store.get_activations` run the LLM on this rank's slice of each prompt batch and
    all-gather the slices: every rank gets the whole batch's activations, in order."""
    full = store.get_activations

    @torch.no_grad()
    def get_activations(batch_tokens: torch.Tensor) -> torch.Tensor:
        n = batch_tokens.shape[0]
        if n % context.world_size:
            raise ValueError(
                f"A prompt batch of {n} does not split over {context.world_size} ranks; set "
                f"runner.store_batch_size_prompts to a multiple of {context.world_size}."
            )
        part = n // context.world_size
        local = full(batch_tokens[context.rank * part : (context.rank + 1) * part]).contiguous()
        t0 = time.perf_counter()
        parts = [torch.empty_like(local) for _ in range(context.world_size)]
        dist.all_gather(parts, local)
        context.times.gather_s += time.perf_counter() - t0
        return torch.cat(parts)

    store.get_activations = get_activations


# ---- data parallel -------------------------------------------------------------------------
class _TrainingForward(nn.Module):
    """The pair's `training_forward_pass` as a module's forward, for DDP to wrap."""

    def __init__(self, sae: JacobianTrainingSAE):
        super().__init__()
        self.sae = sae

    def forward(self, step_input: TrainStepInput) -> TrainStepOutput:
        return type(self.sae).training_forward_pass(self.sae, step_input)


def _timed_allreduce(context, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
    """DDP's default all-reduce (divide by W, sum) of a `dist.GradBucket`, timed from launch
    to completion; returns its future."""
    t0 = time.perf_counter()

    def done(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        context.times.gradient_s += time.perf_counter() - t0
        return fut.value()

    return default_hooks.allreduce_hook(None, bucket).then(done)  # type: ignore[arg-type]


def shard_weight_products(sae: JacobianTrainingSAE, context: DistributedContext, group: Any) -> Any:
    """A `_weight_products` for data parallel that splits the penalty's weight products over ranks.

    The products (W_dec_in·W for each MLP input weight, and Bᵀ; each d_sae × d_mlp) do not
    shrink with a rank's batch slice, so unsharded every rank repeats them (at the offline default
    most of the per-step work that does not scale with ranks). Sharding trades that for moving
    the products and their gradients between ranks: on gloo/CPU that cost more than it saved
    (docs/performance.md), hence opt-in (`RunOptions.dist_shard_weight_products`). Rank r computes
    rows [r·d_sae/W, (r+1)·d_sae/W) and `torch.distributed.nn.all_gather` (differentiable) hands
    every rank the whole products; its backward sums each shard's gradient over ranks (J's
    gradient from every rank's tokens) back to the owner, which alone backpropagates it into its
    rows of W_dec_in and W_enc_out. DDP then averages every gradient over the W ranks, which
    turns that sum into the mean over ranks: the same gradient as unsharded, to float rounding.
    """
    W, r = context.world_size, context.rank
    rows = slice(r * sae.cfg.d_sae // W, (r + 1) * sae.cfg.d_sae // W)

    def weight_products(mlp: Any, dtype: torch.dtype | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        local = torch.stack(sae.weight_product_rows(mlp, rows, dtype))  # (terms + 1, d_sae/W, d_mlp)
        t0 = time.perf_counter()
        full = torch.cat(dist_nn.all_gather(local, group=group), dim=1)  # (terms + 1, d_sae, d_mlp)
        context.times.products_s += time.perf_counter() - t0
        if full.requires_grad:  # time the backward's exchange: from full's gradient to local's
            started: list[float] = []
            full.register_hook(lambda grad: started.append(time.perf_counter()))
            local.register_hook(lambda grad: setattr(context.times, "products_s", context.times.products_s + time.perf_counter() - started[-1]))
        return list(full[:-1].unbind(0)), full[-1].T

    return weight_products


class DataParallelTrainer(JacobianSAETrainer):
    """`JacobianSAETrainer` on rank r's slice of each global batch, gradients averaged by DDP.

    `step` still receives the global batch (so sample counts, checkpoints and λ/lr schedules
    read as in one process); `_train_step` takes the slice and runs the forward through DDP.
    """

    def __init__(self, *args: Any, context: DistributedContext, shard_products: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.context = context
        device_ids = [context.local_rank] if self.sae.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_TrainingForward(self.sae), device_ids=device_ids, broadcast_buffers=False)
        self.ddp.register_comm_hook(context, _timed_allreduce)
        self.weight_products = None
        if shard_products:
            if self.sae.cfg.d_sae % context.world_size:
                raise ValueError(f"dist_shard_weight_products: d_sae={self.sae.cfg.d_sae} does not split over {context.world_size} ranks.")
            # its own group: the exchange runs inside the backward, beside DDP's all-reduces
            group = dist.new_group(backend=context.backend, timeout=timedelta(seconds=context.timeout_s))
            self.weight_products = shard_weight_products(self.sae, context, group)

    def _train_step(self, sae: JacobianTrainingSAE, sae_in: torch.Tensor) -> TrainStepOutput:  # type: ignore[override]
        W, r = self.context.world_size, self.context.rank
        if sae_in.shape[0] % W:
            raise ValueError(
                f"A batch of {sae_in.shape[0]} tokens does not split over {W} ranks; "
                f"set runner.train_batch_size_tokens to a multiple of {W}."
            )
        n = sae_in.shape[0] // W
        freq_before = self.act_freq_scores.clone()
        sae.training_forward_pass = lambda step_input: self.ddp(step_input)  # type: ignore[method-assign]
        if self.weight_products is not None:
            sae._weight_products = self.weight_products  # type: ignore[method-assign]
        try:
            output = saelens_private.train_step(self, sae, sae_in[r * n : (r + 1) * n])
        finally:
            del sae.training_forward_pass
            sae.__dict__.pop("_weight_products", None)
        self._sum_firing_over_ranks(freq_before)
        return output

    @torch.no_grad()
    def _sum_firing_over_ranks(self, freq_before: torch.Tensor) -> None:
        """Make this step's firing statistics those of the global batch (SAELens updated them
        from this rank's slice): counts summed, 'fired' if it fired on any rank."""
        t0 = time.perf_counter()
        fired_in = (self.n_forward_passes_since_fired == 0).float()  # 0 exactly where it fired here
        pair = self.output_steps_since_fired is not None  # a transcoder has no output SAE
        output_fired = self.sae.last_output_fired.float() if pair else torch.zeros_like(fired_in)
        stats = torch.stack([self.act_freq_scores - freq_before, fired_in, output_fired])
        dist.all_reduce(stats)
        self.act_freq_scores = freq_before + stats[0]
        self.n_forward_passes_since_fired.masked_fill_(stats[1] > 0, 0)
        if pair:
            self.sae.last_output_fired = stats[2] > 0
        self.context.times.stats_s += time.perf_counter() - t0

    @torch.no_grad()
    def _write_log(self, output: TrainStepOutput) -> None:
        """Rank 0 logs the losses averaged over ranks (other metrics: rank 0's slice)."""
        t0 = time.perf_counter()
        names = list(output.losses)
        values = torch.stack([output.loss.detach().float(), *(output.losses[k].detach().float().reshape(()) for k in names)])
        dist.all_reduce(values)
        values /= self.context.world_size
        self.context.times.stats_s += time.perf_counter() - t0
        self._averaged = replace(output, loss=values[0], losses=dict(zip(names, values[1:])))
        if self.context.is_main:
            super()._write_log(self._averaged)

    # W&B and the bar's loss (rank 0) show the losses `_write_log` averaged on the same step
    def _log_train_step(self, step_output: TrainStepOutput) -> None:
        super()._log_train_step(self.__dict__.get("_averaged", step_output))

    def _update_pbar(self, step_output: TrainStepOutput, pbar: Any, update_interval: int = 100) -> None:
        super()._update_pbar(self.__dict__.get("_averaged", step_output), pbar, update_interval)

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        if self.context.is_main:  # every rank's state is rank 0's
            super().save_checkpoint(*args, **kwargs)


class DistributedTrainingRunner(JacobianSAETrainingRunner):
    """`JacobianSAETrainingRunner` for one rank of a torchrun job: the LLM forward sharded over
    ranks (`shard_llm_forward`), a `DataParallelTrainer`, rank 0 writing. In-training evals are
    off (they would draw batches on one rank only); evaluate the saved pair with `jsae eval`."""

    def __init__(self, cfg: Any, options: RunOptions | None = None, *, context: DistributedContext, **overrides: Any):
        W = context.world_size
        sizes = ("store_batch_size_prompts", "train_batch_size_tokens")
        problems = [f"runner.{name}={getattr(cfg, name)}" for name in sizes if getattr(cfg, name) % W]
        if problems:
            raise ValueError(f"{' and '.join(problems)} must be multiples of the world size {W} (each rank takes an equal slice).")
        cfg = copy.copy(cfg)
        place_on_rank_device(cfg, context)
        if not context.is_main:
            cfg.logger = copy.copy(cfg.logger)
            cfg.logger.log_to_wandb = False
        self.context = context
        self.writes_outputs = context.is_main
        super().__init__(cfg, options, **overrides)
        self.evaluator = None
        shard_llm_forward(self.activations_store, context)

    def make_trainer(self, **kwargs: Any) -> DataParallelTrainer:
        return DataParallelTrainer(**kwargs, context=self.context, shard_products=self.options.dist_shard_weight_products)

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        # No save on SIGTERM: torchrun sends it when another rank failed, mid-step.
        with fail_fast(self.context):
            return trainer.fit()

    def save_checkpoint(self, checkpoint_path: Any) -> None:
        if self.context.is_main:
            super().save_checkpoint(checkpoint_path)

    def save_final_sae(self, *args: Any, **kwargs: Any) -> None:
        if self.writes_outputs:
            super().save_final_sae(*args, **kwargs)


def train_distributed(cfg: Any, options: RunOptions | None, context: DistributedContext, **overrides: Any) -> JacobianTrainingSAE:
    """Data-parallel `JacobianSAETrainingRunner(cfg, options).run()` on this rank."""
    with fail_fast(context):
        runner = DistributedTrainingRunner(cfg, options, context=context, **overrides)
        return runner.run()


def train_sweep_over_ranks(
    cfg: Any, key: str, values: list[Any], options: RunOptions | None, context: DistributedContext, **overrides: Any
) -> dict[str, JacobianTrainingSAE]:
    """`training.train_sweep` with the pairs spread over ranks; see `train_variants_over_ranks`."""
    return train_variants_over_ranks(cfg, [{key: value} for value in values], options, context, **overrides)


def train_variants_over_ranks(
    cfg: Any, variants: list[dict[str, Any]], options: RunOptions | None, context: DistributedContext, **overrides: Any
) -> dict[str, JacobianTrainingSAE]:
    """`training.train_variants` with the pairs spread over ranks (rank r: variants[r::W]), each
    trained on the full batch of the shared stream; each rank saves and logs its own pairs.
    Ranks without a pair (W > len(variants)) still run their share of the LLM."""
    check_sweep_keys(variants, cfg.sae)
    with fail_fast(context):
        runner = DistributedTrainingRunner(cfg, options, context=context, **overrides)
        runner.writes_outputs = True  # each rank owns its pairs' directories
        mine = context.share(variants)
        if mine:
            return run_variants(runner, mine)
        stream = runner.make_stream()
        total = runner.cfg.to_sae_trainer_config().total_training_samples
        for _ in range(math.ceil(total / runner.cfg.train_batch_size_tokens)):
            next(stream)
        return {}


def barrier_and_close(context: DistributedContext | None) -> None:
    """Wait for every rank (rank 0 may still be saving), then leave the process group."""
    if context is None or not dist.is_initialized():
        return
    with fail_fast(context):
        dist.barrier()
    dist.destroy_process_group()
