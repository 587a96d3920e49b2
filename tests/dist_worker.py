"""One process of the distributed tests (tests/test_distributed.py): a tiny JSAE run, single
process without WORLD_SIZE, one rank of a gloo job with it (torchrun or a plain launch).

python dist_worker.py JSON_ARGS   (keys: tmp, mode "train"|"sweep", steps, resume, die_at_step,
hang, die_after_checkpoint, timeout_s, shard_products)
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset  # noqa: E402

from sae_lens_jsae.training import (  # noqa: E402
    JacobianSAETrainer,
    JacobianSAETrainingRunner,
    RunOptions,
    train_sweep,
)

args = json.loads(sys.argv[1])
tmp = Path(args["tmp"])
cfg = tiny_runner_cfg(tmp, training_tokens=64 * args.get("steps", 12), resume_from_checkpoint=args.get("resume"))
options = RunOptions(log_every_n_steps=4, checkpoint_every_tokens=64 * 4, dist_timeout_s=args.get("timeout_s", 60),
                     dist_shard_weight_products=args.get("shard_products"))
data = {"override_dataset": tiny_token_dataset(), "override_model": make_tiny_model("gated_silu", dtype=torch.float32)}
rank = int(os.environ.get("RANK", "0"))

# every prompt row this process runs the LLM on (its embedding's input), written at the end: the
# test checks each rank ran its half of each batch (not the whole batch, not another rank's half)
llm_rows: list[list[int]] = []
data["override_model"].embed.register_forward_hook(lambda module, inputs, output: llm_rows.extend(inputs[0].tolist()))

die_at = args.get("die_at_step")
if die_at is not None and rank == 1:  # a rank that dies (SIGKILL) or hangs (SIGSTOP) mid-run
    step = JacobianSAETrainer.step

    def step_then_die(self, batch):
        if self.n_training_steps == die_at:
            (tmp / "died_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGSTOP if args.get("hang") else signal.SIGKILL)
        return step(self, batch)

    JacobianSAETrainer.step = step_then_die

if args.get("die_after_checkpoint") and rank == 0:  # killed right after its first checkpoint
    save = JacobianSAETrainingRunner.save_checkpoint

    def save_then_die(self, checkpoint_path):
        save(self, checkpoint_path)
        if checkpoint_path is not None and int(checkpoint_path.name) > 64 * 4:
            os.kill(os.getpid(), signal.SIGKILL)

    JacobianSAETrainingRunner.save_checkpoint = save_then_die

if os.environ.get("WORLD_SIZE", "1") == "1":
    if args["mode"] == "sweep":
        train_sweep(cfg, "jacobian_coefficient", [0.0, 0.5, 2.0], options, **data)
    else:
        JacobianSAETrainingRunner(cfg, options, **data).run()
    (tmp / "llm_rows_rank0.json").write_text(json.dumps(llm_rows))
else:
    from sae_lens_jsae.distributed import (
        barrier_and_close,
        init_from_env,
        progress_bars_disabled,
        train_distributed,
        train_sweep_over_ranks,
    )

    context = init_from_env(cfg.device, "gloo", options.dist_timeout_s)
    with progress_bars_disabled(not context.is_main):  # as `jsae train` does: one bar per job
        if args["mode"] == "sweep":
            train_sweep_over_ranks(cfg, "jacobian_coefficient", [0.0, 0.5, 2.0], options, context, **data)
        else:
            train_distributed(cfg, options, context, **data)
    (tmp / f"times_rank{rank}.json").write_text(json.dumps(vars(context.times)))
    (tmp / f"llm_rows_rank{rank}.json").write_text(json.dumps(llm_rows))
    barrier_and_close(context)
