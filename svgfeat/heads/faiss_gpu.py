"""faiss on GPUs in one place: one process-wide ``StandardGpuResources`` per device, the k limit, GPU IVF
training, and which faiss package is installed (for ``svgfeat doctor``).

- :func:`gpu_resources`: the resources object of GPU ``gid``, created once per process and shared by every
  index (each one holds a cuBLAS handle, streams and a temporary-memory pool of ~18% of the card).
- :data:`GPU_MAX_K`: faiss-gpu's brute-force/IVF kernels return at most 2048 neighbours; callers fall back
  (exact torch search, or the CPU copy of the index) and say so.
- :func:`gpu_clustering_index`: a GPU flat index for the k-means of IVF training (the coarse quantiser is
  trained on the GPU; the index itself stays a CPU index until it is moved with :func:`to_gpu`).
- :func:`installed`: the faiss distributions present (faiss-cpu, faiss-gpu, faiss-gpu-cu12, ...), the
  module actually imported and its GPU count; two distributions both own the ``faiss/`` package folder,
  so the one imported is whichever was installed last -- :func:`installed` reports that conflict.
"""

from __future__ import annotations

import threading

GPU_MAX_K = 2048
DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cu13", "faiss")
_RESOURCES: dict = {}
_LOCK = threading.Lock()


def gpu_resources(faiss, gid: int):
    """The process-wide ``faiss.StandardGpuResources`` of GPU ``gid`` (created on first use)."""
    with _LOCK:
        res = _RESOURCES.get(gid)
        if res is None:
            res = _RESOURCES[gid] = faiss.StandardGpuResources()
        return res


def to_gpu(faiss, gid: int, index):
    """A GPU copy of the CPU ``index`` on GPU ``gid``, with the shared resources of that GPU."""
    return faiss.index_cpu_to_gpu(gpu_resources(faiss, gid), gid, index)


def gpu_clustering_index(faiss, gid: int, d: int):
    """A GPU ``IndexFlatL2`` of dimension ``d`` for IVF k-means (``ivf.clustering_index = ...``)."""
    return to_gpu(faiss, gid, faiss.IndexFlatL2(d))


def gpu_count(faiss) -> int:
    return int(faiss.get_num_gpus()) if faiss is not None and hasattr(faiss, "get_num_gpus") else 0


def installed() -> dict:
    """{"distributions": {name: version}, "module": path or None, "version": str or None, "gpus": int,
    "conflict": str or None} -- what ``svgfeat doctor`` prints."""
    from importlib import metadata

    dists = {}
    for name in DISTRIBUTIONS:
        try:
            dists[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out = {"distributions": dists, "module": None, "version": None, "gpus": 0, "conflict": None}
    try:
        import faiss
    except ImportError:
        pass
    else:
        out.update(module=getattr(faiss, "__file__", None), version=getattr(faiss, "__version__", None),
                   gpus=gpu_count(faiss))
    cpu = [n for n in dists if n == "faiss-cpu"]
    gpu = [n for n in dists if n.startswith("faiss-gpu")]
    if cpu and gpu:
        out["conflict"] = (f"both {', '.join(cpu + gpu)} are installed and both own the faiss/ package: the "
                           f"one imported is whichever was installed last; keep one (pip uninstall "
                           f"{' '.join(cpu if out['gpus'] else gpu)} then reinstall the other)")
    elif len(gpu) > 1:
        out["conflict"] = f"several faiss GPU packages are installed ({', '.join(gpu)}); keep one"
    return out
