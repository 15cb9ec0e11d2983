"""Two "nodes" on one machine: LLaMA-Factory's NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT launch, one process
per node, DeepSpeed ZeRO-3 over gloo, the two ranks selecting different targets (docs/multinode.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dyncot_plugin.testing.lf_runner import llamafactory_cli, offline_env, tiny_sft_config, train_ended
from dyncot_plugin.testing.plugin_data import read_log, write_plugin_dataset

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.serial]
DS_Z3 = Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / "ds_z3.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_one_process_each_select_differently_and_reduce_cot_ratio(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    # As in tests/test_distributed.py: sequential order, 2 rows per rank per step, only rank 0's rows (0-1, 4-5)
    # have CoT text and gamma is above any loss, so node 0 trains on CoT and node 1 on plain answers.
    write_plugin_dataset(tmp_path / "data", "split", n=8, cot_rows=[0, 1, 4, 5])
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "split", tmp_path / "out", max_steps=2, deepspeed=str(DS_Z3),
        disable_shuffling=True, save_strategy="steps", save_steps=2,
        dyncot_strategy="dynamic", dyncot_gamma=1.0e6, dyncot_missing_cot="sft", dyncot_log_selection=True,
    )
    recipe = tmp_path / "recipe.yaml"  # the same recipe on both nodes
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    port = str(free_port())
    procs = {}
    for node in (0, 1):
        work = tmp_path / f"node{node}"
        work.mkdir()
        env = offline_env({
            "FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": str(node), "NPROC_PER_NODE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
            "HF_DATASETS_CACHE": str(work / "hf_datasets"),  # node-local cache, as on separate machines
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        })
        procs[node] = subprocess.Popen(
            [llamafactory_cli(), "train", str(recipe)], cwd=work, env=env, text=True,
            stdout=open(work / "log.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        codes = {node: proc.wait(timeout=900) for node, proc in procs.items()}
    finally:
        for proc in procs.values():  # a node left waiting for its peer: end its process group (ours)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    logs = {node: (tmp_path / f"node{node}" / "log.txt").read_text() for node in (0, 1)}
    # exit 0 on both nodes, or a rank that died in torch's gloo teardown after its training (lf_runner.train_ended;
    # the other node then waits out torchrun's 300 s exit barrier and exits 0); everything below is checked either way
    assert all(train_ended(codes[n], logs[n]) for n in (0, 1)), "\n".join(
        f"--- node {n} ---\n{logs[n][-4000:]}" for n in (0, 1))

    # LLaMA-Factory's launcher saw two nodes; node N's one worker is global rank N, with the plugin active
    for node in (0, 1):
        assert f"Multi-node training enabled: num nodes: 2, node rank: {node}" in logs[node]
        assert f"(rank {node}): patched llamafactory" in logs[node]
        assert f"(rank {1 - node}): patched llamafactory" not in logs[node]
    out = tmp_path / "out"
    records = {
        rank: [json.loads(line) for line in (out / "dyncot_selection" / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    assert [r["cot"] for r in records[0]] == [[True, True], [True, True]]
    assert [r["cot"] for r in records[1]] == [[False, False], [False, False]]
    # cot_ratio is reduced over both nodes (written once, by global rank 0): half the samples trained on CoT
    assert [e["cot_ratio"] for e in read_log(out)] == [0.5, 0.5]
    # ZeRO-3: every rank writes its own optimizer shard into the checkpoint (a shared output_dir holds them all);
    # rank 0 writes the gathered 16-bit model
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("*optim_states.pt"))
    assert len(shards) == 2 and any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards)
    rng = sorted(p.name for p in (out / "checkpoint-2").glob("rng_state_*.pth"))
    assert rng == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (out / "model.safetensors").is_file()
    # each node read and tokenised the dataset itself, into its own cache: the data must be on every node
    assert all(any((tmp_path / f"node{node}" / "hf_datasets").rglob("*.arrow")) for node in (0, 1))
