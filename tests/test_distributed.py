"""torchrun on CPU (gloo, 2 processes, tiny model): data parallel = one process, resume, sweeps
over ranks, a dead or hung rank. The runs start together (tests/dist_worker.py) to share the
import time; each test then reads its run's files."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_lens_jsae.distributed import DistributedContext, DistributedTrainingRunner
from sae_lens_jsae.training import latest_checkpoint

pytestmark = pytest.mark.slow  # 19 Python processes: 3-5 min on 2 shared cores

WORKER = Path(__file__).parent / "dist_worker.py"
TOL = 1e-5
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def launch(tmp: Path, nproc: int, **args) -> subprocess.Popen:
    """1: a plain process; 2: `torchrun --standalone --nproc_per_node 2` (gloo)."""
    tmp.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"tmp": str(tmp), "mode": "train", **args})
    cmd = [sys.executable, str(WORKER), payload]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER), payload]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted and killed runs, all started at once."""
    root = tmp_path_factory.mktemp("dist")
    plan = {
        "single": (1, {}),
        "two": (2, {}),
        "two_sharded": (2, {"shard_products": True}),
        "killed": (2, {"die_after_checkpoint": True}),
        "sweep_single": (1, {"mode": "sweep"}),
        "sweep_two": (2, {"mode": "sweep"}),
    }
    procs = {name: launch(root / name, n, **args) for name, (n, args) in plan.items()}
    results = {name: finish(p) for name, p in procs.items()}
    return root, results


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path / "sae_weights.safetensors").items() if not k.startswith("mlp.")}


def max_relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)


def trainer_state(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint is not None
    state = torch.load(checkpoint / "trainer_state.pt")
    jsae = load_file(checkpoint / "jsae_trainer_state.safetensors")
    return {"act_freq_scores": state["act_freq_scores"], "since_fired": state["n_forward_passes_since_fired"], **jsae}


def llm_rows(run: Path, rank: int) -> list[tuple[int, ...]]:
    return [tuple(row) for row in json.loads((run / f"llm_rows_rank{rank}.json").read_text())]


def assert_llm_rows_split(single: Path, two: Path, batch: int = 4) -> None:
    """Rank r's LLM rows are, batch by batch, the r-th half of the single process's batches
    (`store_batch_size_prompts` rows each)."""
    one, ranks = llm_rows(single, 0), [llm_rows(two, 0), llm_rows(two, 1)]
    assert len(one) > 0 and len(one) % batch == 0
    half = batch // 2
    for r, rows in enumerate(ranks):
        expected = [row for start in range(0, len(one), batch) for row in one[start + r * half : start + (r + 1) * half]]
        assert rows == expected, (two.name, r, len(rows), len(expected))


def test_two_ranks_half_batch_equal_one_process_full_batch(runs):
    root, results = runs
    for name in ("single", "two", "two_sharded"):
        assert results[name][0] == 0, results[name][1][-3000:]
    for name in ("two", "two_sharded"):  # every rank computes the weight products (default), or they are split
        error = max_relative_error(weights(root / "single" / "out"), weights(root / name / "out"))
        print(f"max relative weight error, 2 ranks x B/2 ({name}) vs 1 x B: {error:.2e}")
        assert error <= TOL
    assert json.loads((root / "two_sharded" / "times_rank0.json").read_text())["products_s"] > 0
    assert json.loads((root / "two" / "times_rank0.json").read_text())["products_s"] == 0
    # dead-latent statistics (both SAEs) are the global batch's, not rank 0's half
    one, two = trainer_state(root / "single"), trainer_state(root / "two")
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert one["act_freq_scores"].sum() == 4 * 64 * 9  # k latents x 64 tokens x 9 steps (checkpoint 576)
    # only rank 0 logs and draws a progress bar; its losses are the global batch's
    assert results["two"][1].count("Training SAE:   0%") == 1
    assert sorted(p.name for p in (root / "two").rglob("train_log.jsonl")) == ["train_log.jsonl"]
    log_one = [json.loads(x) for x in (root / "single" / "out" / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (root / "two" / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log_one) == len(log_two) == 3
    for a, b in zip(log_one, log_two):
        assert a["details/n_training_samples"] == b["details/n_training_samples"]
        assert b["losses/overall_loss"] == pytest.approx(a["losses/overall_loss"], rel=1e-5)
        assert b["details/jacobian_coefficient_coefficient"] == a["details/jacobian_coefficient_coefficient"]
    # each rank ran the LLM on its own half of every prompt batch the single process ran: fails if
    # the LLM forward is not sharded (each rank runs whole batches: twice the rows) or a rank takes
    # the wrong slice (both the first half: rows of the single run missing, others twice)
    for name in ("two", "two_sharded"):
        assert_llm_rows_split(root / "single", root / name)


def test_resume_under_torchrun_same_and_other_world_size(runs):
    root, results = runs
    code, out = results["killed"]
    assert code != 0 and "exitcode  : -9" in out, out[-3000:]  # torchrun reports the killed rank
    assert not (root / "killed" / "out" / "sae_weights.safetensors").exists()
    checkpoint = latest_checkpoint(root / "killed" / "checkpoints")
    assert checkpoint is not None and int(checkpoint.name) == 64 * 5
    same = launch(root / "resumed_two", 2, resume=str(checkpoint))
    other = launch(root / "resumed_one", 1, resume=str(checkpoint))
    for proc in (same, other):
        code, out = finish(proc)
        assert code == 0, out[-3000:]
    uninterrupted = weights(root / "two" / "out")
    resumed = weights(root / "resumed_two" / "out")
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    # the checkpoint does not depend on the world size: one process continues it too
    assert max_relative_error(uninterrupted, weights(root / "resumed_one" / "out")) <= TOL


def test_sweep_over_ranks_equals_single_process_sweep(runs):
    root, results = runs
    for name in ("sweep_single", "sweep_two"):
        assert results[name][0] == 0, results[name][1][-3000:]
    members = ["jacobian_coefficient=0.0", "jacobian_coefficient=0.5", "jacobian_coefficient=2.0"]
    for member in members:
        error = max_relative_error(weights(root / "sweep_single" / "out" / member), weights(root / "sweep_two" / "out" / member))
        assert error <= TOL, (member, error)
        assert (root / "sweep_two" / "out" / member / "train_log.jsonl").exists()
    # pairs differ from each other (so equality above is not vacuous)
    assert max_relative_error(weights(root / "sweep_two" / "out" / members[0]), weights(root / "sweep_two" / "out" / members[2])) > 1e-3
    gathered = json.loads((root / "sweep_two" / "times_rank1.json").read_text())["gather_s"]
    assert gathered > 0  # rank 1 ran its share of the LLM and gathered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("hang", [False, True], ids=["killed", "hung"])
def test_dead_or_hung_rank_stops_the_others_with_a_clear_error(tmp_path, hang):
    """Ranks launched without torchrun's agent (as on a node whose peer node died): the survivor
    must stop on its own, at once for a dead peer, after `dist_timeout_s` for a hung one."""
    timeout_s = 8
    payload = json.dumps({"tmp": str(tmp_path), "mode": "train", "steps": 40, "die_at_step": 3, "hang": hang, "timeout_s": timeout_s})
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), payload],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        out, _ = procs[0].communicate(timeout=300)
        exited = time.time()
    finally:
        procs[1].send_signal(signal.SIGKILL)
        procs[1].communicate()
    failed_at = float((tmp_path / "died_at").read_text())
    seconds = exited - failed_at
    print(f"{'hung' if hang else 'killed'} rank: the other exited {seconds:.1f} s later")
    assert procs[0].returncode != 0
    assert "RankFailureError: rank 0 of 2: a collective failed" in out and "--resume" in out, out[-3000:]
    # what stopped the survivor (its gloo error, inside the RankFailureError), not how long it took:
    if hang:  # fails if dist_timeout_s does not reach the process group (torch's 30 min default: 1800000ms)
        assert f"Timed out waiting {timeout_s * 1000}ms" in out, out[-3000:]
    else:  # fails if a dead peer is only noticed by waiting out the timeout (not the closed connection)
        assert re.search(r"Connection (reset|closed) by peer", out) and "Timed out" not in out, out[-3000:]


def test_batches_that_do_not_split_over_ranks_are_refused_before_any_work(tmp_path):
    from helpers import tiny_runner_cfg

    cfg = tiny_runner_cfg(tmp_path, store_batch_size_prompts=3)
    with pytest.raises(ValueError, match=r"store_batch_size_prompts=3 must be multiples of the world size 2"):
        DistributedTrainingRunner(cfg, context=DistributedContext(rank=0, world_size=2, local_rank=0, backend="gloo"))
