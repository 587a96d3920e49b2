"""Training Jacobian SAE pairs on SAELens' runner, trainer and ActivationsStore.

`JacobianSAETrainingRunner` is SAELens' `LanguageModelSAETrainingRunner` with what a JSAE needs
added: the model loaded without weight processing from a named source, block L's MLP copied
into the pair, the seed applied, λ warm-up defaulted to 5% of steps, a JSON-lines log, exact
resume, and a NaN stop. `train_sweep` trains several pairs (e.g. a λ sweep) from one activation
stream, so the LLM forward is paid once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import wandb
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    logger,
)
from sae_lens.constants import SAE_CFG_FILENAME
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sae_lens_jsae import saelens_private
from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.sae import (
    JacobianTrainingSAE,
    JacobianTrainingSAEConfig,
    NonFiniteLossError,
    layer_of_input_hook,
)
from sae_lens_jsae.transcoder import TRANSCODER_CLASSES, TopKTrainingTranscoder, TopKTranscoderTrainingConfig
from sae_lens_jsae.util import is_pair, keep_freed_memory

STREAM_STATE_FILENAME = "jsae_stream_state.safetensors"
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run after a finished step (`stop_after_step_on_signal`)."""

    def __init__(self, n_training_samples: int, checkpoint: Path | None):
        self.n_training_samples = n_training_samples
        """Tokens trained on when it stopped."""
        self.checkpoint = checkpoint
        """The full checkpoint written then (resumable with `--resume`); None without a checkpoint_path."""
        saved = f"; checkpoint {checkpoint}" if checkpoint is not None else " (no checkpoint_path: nothing saved)"
        super().__init__(f"interrupted after {n_training_samples} tokens{saved}")


@contextlib.contextmanager
def stop_after_step_on_signal(trainer: JacobianSAETrainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask `trainer` to stop at the end of its current step, where it writes a full
    checkpoint (weights, optimizer, stream) and raises `TrainingInterrupted`; a second signal aborts
    at once, saving nothing. The previous handlers come back on exit.

    Why not SAELens' handler: it raises from inside the step and then saves only the runner's part
    of a checkpoint (store and config, no weights), which our marker would call complete.
    """
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted without saving")
        trainer.stop_requested = True
        logger.warning(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (send it again to abort without saving)")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
LOG_FILENAME = "train_log.jsonl"


@dataclass
class RunOptions:
    """What a Jacobian SAE run needs beyond SAELens' `LanguageModelSAERunnerConfig`."""

    model_source: str = "hub"
    """Where the model comes from: "hub" (TransformerLens from the HF Hub) or "gguf-smollm2" (offline)."""
    dataset: str | None = None
    """"sotu" (offline), a local `save_to_disk` path or a Hub dataset; None: the runner's `dataset_path`."""
    randomize_model: bool = False
    """Re-initialise the model's weights (TransformerLens' init) first: the paper's randomized-LLM control."""
    log_every_n_steps: int = 10
    """Steps between JSON-lines log records (and W&B logs when enabled)."""
    checkpoint_every_tokens: int | None = None
    """Save a checkpoint every this many training tokens (None: SAELens' `n_checkpoints`)."""
    log_path: str | None = None
    """JSON-lines log file; None: `<output_path>/train_log.jsonl` (or `./train_log.jsonl`)."""
    keep_freed_memory: bool | None = None
    """On CPU, let glibc reuse freed large blocks instead of page-faulting them in every step
    (`util.keep_freed_memory`: process-wide and permanent, so opt-in). None: off from Python,
    on in the `jsae` CLI; docs/performance.md has the measured gain."""
    dist_backend: str | None = None
    """Under torchrun: torch.distributed backend; None picks "nccl" on CUDA, "gloo" on CPU."""
    dist_timeout_s: float = 600.0
    """Under torchrun: seconds a collective waits for the other ranks before the run stops with
    an error (a dead or stuck rank); must exceed the longest checkpoint save."""
    dist_shard_weight_products: bool = False
    """Under torchrun, data parallel: split the penalty's weight products over ranks
    (`distributed.shard_weight_products`). Off by default: with gloo on CPU the exchange cost
    more than it saved (benchmarks/bench.py section 7, docs/performance.md); with NCCL not measured."""


def _tune_process(cfg: LanguageModelSAERunnerConfig[Any], options: RunOptions) -> None:
    if options.keep_freed_memory and torch.device(cfg.device).type == "cpu":
        keep_freed_memory()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (SAELens' runner does not apply `cfg.seed`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_run_config(cfg: LanguageModelSAERunnerConfig[Any]) -> int:
    """Fail before any work on a config that cannot train a JSAE pair or a transcoder at one MLP;
    returns the MLP's block index."""
    if not isinstance(cfg.sae, (JacobianTrainingSAEConfig, TopKTranscoderTrainingConfig)):
        raise TypeError(f"cfg.sae must be a JacobianTrainingSAEConfig or TopKTranscoderTrainingConfig, got {type(cfg.sae).__name__}.")
    layer = layer_of_input_hook(cfg.hook_name)
    if isinstance(cfg.sae, JacobianTrainingSAEConfig):
        cfg.sae.output_hook_name = cfg.sae.resolved_output_hook_name(cfg.hook_name)
    if cfg.hook_head_index is not None:
        raise ValueError("hook_head_index must be None: the MLP input is not split by head.")
    return layer


class ResumableActivationStream:
    """Shuffled training batches from an ActivationsStore, with a state that can be checkpointed.

    SAELens' `mixing_buffer` is a generator whose buffer cannot be saved, so a resumed run would
    see other batches than an uninterrupted one. This keeps the same scheme (fill a buffer of
    LLM batches, shuffle, serve all but a `mix_fraction` kept for mixing) in an object whose
    buffer, queue and RNG go into each checkpoint.
    """

    def __init__(self, store: ActivationsStore, batch_size: int, buffer_tokens: int, mix_fraction: float, seed: int):
        self.store, self.batch_size = store, batch_size
        self.buffer_tokens = max(buffer_tokens, batch_size)
        self.mix_fraction = mix_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: torch.Tensor | None = None
        self.queue: torch.Tensor | None = None
        self._llm_batches = saelens_private.iterate_filtered_activations(store)  # handles epochs and special tokens

    def __iter__(self) -> ResumableActivationStream:
        return self

    def __next__(self) -> torch.Tensor:
        while self.queue is None or self.queue.shape[0] < self.batch_size:
            self._refill()
        batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
        return batch

    def _refill(self) -> None:
        while self.buffer is None or self.buffer.shape[0] < self.buffer_tokens:
            new = next(self._llm_batches)
            self.buffer = new if self.buffer is None else torch.cat([self.buffer, new])
        if self.mix_fraction > 0:
            self.buffer = self.buffer[torch.randperm(self.buffer.shape[0], generator=self.generator).to(self.buffer.device)]
        keep = int(self.buffer_tokens * self.mix_fraction)
        n_serve = max(1, (self.buffer.shape[0] - keep) // self.batch_size) * self.batch_size
        served, self.buffer = self.buffer[:n_serve], self.buffer[n_serve:]
        self.queue = served if self.queue is None else torch.cat([self.queue, served])

    def save(self, checkpoint_dir: Path) -> None:
        state = {"rng_state": self.generator.get_state()}
        for name in ("buffer", "queue"):
            value = getattr(self, name)
            if value is not None:
                state[name] = value.contiguous().cpu()
        save_file(state, str(checkpoint_dir / STREAM_STATE_FILENAME))

    def load(self, checkpoint_dir: Path) -> None:
        state = load_file(str(checkpoint_dir / STREAM_STATE_FILENAME))
        self.generator.set_state(state["rng_state"])
        device = self.store.device
        self.buffer = state["buffer"].to(device) if "buffer" in state else None
        self.queue = state["queue"].to(device) if "queue" in state else None


class JacobianSAETrainer(SAETrainer[JacobianTrainingSAE, JacobianTrainingSAEConfig]):
    """SAELens' `SAETrainer` plus a JSON-lines log, a tokens/s bar, output-SAE dead latents,
    checkpoints every N tokens, and a NaN stop that keeps the last good checkpoint."""

    def __init__(self, *args: Any, log_path: Path, log_every_n_steps: int = 10, checkpoint_every_tokens: int | None = None, name: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log_path, self.log_every_n_steps, self.name = Path(log_path), max(1, log_every_n_steps), name
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if checkpoint_every_tokens:
            self.checkpoint_thresholds = list(range(checkpoint_every_tokens, self.cfg.total_training_samples, checkpoint_every_tokens))
        # dead latents of a pair's output SAE (SAELens counts the input SAE's, or a transcoder's)
        self.output_steps_since_fired = torch.zeros(self.sae.cfg.d_sae, device=self.cfg.device) if is_pair(self.sae) else None
        self._t0, self._samples0 = time.perf_counter(), 0
        self.stop_requested = False  # set by stop_after_step_on_signal

    def _checkpoint_if_needed(self) -> None:
        # SAELens calls this after each step (before counting it), the point where scheduled
        # checkpoints are saved and resume exactly: a stop request saves one there too.
        saelens_private.checkpoint_if_needed(self)
        if self.stop_requested:
            checkpoint = None
            if self.cfg.checkpoint_path is not None:
                self.save_checkpoint(checkpoint_name=str(self.n_training_samples))
                checkpoint = Path(self.cfg.checkpoint_path) / str(self.n_training_samples)
            raise TrainingInterrupted(self.n_training_samples, checkpoint)

    def _is_logging_step(self) -> bool:
        return (self.n_training_steps + 1) % self.log_every_n_steps == 0

    def _log_train_step(self, step_output: TrainStepOutput) -> None:
        if self.cfg.logger.log_to_wandb:
            saelens_private.log_train_step(self, step_output)

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        # a run's first batch (n_training_samples, not n_training_steps: SAELens checkpoints the
        # step count before advancing it); the global batch, so every torchrun rank sets the same
        if self.n_training_samples == 0 and hasattr(self.sae, "initialize_from_first_batch"):
            self.sae.initialize_from_first_batch(self.activation_scaler(batch.to(self.sae.device)))
        try:
            output = super().step(batch)
        except NonFiniteLossError:
            self.n_training_samples -= batch.shape[0]  # this step did not happen
            if self.cfg.checkpoint_path is not None:
                self.save_checkpoint(checkpoint_name=f"last_good_{self.n_training_samples}")
                logger.error(f"non-finite loss: saved the last good state under {self.cfg.checkpoint_path}")
            raise
        if self.output_steps_since_fired is not None:
            self.output_steps_since_fired += 1
            self.output_steps_since_fired[self.sae.last_output_fired] = 0
        if self._is_logging_step():
            self._write_log(output)
        return output

    @torch.no_grad()
    def _write_log(self, output: TrainStepOutput) -> None:
        record = self.build_train_step_log_dict(output, self.n_training_samples)
        if self.output_steps_since_fired is not None:
            record["sparsity/output_dead_features"] = int((self.output_steps_since_fired > self.cfg.dead_feature_window).sum())
        record["details/n_training_steps"] = self.n_training_steps + 1
        record["details/tokens_per_second"] = self._tokens_per_second()
        if self.name is not None:
            record["details/name"] = self.name
        with self.log_path.open("a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if isinstance(v, (int, float, str))}) + "\n")

    def _tokens_per_second(self) -> float:
        return (self.n_training_samples - self._samples0) / max(time.perf_counter() - self._t0, 1e-9)

    def _update_pbar(self, step_output: TrainStepOutput, pbar: tqdm, update_interval: int = 100) -> None:  # type: ignore[override]
        pbar.update(self.cfg.train_batch_size_samples)
        if self.n_training_steps % self.log_every_n_steps == 0:
            pbar.set_postfix(loss=f"{step_output.loss.item():.4g}", tok_s=f"{self._tokens_per_second():.0f}")

    def save_trainer_state(self, checkpoint_path: Path) -> None:
        super().save_trainer_state(checkpoint_path)
        if self.output_steps_since_fired is not None:
            save_file({"output_steps_since_fired": self.output_steps_since_fired.cpu()}, str(checkpoint_path / "jsae_trainer_state.safetensors"))

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        if self.output_steps_since_fired is not None:
            state = load_file(str(Path(checkpoint_path) / "jsae_trainer_state.safetensors"))
            self.output_steps_since_fired = state["output_steps_since_fired"].to(self.cfg.device)
        self._samples0 = self.n_training_samples


class JacobianSAETrainingRunner(LanguageModelSAETrainingRunner):
    """Train a Jacobian SAE pair from a `LanguageModelSAERunnerConfig` whose `sae` is a
    `JacobianTrainingSAEConfig` (hook: `blocks.L.ln2.hook_normalized`)."""

    sae: JacobianTrainingSAE

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig],
        options: RunOptions | None = None,
        override_dataset: Any = None,
        override_model: Any = None,
        override_sae: TrainingSAE[Any] | None = None,
    ):
        self.options = options or RunOptions()
        layer = check_run_config(cfg)
        seed_everything(cfg.seed)
        if isinstance(cfg.sae, JacobianTrainingSAEConfig) and cfg.sae.jacobian_warm_up_steps is None:
            cfg.sae.jacobian_warm_up_steps = round(0.05 * cfg.total_training_steps)
        if override_model is None:
            from sae_lens_jsae.sources import check_layer

            check_layer(self.options.model_source, cfg.model_name, layer)  # before the weights load
        model = override_model if override_model is not None else self._load_model(cfg)
        if self.options.randomize_model and override_model is not None:
            from sae_lens_jsae.sources import randomize_weights

            randomize_weights(model, cfg.seed)
        check_widths(cfg.sae, model.cfg.d_model, cfg.model_name)
        mlp = FrozenMLP.from_hooked_transformer(model, layer)  # raises for MLPs we cannot wrap
        if override_dataset is None and self.options.dataset is not None:
            from sae_lens_jsae.sources import load_token_dataset

            # the offline default's speeches in a seeded random row order (`load_token_dataset`)
            shuffle_seed = cfg.seed if self.options.dataset == "sotu" else None
            override_dataset = load_token_dataset(self.options.dataset, model.tokenizer, cfg.context_size, shuffle_seed=shuffle_seed)
        seed_everything(cfg.seed)  # the SAE's initialisation must not depend on what loading consumed
        rows = len(override_dataset) if hasattr(override_dataset, "__len__") else None
        self._known_false = dict(cfg=cfg, dataset_rows=rows, model_loaded_here=override_model is None)
        with self.known_false_warnings():
            super().__init__(cfg, override_dataset=override_dataset, override_model=model, override_sae=override_sae)
        if self.sae.mlp is None:
            self.sae.attach_mlp(mlp)
        elif not torch.equal(self.sae.mlp.W_out.cpu(), mlp.W_out.to(self.sae.mlp.W_out.dtype).cpu()):
            raise ValueError(f"The SAE's frozen MLP is not block {layer}'s MLP of {cfg.model_name}.")

    def known_false_warnings(self) -> Any:
        """The scope in which this run's known-false SAELens warnings are silenced (log_noise.py)."""
        from sae_lens_jsae.log_noise import known_false_warnings

        return known_false_warnings(**self._known_false)

    def _set_sae_metadata(self) -> None:
        saelens_private.set_sae_metadata(self)
        if isinstance(self.sae, TopKTrainingTranscoder):  # where SAELens' HookedSAETransformer splices its output
            self.sae.cfg.metadata.hook_name_out = transcoder_output_hook(self.cfg.hook_name)

    def _load_model(self, cfg: LanguageModelSAERunnerConfig[Any]) -> Any:
        from sae_lens_jsae.sources import load_hooked_model

        return load_hooked_model(
            self.options.model_source,
            cfg.model_name,
            device=cfg.llm_device or cfg.device,
            randomize=self.options.randomize_model,
            seed=cfg.seed,
        )

    def log_path(self) -> Path:
        if self.options.log_path is not None:
            return Path(self.options.log_path)
        return Path(self.cfg.output_path or ".") / LOG_FILENAME

    def make_stream(self) -> ResumableActivationStream:
        return ResumableActivationStream(
            self.activations_store,
            batch_size=self.cfg.train_batch_size_tokens,
            buffer_tokens=self.cfg.n_batches_in_buffer * self.cfg.context_size,
            mix_fraction=self.cfg.activations_mixing_fraction,
            seed=self.cfg.seed,
        )

    def make_trainer(self, **kwargs: Any) -> JacobianSAETrainer:
        """The trainer `run` drives (a seam: `distributed.DistributedTrainingRunner` wraps it in DDP)."""
        return JacobianSAETrainer(**kwargs)

    def run(self) -> JacobianTrainingSAE:  # type: ignore[override]
        """Train; on `resume_from_checkpoint`, continue exactly where that checkpoint stopped."""
        with self.known_false_warnings():
            return self._run()

    def _run(self) -> JacobianTrainingSAE:
        self._set_sae_metadata()
        _tune_process(self.cfg, self.options)
        if self.cfg.logger.log_to_wandb:
            wandb.init(project=self.cfg.logger.wandb_project, entity=self.cfg.logger.wandb_entity, config=self.cfg.to_dict(), name=self.cfg.logger.run_name, id=self.cfg.logger.wandb_id)
        self.stream = self.make_stream()
        trainer = self.make_trainer(
            cfg=self.cfg.to_sae_trainer_config(),
            sae=self.sae,
            data_provider=self.stream,
            evaluator=self.evaluator,
            save_checkpoint_fn=self.save_checkpoint,
            log_path=self.log_path(),
            log_every_n_steps=self.options.log_every_n_steps,
            checkpoint_every_tokens=self.options.checkpoint_every_tokens,
        )
        if self.cfg.resume_from_checkpoint is not None:
            self.load_checkpoint(trainer, Path(self.cfg.resume_from_checkpoint))
        sae = self.run_trainer_with_interruption_handling(trainer)
        if self.cfg.output_path is not None:
            self.save_final_sae(sae=sae, output_path=self.cfg.output_path, log_feature_sparsity=trainer.log_feature_sparsity)
        if self.cfg.logger.log_to_wandb:
            wandb.finish()
        return sae  # type: ignore[return-value]

    def run_trainer_with_interruption_handling(self, trainer: JacobianSAETrainer) -> JacobianTrainingSAE:  # type: ignore[override]
        with stop_after_step_on_signal(trainer):
            return trainer.fit()

    def load_checkpoint(self, trainer: JacobianSAETrainer, path: Path) -> None:
        """Continue from `path`: a complete checkpoint of this run, or a checkpoint root (the
        most advanced checkpoint under it of a run like this one, see `resume_point`)."""
        path = resume_point(path, {"": self.sae})
        logger.info(f"Resuming from checkpoint: {path}")
        trainer.load_trainer_state(path)
        self.sae.load_weights_from_checkpoint(path)
        self.activations_store.load_from_checkpoint(path)
        self.stream.load(path)
        # thresholds already passed were saved before the kill
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]

    def load_sweep_checkpoint(self, multi: MultiSAETrainer, path: Path) -> None:
        """`load_checkpoint` for a sweep's `MultiSAETrainer` (one subdirectory per member)."""
        path = resume_point(path, multi.saes)
        logger.info(f"Resuming the sweep from checkpoint: {path}")
        multi.load_checkpoint(path)
        self.activations_store.load_from_checkpoint(path)
        self.stream.load(path)
        multi.checkpoint_thresholds = [t for t in multi.checkpoint_thresholds if t >= multi.n_training_samples]

    def save_final_sae(self, sae: Any, output_path: str, log_feature_sparsity: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """SAELens' final save (SAE weights only, cfg with `mlp_sha256`), plus a local
        `mlp.safetensors` so the output loads without the model (`jsae push` leaves it out)."""
        super().save_final_sae(sae=sae, output_path=output_path, log_feature_sparsity=log_feature_sparsity)
        if is_pair(sae):  # a transcoder does not need its MLP to run
            sae.save_mlp(output_path)

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        super().save_checkpoint(checkpoint_path)
        if checkpoint_path is not None:
            self.stream.save(checkpoint_path)
            (checkpoint_path / COMPLETE_MARKER).touch()  # written last: a killed save is never resumed


class _SweepTrainer(MultiSAETrainer):
    """SAELens' MultiSAETrainer with a bar that moves every step (tokens/s, each pair's loss)."""

    def _update_pbar(self, step_outputs: dict[str, TrainStepOutput], pbar: tqdm, update_interval: int = 100) -> None:  # type: ignore[override]
        pbar.update(self.cfg.train_batch_size_samples)
        first = next(iter(self.trainers.values()))
        if self.n_training_steps % first.log_every_n_steps == 0:  # type: ignore[attr-defined]
            losses = {name: f"{out.loss.item():.4g}" for name, out in step_outputs.items()}
            pbar.set_postfix(tok_s=f"{first._tokens_per_second():.0f}", **losses)  # type: ignore[attr-defined]


def sweep_name(key: str, value: Any) -> str:
    """Directory name of one sweep member: `jacobian_coefficient=0.5`, `...=auto` for None."""
    return f"{key}={'auto' if value is None else value}"


def variant_name(overrides: dict[str, Any]) -> str:
    """Directory name of a pair trained with SAE-config `overrides`: `key=value` joined by commas."""
    return ",".join(sweep_name(key, value) for key, value in overrides.items())


def sweep_grid(specs: list[str]) -> list[dict[str, Any]]:
    """SAE-config overrides of a sweep given as specs `KEY=V1,V2[;KEY2=W1,W2]` (values in YAML).

    One spec is the grid (Cartesian product) of its keys; several specs are the union of their
    grids in order, duplicates dropped. E.g. `["jacobian_coefficient=0,1",
    "jacobian_coefficient=1;mlp_reconstruction_coefficient=1"]` gives three pairs.
    """
    import itertools

    import yaml

    variants: list[dict[str, Any]] = []
    for spec in specs:
        axes: dict[str, list[Any]] = {}
        for part in spec.split(";"):
            key, sep, raw = part.strip().partition("=")
            values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
            if not sep or not key or not values:
                raise ValueError(f"--sweep expects KEY=V1,V2,... (several keys joined by ';'); got {part!r} in {spec!r}.")
            axes[key.strip().removeprefix("sae.")] = values
        for combo in itertools.product(*axes.values()):
            variant = dict(zip(axes, combo))
            if variant not in variants:
                variants.append(variant)
    return variants


def latest_checkpoint(checkpoint_root: str | Path) -> Path | None:
    """The most advanced complete checkpoint under a checkpoint directory (None if none), of
    whichever run; `resume_point` picks among those of one run's shape.

    SAELens names checkpoints by their training-sample count (`4096`, `final_8192`, ...), under
    `<checkpoint_path>/<run id>/`; ties go to the most recently written.
    """
    return max(_complete_checkpoints(Path(checkpoint_root)), key=_recency, default=None)


def _complete_checkpoints(root: Path) -> list[Path]:
    return [p.parent for p in root.glob(f"**/{COMPLETE_MARKER}")]


def _samples_of(checkpoint: Path) -> int:
    digits = checkpoint.name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def _recency(checkpoint: Path) -> tuple[int, float]:
    return _samples_of(checkpoint), (checkpoint / COMPLETE_MARKER).stat().st_mtime


# cfg.json fields a resumed run may change: where it runs and how the penalty is computed, not what is trained
_RESUMABLE_CHANGES = frozenset({"metadata", "device", "jacobian_chunk_bytes", "jacobian_dtype"})


def checkpoint_mismatch(checkpoint: Path, saes: dict[str, Any]) -> str | None:
    """Why `checkpoint` cannot continue a run training `saes` (member name -> SAE; `{"": sae}`
    for a single run), or None if it can: a single run's checkpoint has its `cfg.json` at the top,
    a sweep's one subdirectory per member, and each SAE config must equal the run's (but for
    `_RESUMABLE_CHANGES`): another λ, k, width, architecture or MLP (`mlp_sha256`) is another run."""
    members = sorted(p.parent.name for p in checkpoint.glob(f"*/{SAE_CFG_FILENAME}"))
    if "" in saes:
        if not (checkpoint / SAE_CFG_FILENAME).is_file():
            return f"a sweep's checkpoint (members {', '.join(members)}), this run is a single SAE" if members else f"no {SAE_CFG_FILENAME}"
    elif (checkpoint / SAE_CFG_FILENAME).is_file():
        return f"a single SAE's checkpoint, this run is a sweep of {', '.join(saes)}"
    elif members != sorted(saes):
        return f"a sweep of {', '.join(members) or 'nothing'}, this run is a sweep of {', '.join(saes)}"
    for name, sae in saes.items():
        saved = json.loads((checkpoint / name / SAE_CFG_FILENAME).read_text())
        now = json.loads(json.dumps(sae.cfg.to_dict(), default=str))
        differ = sorted(k for k in (saved.keys() | now.keys()) - _RESUMABLE_CHANGES if saved.get(k) != now.get(k))
        if differ:
            return (f"{name}: " if name else "") + ", ".join(f"{k}={saved.get(k)!r} (this run: {now.get(k)!r})" for k in differ[:4])
    return None


def resume_point(path: str | Path, saes: dict[str, Any]) -> Path:
    """The checkpoint a run training `saes` (see `checkpoint_mismatch`) continues from, given
    `--resume PATH`: PATH itself if it is a complete checkpoint (an error saying why if it is
    another run's), else the most advanced complete checkpoint under PATH of a run like this one.

    A checkpoint root holds every run that used it (`<root>/<run id>/<n_tokens>/`, a resumed run
    under a new id): the latest of this run's shape is the one to continue, not another run's
    (a sweep's, a transcoder's, other sizes), which lacks this run's files or shapes."""
    path = Path(path)
    if (path / COMPLETE_MARKER).exists():
        why = checkpoint_mismatch(path, saes)
        if why is not None:
            raise ValueError(f"cannot resume from {path}: it is another run's checkpoint ({why}).")
        return path
    found = _complete_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER}) and holds none.")
    why = {checkpoint: checkpoint_mismatch(checkpoint, saes) for checkpoint in found}
    fitting = [checkpoint for checkpoint, reason in why.items() if reason is None]
    if not fitting:
        latest = {}  # per run: its most advanced checkpoint
        for checkpoint in sorted(found, key=_recency):
            latest[checkpoint.parent] = checkpoint
        listed = "; ".join(f"{c.relative_to(path)}: {why[c]}" for c in latest.values())
        raise ValueError(f"--resume {path}: none of its {len(found)} complete checkpoints is of this run ({listed}); "
                         "resume with the config and options they were trained with, or pass a checkpoint directory.")
    return max(fitting, key=_recency)


def train_sweep(
    cfg: LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig],
    key: str,
    values: list[Any],
    options: RunOptions | None = None,
    override_dataset: Any = None,
    override_model: Any = None,
) -> dict[str, JacobianTrainingSAE]:
    """Train one JSAE per value of the SAE config field `key` (e.g. `jacobian_coefficient`,
    0 being the plain-pair baseline) from ONE activation stream: the LLM runs once per batch.

    All pairs start from the same initialisation (same seed). Each is saved under
    `<output_path>/<key>=<value>/` (`=auto` for None, i.e. λ from the rule of thumb) and logs
    to `train_log.jsonl` there.
    """
    return train_variants(cfg, [{key: value} for value in values], options, override_dataset, override_model)


def train_variants(
    cfg: LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig],
    variants: list[dict[str, Any]],
    options: RunOptions | None = None,
    override_dataset: Any = None,
    override_model: Any = None,
) -> dict[str, JacobianTrainingSAE]:
    """Train one JSAE per dict of SAE-config overrides from ONE activation stream (a sweep over
    one or several fields, e.g. from `sweep_grid`). Each pair is saved under
    `<output_path>/<variant_name(overrides)>/`; see `train_sweep`.
    """
    check_sweep_keys(variants, cfg.sae)
    runner = JacobianSAETrainingRunner(cfg, options, override_dataset=override_dataset, override_model=override_model)
    return run_variants(runner, variants)


def check_sweep_keys(variants: list[dict[str, Any]], base: Any = None) -> None:
    """Raise before any work when a swept key is not a field of its member's config (a pair's
    `JacobianTrainingSAEConfig`, or a transcoder's when the member sets `architecture`)."""
    for variant in variants:
        variant_sae_config(base, variant, validate_only=True)


SAE_ARCHITECTURES = ("jacobian", *TRANSCODER_CLASSES)


def training_config_class(architecture: str) -> type:
    """The training config class of a SAE architecture this runner trains."""
    if architecture == "jacobian":
        return JacobianTrainingSAEConfig
    if architecture in TRANSCODER_CLASSES:
        return TRANSCODER_CLASSES[architecture][3]
    raise ValueError(f"architecture={architecture!r} is not one this runner trains; choose one of {', '.join(SAE_ARCHITECTURES)}.")


# what a sweep member of another architecture inherits from the run's `sae:` section
_SHARED_FIELDS = ("d_in", "d_sae", "k", "dtype", "device")


def variant_sae_config(base: Any, overrides: dict[str, Any], validate_only: bool = False) -> Any:
    """The training config of one sweep member: the run's `sae:` config `base` with `overrides`.

    `architecture=` in `overrides` picks the member's architecture ("jacobian" or a transcoder);
    a member of another architecture than `base` keeps only `base`'s d_in, d_sae, k, dtype and
    device. A key that is not a field of the member's config is a ValueError (before any work).
    With `validate_only` (or `base=None`) only the keys are checked.
    """
    from dataclasses import fields, replace

    overrides = dict(overrides)
    architecture = overrides.pop("architecture", "jacobian" if base is None else base.architecture())
    cls = training_config_class(architecture)
    valid = {f.name for f in fields(cls)} - {"metadata"}
    for key in overrides:
        if key not in valid:
            raise ValueError(f"Cannot sweep {key!r} for architecture {architecture!r}: not a {cls.__name__} field ({', '.join(sorted(valid))}).")
    if validate_only or base is None:
        return None
    metadata = copy.deepcopy(base.metadata)  # each member owns its metadata (training details differ)
    if type(base) is cls:
        member = replace(base, **overrides, metadata=metadata)
    else:
        shared = {name: getattr(base, name) for name in _SHARED_FIELDS}
        member = cls(**{**shared, **overrides}, metadata=metadata)
    if architecture in TRANSCODER_CLASSES and metadata.hook_name is not None:
        member.metadata.hook_name_out = transcoder_output_hook(metadata.hook_name)
    else:
        member.metadata.__dict__.pop("hook_name_out", None)  # SAELens would splice a pair as a transcoder
    return member


def transcoder_output_hook(input_hook: str) -> str:
    """Where a transcoder reading the MLP input `blocks.L.ln2.hook_normalized` writes: `blocks.L.hook_mlp_out`."""
    from sae_lens_jsae.sae import output_hook_name

    return output_hook_name(layer_of_input_hook(input_hook))


def check_widths(sae_cfg: Any, d_model: int, model_name: str) -> None:
    """A pair's or transcoder's widths must be the model's d_model (a ValueError naming the fix)."""
    widths = {"d_in": sae_cfg.d_in, **({"d_out": sae_cfg.d_out} if hasattr(sae_cfg, "d_out") else {})}
    for name, value in widths.items():
        if value != d_model:
            raise ValueError(f"cfg.sae.{name}={value} but {model_name} has d_model={d_model}; set {name} to {d_model}.")


def build_variant_sae(cfg_sae: Any, mlp: FrozenMLP, device: str) -> Any:
    """A training pair or transcoder from its config, with the shared frozen MLP attached."""
    from sae_lens.registry import get_sae_training_class

    sae = get_sae_training_class(cfg_sae.architecture())[0](cfg_sae)
    sae.attach_mlp(mlp)
    return sae.to(device)


def run_variants(runner: JacobianSAETrainingRunner, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """`train_variants`' training on a built runner: one pair or transcoder per variant, one
    activation stream (the LLM and the frozen MLP run once per batch for all of them).

    Checkpoints (`runner.checkpoint_path`, `n_checkpoints` or `checkpoint_every_tokens`) hold every
    member's state, the stream and the store; `runner.resume_from_checkpoint` continues exactly.
    """
    with runner.known_false_warnings():
        return _run_variants(runner, variants)


def _run_variants(runner: JacobianSAETrainingRunner, variants: list[dict[str, Any]]) -> dict[str, Any]:
    from dataclasses import replace

    cfg = runner.cfg
    runner._set_sae_metadata()
    check_sweep_keys(variants, cfg.sae)
    members = {variant_name(overrides): variant_sae_config(runner.sae.cfg, overrides) for overrides in variants}
    for member in members.values():
        check_widths(member, runner.sae.cfg.d_in, cfg.model_name)
    _tune_process(cfg, runner.options)
    out_root = Path(cfg.output_path or ".")
    saes: dict[str, Any] = {}
    for name, member in members.items():
        seed_everything(cfg.seed)
        saes[name] = build_variant_sae(member, runner.sae.mlp, cfg.device)  # type: ignore[arg-type]
    runner.stream = stream = runner.make_stream()
    trainer_cfg = cfg.to_sae_trainer_config()
    multi = _SweepTrainer(
        cfg=trainer_cfg,
        saes=saes,
        hook_names={name: cfg.hook_name for name in saes},
        data_provider=({cfg.hook_name: batch} for batch in stream),  # type: ignore[arg-type]
        save_checkpoint_fn=runner.save_checkpoint,
    )
    if runner.options.checkpoint_every_tokens:
        every = runner.options.checkpoint_every_tokens
        multi.checkpoint_thresholds = list(range(every, trainer_cfg.total_training_samples, every))
    # MultiSAETrainer drives one SAETrainer per SAE through public seams; use ours instead.
    per_sae_cfg = replace(trainer_cfg, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False)
    multi.trainers = {
        name: JacobianSAETrainer(
            cfg=per_sae_cfg,
            sae=sae,
            data_provider=iter(()),
            log_path=out_root / name / LOG_FILENAME,
            log_every_n_steps=runner.options.log_every_n_steps,
            name=name,
        )
        for name, sae in saes.items()
    }
    if cfg.resume_from_checkpoint is not None:
        runner.load_sweep_checkpoint(multi, Path(cfg.resume_from_checkpoint))
    multi.fit()
    for name, sae in saes.items():
        runner.save_final_sae(sae=sae, output_path=str(out_root / name), log_feature_sparsity=multi.trainers[name].log_feature_sparsity)
    return saes
