"""Approximate indexes meet a recall target: nprobe / efSearch tuned on held-out queries at build time, the measured
recall and chosen parameters stored, reported and used; an unreachable target is said with the best found; a
stale index (its source cache rebuilt) and a sidecar with wrong field types are refused with one line."""

import json

import numpy as np
import pytest
from _retrieval_helpers import clustered

from svgfeat.cache import from_arrays
from svgfeat.cli import main
from svgfeat.errors import CacheError
from svgfeat.heads import index_factory as fac
from svgfeat.heads.index_tuning import bar, train_sample_size
from svgfeat.heads.retrieval import FaissIndex

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def recall(nbr, truth, k=10):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(nbr, truth)]))


@pytest.fixture(scope="module")
def data():
    d = clustered(6000, 16, clusters=60, spread=0.6, seed=3)
    return d[:5000], d[5000:]


def run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(capsys, *args) -> str:
    rc, out, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("Error: "), (rc, err)
    return lines[0]


# ------------------------------------------------------------------------------------------ library
def test_auto_tunes_nprobe_to_the_target_on_rows_held_out_of_the_index():
    """60k rows > the Flat limit: auto picks IVF-Flat; the stored recall was measured on 1000 rows kept out of the
    index (then added: every row is searchable) and predicts the recall on new queries."""
    d = clustered(61_000, 32, clusters=300, spread=0.7, seed=5)
    X, Q = d[:60_000], d[60_000:]
    idx = FaissIndex("auto").fit(X)
    nlist = fac.default_nlist(60_000)
    rec = idx.recall_
    assert idx.factory_ == f"IVF{nlist},Flat" and rec["held_out"] == "rows" and rec["queries"] == 1000
    assert rec["met"] and rec["recall"] >= 0.95 and rec["target"] == 0.95 and rec["why"] == ""
    assert idx.search_params() == rec["params"] and 1 <= rec["params"]["nprobe"] < nlist
    # the smallest passing setting: the next smaller one tried fails
    below = [r for v, r in rec["tried"] if v < rec["params"]["nprobe"]]
    assert below and max(below) < 0.95
    truth = FaissIndex("Flat").fit(X).search(Q, 10)[1]
    got = recall(idx.search(Q, 10)[1], truth)
    assert abs(got - rec["recall"]) < 0.03, (got, rec)
    assert len(idx) == 60_000 and np.array_equal(np.sort(idx.keys_), np.arange(60_000))
    assert np.array_equal(idx.search(X[:50], 1)[1][:, 0], np.arange(50))  # held-out or not, every row is found


def test_ivf_training_sample_follows_the_rule_of_thumb():
    assert train_sample_size(4525, 1_281_167) == 40 * 4525  # 30..256 x nlist, not all 1.28M rows
    assert train_sample_size(100, 1000) == 1000 and train_sample_size(10, 10_000, minimum=9000) == 9000


def test_explicit_hnsw_tunes_ef_search(data):
    X, Q = data
    idx = FaissIndex("HNSW16").fit(X)
    rec = idx.recall_
    assert rec["met"] and rec["params"] == {"efSearch": idx.search_params()["efSearch"]} and rec["queries"] == 500
    truth = FaissIndex("Flat").fit(X).search(Q, 10)[1]
    assert recall(idx.search(Q, 10)[1], truth) >= 0.9


def test_unreachable_target_is_said_with_the_best_found(data):
    X, _ = data
    idx = FaissIndex("IVF16,PQ2", target_recall=0.99, train_size=4000).fit(X)
    rec = idx.recall_
    assert not rec["met"] and rec["recall"] < 0.99
    assert "nprobe=16" in rec["why"] and "compressed" in rec["why"]
    best = max(r for _, r in rec["tried"])
    assert rec["recall"] == best and idx.search_params() == rec["params"]


def test_time_budget_stops_tuning_with_the_best_so_far(data):
    X, _ = data
    idx = FaissIndex("IVF64,Flat", target_recall=1.0, time_budget=0).fit(X)
    rec = idx.recall_
    assert len(rec["tried"]) == 1 and not rec["met"] and "budget" in rec["why"]


def test_given_search_parameter_is_kept_and_measured(data):
    X, _ = data
    idx = FaissIndex("IVF64,Flat", nprobe=1, target_recall=0.999).fit(X)
    assert idx.search_params() == {"nprobe": 1} and "tried" not in idx.recall_
    assert not idx.recall_["met"] and "given" in idx.recall_["why"]


def test_val_queries_measure_without_holding_rows_out(data):
    X, Q = data
    idx = FaissIndex("IVF32,Flat").fit(X, queries=Q)
    assert idx.recall_["held_out"] == "val" and idx.recall_["queries"] == 1000 and idx.recall_["met"]
    assert np.array_equal(idx.keys_, np.arange(len(X)))
    truth = FaissIndex("Flat").fit(X).search(Q, 10)[1]
    assert recall(idx.search(Q, 10)[1], truth) == pytest.approx(idx.recall_["recall"], abs=1e-4)


def test_tuned_parameters_are_saved_and_used_after_load(data, tmp_path):
    X, Q = data
    idx = FaissIndex("IVF64,Flat").fit(X)
    p = idx.save(tmp_path / "i.faiss")
    side = json.loads((tmp_path / "i.faiss.json").read_text())
    assert side["recall"]["params"] == side["search_params"] == {"nprobe": idx.nprobe}
    back = FaissIndex.load(p)
    assert back.search_params() == idx.search_params() and back.recall_ == idx.recall_
    np.testing.assert_array_equal(back.search(Q, 10)[1], idx.search(Q, 10)[1])


def test_no_one_step_progress_bars():
    assert bar(1, "x", "it", True).disable and bar(0, "x", "it", True).disable
    assert not bar(2, "x", "it", True).disable and bar(5, "x", "it", False).disable


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def cache(tmp_path, data):
    X, _ = data
    return from_arrays(tmp_path / "c", {"pooled": X}, labels=np.arange(len(X)) % 5, durable=False)


def test_cli_build_info_search_report_recall_and_params(capsys, tmp_path, cache):
    out_idx = tmp_path / "i.faiss"
    rc, out, err = run(capsys, "index", "build", cache.root, "-o", out_idx, "--factory", "IVF32,Flat")
    assert rc == 0, err
    assert "recall@10: " in out and "rows held out of the index" in out and "target 0.95 met" in out
    assert "training IVF32" in err and " 1/1 " not in err  # k-means progress, no one-step bars
    nprobe = json.loads((tmp_path / "i.faiss.json").read_text())["search_params"]["nprobe"]
    rc, out, _ = run(capsys, "index", "info", out_idx)
    assert rc == 0 and f"nprobe={nprobe}" in out and "target 0.95 met" in out
    rc, out, _ = run(capsys, "search", out_idx, f"{cache.root}:0", "-k", "3")
    first = out.splitlines()[0]
    assert rc == 0 and first.startswith("index: IVF32,Flat, nprobe=") and f"nprobe={nprobe}" in first
    assert "recall@10 at build" in first


def test_cli_unmet_target_warns_with_the_best(capsys, tmp_path, cache):
    rc, out, err = run(capsys, "index", "build", cache.root, "-o", tmp_path / "i.faiss", "--factory",
                       "IVF16,PQ2", "--target-recall", "0.999")
    assert rc == 0
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "target 0.999 not met" in warn[0] and "nprobe=16" in warn[0], err
    assert "NOT met" in out


def test_stale_index_refused_by_info_search_and_serve(capsys, tmp_path, cache, data):
    X, _ = data
    out_idx = tmp_path / "i.faiss"
    assert run(capsys, "index", "build", cache.root, "-o", out_idx)[0] == 0
    assert run(capsys, "index", "info", out_idx)[0] == 0
    # the source cache is rebuilt (other rows under the same ids): the index is stale
    from_arrays(cache.root, {"pooled": X[::-1].copy()}, labels=np.arange(len(X)) % 5, overwrite=True,
                durable=False)
    for args in (("index", "info", out_idx), ("search", out_idx, f"{cache.root}:0"),
                 ("serve", out_idx, "--port", "0")):
        line = one_line_error(capsys, *args)
        assert "stale index" in line and "rebuilt" in line and f"svgfeat index build {cache.root}" in line, line
    with pytest.raises(CacheError, match="stale index"):
        FaissIndex.load(out_idx)


BAD_FIELDS = [("dim", "abc"), ("ntotal", -1), ("ntotal", 1.5), ("metric", "cos"), ("keys", "../../etc/passwd"),
              ("recall", [1]), ("search_params", {"nprobe": "x"}), ("provenance", "here"), ("build_seconds", "1s"),
              ("params", {"nprobe": 0}), ("params", {"target_recall": 2}), ("params", {"seed": "0"})]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_sidecar_with_wrong_field_types_is_one_line(capsys, tmp_path, data, field, value):
    X, _ = data
    p = FaissIndex("Flat").fit(X[:100]).save(tmp_path / "i.faiss")
    side_path = tmp_path / "i.faiss.json"
    side = json.loads(side_path.read_text())
    if field == "params":
        side["params"].update(value)
    else:
        side[field] = value
    side_path.write_text(json.dumps(side))
    for args in (("index", "info", p), ("search", p, "x.png")):
        line = one_line_error(capsys, *args)
        assert "index sidecar field" in line and (field if field != "params" else "params.") in line, line
