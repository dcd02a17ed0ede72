"""How the train stage asks torchrun for its processes (nmt/distributed.py)."""
from __future__ import annotations

import sys

import pytest

from nmt import distributed
from nmt.errors import UserError
from nmt.params import Train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch):
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_one_process_trains_itself():
    assert distributed.launch_command(Train(), "stages.train") is None


def test_one_machine_gets_a_standalone_rendezvous():
    assert distributed.launch_command(Train(nproc_per_node=4), "stages.train") == [
        *TORCHRUN, "--nproc-per-node=4", "--standalone", "-m", "stages.train"]


def test_under_torchrun_the_ranks_do_not_launch_again(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launch_command(Train(nproc_per_node=4), "stages.train") is None


def test_several_machines_meet_at_the_first_one(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("NODE_RANK", "1")
    assert distributed.launch_command(Train(nproc_per_node=8, nnodes=2), "stages.train") == [
        *TORCHRUN, "--nproc-per-node=8", "--nnodes=2", "--node-rank=1",
        "--master-addr=10.0.0.1", "--master-port=29500", "-m", "stages.train"]


def test_several_machines_without_an_address_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.setenv("NODE_RANK", "0")
    with pytest.raises(UserError, match=r"^train.nnodes: 2 machines need MASTER_ADDR in the "):
        distributed.launch_command(Train(nnodes=2), "stages.train")


def test_shares_of_a_window():
    """Rank r of W takes every W-th batch from r; a rank left without one gets a stand-in
    whose loss counts 0, and a real share counts W (DDP's mean divides by W)."""
    window = ["b0", "b1", "b2"]
    shares = {}
    for r in range(2):
        env = {"RANK": str(r), "WORLD_SIZE": "2"}
        with pytest.MonkeyPatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            shares[r] = (distributed.shard(window), distributed.share_weight(window),
                         distributed.shard(["b3"]), distributed.share_weight(["b3"]))
    assert shares[0] == (["b0", "b2"], 2.0, ["b3"], 2.0)
    assert shares[1] == (["b1"], 2.0, ["b3"], 0.0)
