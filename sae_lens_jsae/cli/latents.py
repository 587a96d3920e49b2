"""`jsae latents PAIR --tokens N --out DIR`: every latent's page from N corpus tokens (PAIR: a JSAE
pair's folder, or a TopK (skip) transcoder's)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pair", help="JSAE folder (cfg.json + sae_weights.safetensors), or a transcoder's (architecture topk_transcoder / topk_skip_transcoder)")
    p.add_argument("--out", required=True, help="data folder (pages go to OUT/features/{scan}/); use the graphs' folder")
    p.add_argument("--tokens", type=int, default=102_400, help="corpus tokens to read (sotu)")
    p.add_argument("--split", default="eval", choices=("train", "eval"), help="sotu split")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--model-source", default="gguf-smollm2", help="sae_lens_jsae.sources model source ('gguf-smollm2' or 'hub')")
    p.add_argument("--model-name", default=None, help="model name (default: the pair's cfg metadata model_name)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    if args.tokens < args.context_size:
        raise ValueError(f"--tokens {args.tokens} is less than one context ({args.context_size} tokens).")
    import torch

    from sae_lens_jsae.graph import load_pair_and_model
    from sae_lens_jsae.latents import is_transcoder_folder, load_transcoder_and_model, write_latent_pages
    from sae_lens_jsae.sources import sotu_token_dataset

    transcoder = is_transcoder_folder(args.pair)
    if transcoder:
        sae, model = load_transcoder_and_model(args.pair, args.model_source, args.model_name, args.device)
    else:
        (sae,), model = load_pair_and_model([args.pair], args.model_source, args.model_name, args.device)
    ds = sotu_token_dataset(model.tokenizer, args.context_size, split=args.split)
    tokens = torch.tensor(ds["input_ids"][: min(len(ds), -(-args.tokens // args.context_size))])
    if tokens.numel() < args.tokens:
        print(f"note: the {args.split} split has {tokens.numel()} tokens (< --tokens {args.tokens}); using all of them")
    folder = write_latent_pages(sae, model, tokens, args.out, batch_size=args.batch_size)
    print(f"wrote {(1 if transcoder else 2) * sae.cfg.d_sae} latent pages ({tokens.numel()} tokens) to {folder}")
    return 0
