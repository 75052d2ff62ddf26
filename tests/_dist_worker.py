"""torchrun worker for tests/test_distributed.py: joins the group through svgfeat.distributed and prints
this rank's binding (one JSON line per rank, gathered on every rank)."""

import json
import sys

import torch

from svgfeat import distributed as D

info, dev = D.setup(sys.argv[1])
# where a CUDA request would go on an 8-GPU node (pure mapping, no GPU needed)
mapped = str(D.device_for("cuda", info.local_rank, info.world, visible=8))
t = D.all_reduce_sum(torch.tensor([float(info.rank + 1)], device=dev), info)
obj = D.broadcast_object({"from": info.rank}, info)
lin = torch.nn.Linear(2, 1, bias=False).to(dev)
lin.weight.grad = torch.tensor([[1.0, 2.0]], device=dev) * (info.rank + 1)
D.average_gradients(lin.parameters(), info)
rows = [None] * info.world
torch.distributed.all_gather_object(rows, {"rank": info.rank, "local_rank": info.local_rank, "device": str(dev),
                                           "cuda_would_be": mapped, "backend": info.backend, "sum": t.item(),
                                           "bcast": obj["from"], "avg_grad": lin.weight.grad.flatten().tolist()})
D.barrier(info)
if info.is_main:
    print("RESULT " + json.dumps(rows), flush=True)
D.teardown(info)
assert not torch.distributed.is_initialized()
