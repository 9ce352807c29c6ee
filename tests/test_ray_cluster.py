"""executor=ray on a real multi-node cluster on this machine (issue 16): a Ray head and a
second node as separate raylets (``ray.cluster_utils.Cluster``, 1 CPU each). The actors
land on both nodes; a rebalance moves images, and their warm starts, from one node's object
store to the other's actor; loss, gradient and iteration counts stay the local executor's."""
from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

import structpred as sp
from structpred.training.executors import LocalExecutor, RayExecutor
from train_helpers import noisy_pairs


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _pairs(n, shape, seed):
    return noisy_pairs(n, shape, seed)


def test_two_nodes_rebalance_across_nodes_equals_local(cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    model = sp.make_model("foe", num_filters=3, filter_size=3, boundary="symmetric")
    theta = model.init_params(sigma=25)
    # big images (warm starts of 2 x 130 KB: in the object store, not inlined) on even
    # indices: round robin puts them all on actor 0
    big, small = _pairs(4, (120, 120), 0), _pairs(4, (16, 16), 1)
    pairs = [big[i] if i % 2 == 0 else small[i] for i in range(4)]
    solver, grad = sp.LBFGS(gtol=1e-5), sp.ImplicitGradient()
    local = LocalExecutor(model, solver, grad, pairs)
    remote = RayExecutor(model, solver, grad, pairs, num_actors=2)
    try:
        nodes = remote.node_ids()
        assert len(set(nodes)) == 2                       # one actor per node
        a1, wa = local(theta, None, (None,) * 4)
        b1, wb = remote(theta, None, (None,) * 4)
        assert b1.loss == a1.loss and np.array_equal(b1.grad, a1.grad)
        before = list(remote.shard_of)
        info = remote.rebalance()
        assert info is not None and info["moved"] >= 1
        moved = [i for i in range(4) if remote.shard_of[i] != before[i]]
        assert any(i % 2 == 0 for i in moved)             # a big image changed node
        a2, _ = local(theta * 1.01, None, wa)
        b2, _ = remote(theta * 1.01, None, wb)
        assert b2.loss == a2.loss and np.array_equal(b2.grad, a2.grad)
        assert [i.solve.iterations for i in b2.items] == [i.solve.iterations for i in a2.items]
        assert [i.adjoint.iterations for i in b2.items] == [i.adjoint.iterations
                                                            for i in a2.items]
    finally:
        remote.close()
