"""lsal simulate: the oracle simulation on tiny data (the production learner and selection.select).

Tabular data: 200 rows of scikit-learn's bundled breast cancer set (Wolberg, Street & Mangasarian,
UCI Breast Cancer Wisconsin (Diagnostic), 1995), first 6 feature columns.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from backend import cli, selection, simulate, strategies
from backend.learner import Learner
from backend.simulate import SimulationConfig, SimulationError, aulc, labels_to_reach, summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tabular_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(data.target), 200, replace=False))
    path = tmp_path_factory.mktemp("sim") / "cancer.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{j}" for j in range(6)] + ["diagnosis"])
        for i in rows:
            w.writerow([f"{v:.6g}" for v in data.data[i, :6]] + [data.target_names[data.target[i]]])
    return path


WORDS = {
    "spam": ["win", "prize", "cash", "free", "claim", "urgent", "call", "now", "txt", "offer"],
    "ham": ["see", "you", "later", "lunch", "home", "mum", "ok", "thanks", "tonight", "love"],
}


@pytest.fixture(scope="module")
def text_rows() -> list[dict[str, str]]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(120):
        label = "spam" if i % 3 == 0 else "ham"
        own = rng.choice(WORDS[label], 4)
        other = rng.choice(WORDS["ham" if label == "spam" else "spam"], 1)
        rows.append({"text": " ".join([*own, *other]), "label": label})
    return rows


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory, text_rows: list[dict[str, str]]) -> Path:
    path = tmp_path_factory.mktemp("simtext") / "sms.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(text_rows)
    return path


def cfg(data: Path, **kw: Any) -> SimulationConfig:
    base: dict[str, Any] = dict(
        data=str(data),
        label_column="diagnosis",
        strategies=["random", "margin"],
        initial=10,
        batch=10,
        budget=40,
        repeats=2,
        test_fraction=0.25,
        seed=3,
    )
    base.update(kw)
    return SimulationConfig(**base)


@pytest.fixture(scope="module")
def doc(tabular_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out")
    return simulate.simulate(cfg(tabular_csv, out=str(out)), progress=io.StringIO())


# -- pure helpers --------------------------------------------------------------------------------


def test_aulc_exact() -> None:
    assert aulc([10, 20, 30], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert aulc([10, 30], [1.0, 1.0]) == pytest.approx(1.0)
    # uneven steps are weighted by their width: (0.2+0.4)/2*10 + (0.4+0.4)/2*30 = 3 + 12 over 40
    assert aulc([0, 10, 40], [0.2, 0.4, 0.4]) == pytest.approx(15 / 40)
    assert aulc([10], [0.8]) == 0.8


def test_labels_to_reach_requires_staying_above() -> None:
    n = [10, 20, 30, 40]
    assert labels_to_reach(n, [0.5, 0.96, 0.94, 0.97], 0.95) == 40  # the dip at 30 does not count
    assert labels_to_reach(n, [0.96, 0.97, 0.99, 0.99], 0.95) == 10
    assert labels_to_reach(n, [0.5, 0.96, 0.97, 0.94], 0.95) is None  # below at the budget
    assert labels_to_reach(n, [0.5, 0.6, 0.7, 0.95], 0.95) == 40  # equal counts as reached


def test_summarize_ratios_and_wins_exact() -> None:
    n = [10, 20, 30]
    runs = {
        "random": [
            {"n_labels": n, "accuracy": [0.5, 0.7, 0.95], "macro_f1": [0.5, 0.7, 0.95]},
            {"n_labels": n, "accuracy": [0.5, 0.8, 0.95], "macro_f1": [0.5, 0.8, 0.95]},
        ],
        "margin": [
            {"n_labels": n, "accuracy": [0.5, 0.95, 1.0], "macro_f1": [0.5, 0.95, 1.0]},
            {"n_labels": n, "accuracy": [0.5, 0.7, 0.9], "macro_f1": [0.5, 0.7, 0.9]},
        ],
    }
    s = summarize(runs, {"accuracy": 1.0, "macro_f1": 1.0})
    m, r = s["margin"]["accuracy"], s["random"]["accuracy"]
    assert r["aulc_per_repeat"] == [pytest.approx(0.7125), pytest.approx(0.7625)]
    assert m["aulc_per_repeat"] == [pytest.approx(0.85), pytest.approx(0.7)]
    assert m["aulc_wins_vs_random"] == 0.5 and r["aulc_wins_vs_random"] == 1.0
    # mean curves: random [0.5, 0.75, 0.95], margin [0.5, 0.825, 0.95]; 95% of 1.0 first held at 30
    assert r["labels_to_95"] == 30 and m["labels_to_95"] == 30 and m["ratio_to_random_95"] == 1.0
    assert m["labels_to_95_per_repeat"] == [20, None] and r["labels_to_99"] is None
    assert m["ratio_to_random_99"] is None
    assert m["final"] == pytest.approx(0.95)


def test_initial_set_per_seed_and_two_classes() -> None:
    y = ["a"] * 95 + ["b"] * 5
    a, b = simulate.initial_set(y, 4, 0), simulate.initial_set(y, 4, 1)
    assert a != b and len(set(a)) == 4
    assert simulate.initial_set(y, 4, 0) == a  # deterministic for a seed
    for seed in range(30):  # most draws of 4 from 95% 'a' hold one class: the swap fixes every one
        assert len({y[i] for i in simulate.initial_set(y, 4, seed)}) == 2


# -- the simulation ------------------------------------------------------------------------------


def test_curves_json_schema_and_grid(doc: dict[str, Any]) -> None:
    assert doc["schema_version"] == 1
    assert doc["dataset"]["n_pool"] == 150 and doc["dataset"]["n_test"] == 50
    assert doc["dataset"]["kind"] == "tabular" and doc["dataset"]["labels"] == ["benign", "malignant"]
    assert doc["full_pool"]["n_labels"] == 150
    assert set(doc["runs"]) == {"random", "margin"} == set(doc["summary"])
    for reps in doc["runs"].values():
        assert [r["repeat"] for r in reps] == [0, 1] and [r["seed"] for r in reps] == [3, 4]
        for r in reps:
            assert r["n_labels"] == [10, 20, 30, 40]
            assert len(r["accuracy"]) == len(r["macro_f1"]) == 4
            assert all(0 <= v <= 1 for v in r["accuracy"] + r["macro_f1"])
            assert len(r["labeled_order"]) == 40 == len(set(r["labeled_order"]))
    for name, per in doc["summary"].items():
        for metric in ("accuracy", "macro_f1"):
            e = per[metric]
            areas = [aulc([10, 20, 30, 40], r[metric]) for r in doc["runs"][name]]
            assert e["aulc_per_repeat"] == [round(a, 6) for a in areas]
            assert e["aulc"] == round(float(np.mean(areas)), 6) and 0 <= e["aulc"] <= 1
            assert {"labels_to_95", "labels_to_99", "ratio_to_random_95", "ratio_to_random_99"} <= set(e)
    assert doc["summary"]["random"]["accuracy"]["aulc_wins_vs_random"] == 1.0


def test_every_strategy_starts_from_the_same_initial_set(doc: dict[str, Any]) -> None:
    for rep in range(2):
        a, b = doc["runs"]["random"][rep], doc["runs"]["margin"][rep]
        assert a["labeled_order"][:10] == b["labeled_order"][:10]
        assert a["accuracy"][0] == b["accuracy"][0] and a["macro_f1"][0] == b["macro_f1"][0]
    r0, r1 = doc["runs"]["margin"]
    assert set(r0["labeled_order"][:10]) != set(r1["labeled_order"][:10])


def test_files_written(doc: dict[str, Any], tabular_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = simulate.simulate(
        cfg(tabular_csv, out=str(out), strategies=["random"], repeats=1, budget=20), progress=io.StringIO()
    )
    on_disk = json.loads((out / "curves.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_picks_come_from_selection_select(tabular_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int, bool]] = []
    real = selection.select

    def spy(learner: Any, inputs: Any, name: str, depth: int, **kw: Any) -> Any:
        res = real(learner, inputs, name, depth, **kw)
        calls.append((name, depth, len(inputs), kw["multi_label"]))
        return res

    monkeypatch.setattr(selection, "select", spy)
    res = simulate.simulate(
        cfg(tabular_csv, strategies=["entropy"], repeats=1, batch=15, budget=35), progress=io.StringIO()
    )
    # last batch shortened to land on the budget; the pool shrinks by each batch
    assert calls == [("entropy", 15, 140, False), ("entropy", 10, 125, False)]
    assert res["runs"]["entropy"][0]["n_labels"] == [10, 25, 35]


def test_picks_follow_priority_order_of_the_strategy(doc: dict[str, Any], tabular_csv: Path) -> None:
    # Re-derive the first margin batch of repeat 0 by hand with the production pieces.
    plan_doc = doc["runs"]["margin"][0]
    ds = simulate.build_dataset(tabular_csv, "diagnosis")
    pool, _ = simulate.split(ds.y, 0.25, 3)
    pool_inputs = [ds.inputs[i] for i in pool]
    pool_y = [ds.y[i] for i in pool]
    labeled = plan_doc["labeled_order"][:10]
    assert labeled == simulate.initial_set(pool_y, 10, 3)
    from backend.learner import Learner

    learner = Learner(ds.spec, seed=3).fit([pool_inputs[i] for i in labeled], [pool_y[i] for i in labeled])
    rest = [i for i in range(len(pool_inputs)) if i not in set(labeled)]
    X = learner.transform([pool_inputs[i] for i in rest])
    info = strategies.margin(learner.predict_proba(X))
    expect = [rest[j] for j in strategies.priority_order(info, 10)]
    assert plan_doc["labeled_order"][10:20] == expect


def test_jobs_two_gives_identical_curves(doc: dict[str, Any], tabular_csv: Path) -> None:
    par = simulate.simulate(cfg(tabular_csv, jobs=2), progress=io.StringIO())
    for name in ("random", "margin"):
        for a, b in zip(doc["runs"][name], par["runs"][name], strict=True):
            assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_default_reuses_the_resolved_strategy(tabular_csv: Path) -> None:
    res = simulate.simulate(
        cfg(tabular_csv, strategies=["default", "random", strategies.DEFAULT_STRATEGY], repeats=1, budget=30),
        progress=io.StringIO(),
    )
    assert res["resolved"]["default"] == strategies.DEFAULT_STRATEGY
    assert res["runs"]["default"][0]["labeled_order"] == res["runs"][strategies.DEFAULT_STRATEGY][0]["labeled_order"]


def test_progress_bar_counts_every_step(tabular_csv: Path) -> None:
    err = io.StringIO()
    simulate.simulate(cfg(tabular_csv, repeats=1, budget=30), progress=err)
    text = err.getvalue()
    assert text.endswith("\n") and "6/6 steps" in text  # 2 strategies x 1 repeat x (10, 20, 30)


def test_text_csv_and_jsonl_agree(text_csv: Path, text_rows: list[dict[str, str]], tmp_path: Path) -> None:
    jsonl = tmp_path / "sms.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in text_rows))
    kw: dict[str, Any] = dict(label_column="label", text_column="text", repeats=1, budget=30, strategies=["margin"])
    a = simulate.simulate(cfg(text_csv, **kw), progress=io.StringIO())
    b = simulate.simulate(cfg(jsonl, **kw), progress=io.StringIO())
    assert a["dataset"]["kind"] == "text" and a["dataset"]["labels"] == ["ham", "spam"]
    assert a["runs"]["margin"][0]["labeled_order"] == b["runs"]["margin"][0]["labeled_order"]
    assert a["runs"]["margin"][0]["accuracy"] == b["runs"]["margin"][0]["accuracy"]


def test_label_config_gives_the_spec(text_rows: list[dict[str, str]], tmp_path: Path) -> None:
    path = tmp_path / "spam.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": "spam" if r["label"] == "spam" else "no_spam"} for r in text_rows)
    ds = simulate.build_dataset(path, "label", label_config=ROOT / "label_config" / "spam.xml")
    assert ds.spec.labels == ("spam", "no_spam") and ds.spec.data_key == "text" and ds.spec.kind == "text"
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello there,ham\nwin cash,spam\n")
    with pytest.raises(SimulationError, match=r"label values \['ham'\] are not choices"):
        simulate.build_dataset(bad, "label", label_config=ROOT / "label_config" / "spam.xml")


# -- bad input: one line, exit code 2 ------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(["simulate", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def base_args(data: Path, out: Path) -> list[str]:
    return [
        "--data",
        str(data),
        "--label-column",
        "diagnosis",
        "--strategies",
        "random,margin",
        "--initial",
        "10",
        "--batch",
        "10",
        "--budget",
        "30",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]


def replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--label-column", "nope"), "label column 'nope' not in the file"),
        (("--strategies", "margin,telepathy"), "unknown strategy 'telepathy'"),
        (("--budget", "151"), "--budget (151) is larger than the training pool (150 rows"),
        (("--data", "/nonexistent/file.csv"), "cannot read the file"),
        (("--data", "/etc/hostname"), "unsupported file type"),
        (("--initial", "1"), "--initial must be 0 (the server's cold-start order) or >= 2"),
    ],
)
def test_bad_input_one_line_exit_2(
    change: tuple[str, str], message: str, tabular_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(replace_arg(base_args(tabular_csv, tmp_path / "o"), *change), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lsal simulate: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_missing_feature_and_text_columns(
    tabular_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--feature-columns", "f0,zz"], capsys)
    assert code == 2 and "feature column(s) ['zz'] not in the file" in err and err.count("\n") == 1
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--text-column", "body"], capsys)
    assert code == 2 and "text column 'body' not in the file" in err and err.count("\n") == 1


def test_single_class_label_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.csv"
    path.write_text("x,diagnosis\n" + "".join(f"{i},benign\n" for i in range(50)))
    code, err = run_cli(base_args(path, tmp_path / "o"), capsys)
    assert code == 2 and "has a single class ('benign')" in err and err.count("\n") == 1


def test_unreadable_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"x,diagnosis\n\xff\xfe\x00\x81,1\n")
    code, err = run_cli(base_args(path, tmp_path / "o"), capsys)
    assert code == 2 and "cannot read the file" in err and err.count("\n") == 1


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"x": 1, "diagnosis": "a"}\nnot json\n')
    proc = subprocess.run(
        [sys.executable, "-m", "backend.cli", "simulate", *base_args(bad, tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr == f"lsal simulate: error: --data {bad}: line 2 is not JSON "
        "(Expecting value: line 1 column 1 (char 0))\n"
    )
    assert "Traceback" not in proc.stderr


def test_cli_success_prints_tables(tabular_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["simulate", *base_args(tabular_csv, tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[1].split() == [
        "strategy",
        "AULC",
        "wins",
        "n@95%",
        "n@99%",
        "x",
        "rnd",
        "95",
        "x",
        "rnd",
        "99",
    ]
    assert (tmp_path / "o" / "curves.json").exists() and (tmp_path / "o" / "curves.png").exists()


def test_learner_param_is_validated(tabular_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--learner-param", "C=0"], capsys)
    assert code == 2 and err == "lsal simulate: error: --learner-param: C must be > 0, got 0\n"
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--learner-param", "soft_vote=yes"], capsys)
    assert code == 2
    assert err == "lsal simulate: error: --learner-param: soft_vote must be true/false or 1/0, got 'yes'\n"
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--learner-param", "colour=blue"], capsys)
    assert code == 2 and "--learner-param" in err and "colour" in err and err.count("\n") == 1
    code, err = run_cli([*base_args(tabular_csv, tmp_path / "o"), "--learner-param", "C"], capsys)
    assert code == 2 and "expected KEY=VALUE" in err


# -- replaying production: a fixed test file, the cold-start order --------------------------------


def test_test_data_scores_every_run_on_that_file(text_rows: list[dict[str, str]], tmp_path: Path) -> None:
    pool, test = tmp_path / "pool.csv", tmp_path / "test.csv"
    for path, rows in ((pool, text_rows[:80]), (test, text_rows[80:])):
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(rows)
    d = simulate.simulate(
        cfg(pool, label_column="label", text_column="text", test_data=str(test), budget=30, repeats=1),
        progress=io.StringIO(),
    )
    assert d["dataset"]["n_pool"] == 80 and d["dataset"]["n_test"] == 40  # no split: all of pool.csv
    assert d["config"]["test_data"] == str(test)
    # The first point is the initial model scored on exactly test.csv.
    run = d["runs"]["random"][0]
    learner = simulate.Learner(d_spec := simulate.build_dataset(pool, "label", text_column="text").spec, seed=3)
    learner.fit(
        [text_rows[i]["text"] for i in run["labeled_order"][:10]],
        [text_rows[i]["label"] for i in run["labeled_order"][:10]],
    )
    proba = learner.predict_proba(learner.transform([r["text"] for r in text_rows[80:]]))
    pred = [learner.classes_[j] for j in proba.argmax(axis=1)]
    acc = np.mean([p == r["label"] for p, r in zip(pred, text_rows[80:], strict=True)])
    assert run["accuracy"][0] == pytest.approx(acc, abs=1e-6)
    assert d_spec.kind == "text"
    with pytest.raises(SimulationError, match="--test-data has labels the pool never has"):
        bad = tmp_path / "bad.csv"
        bad.write_text("text,label\nhello,other\nwin cash,spam\n")
        simulate.simulate(
            cfg(pool, label_column="label", text_column="text", test_data=str(bad)), progress=io.StringIO()
        )


def test_initial_zero_starts_from_the_servers_cold_start_order(text_csv: Path) -> None:
    d = simulate.simulate(
        cfg(text_csv, label_column="label", text_column="text", initial=0, budget=30, repeats=2),
        progress=io.StringIO(),
    )
    ds = simulate.build_dataset(text_csv, "label", text_column="text")
    pool_idx, _ = simulate.split(ds.y, 0.25, 3)
    pool = [ds.inputs[i] for i in pool_idx]
    # The server clusters its pool cache's embeddings (float16) when the features use them.
    cached = Learner(ds.spec).embed(pool).astype(np.float16)
    for r, seed in enumerate((3, 4)):
        order = selection.seed_order(ds.spec, pool, len(pool), seed, embeddings=cached).rows.tolist()
        first = d["runs"]["random"][r]["labeled_order"][: simulate.COLD_START_LABELS]
        assert first == order[: simulate.COLD_START_LABELS]  # the seed order as the server writes it
        assert d["runs"]["margin"][r]["labeled_order"][:10] == first
    assert d["runs"]["random"][0]["n_labels"][0] == simulate.COLD_START_LABELS
    with pytest.raises(SimulationError, match="--initial must be 0"):
        simulate.simulate(cfg(text_csv, initial=1), progress=io.StringIO())


def test_text_runs_hand_selection_the_pool_cache_embeddings(text_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the cycle does: the pool's and the labeled rows' float16 embeddings reach selection.select."""
    seen: list[tuple[np.ndarray, np.ndarray, list[Any], list[Any]]] = []
    real = selection.select

    def spy(learner: Any, inputs: Any, name: str, depth: int, **kw: Any) -> Any:
        seen.append((kw["embeddings"], kw["labeled_embeddings"], list(inputs), list(kw["labeled_inputs"])))
        return real(learner, inputs, name, depth, **kw)

    monkeypatch.setattr(selection, "select", spy)
    simulate.simulate(
        cfg(text_csv, label_column="label", text_column="text", strategies=["diversity"], repeats=1, budget=30),
        progress=io.StringIO(),
    )
    ds = simulate.build_dataset(text_csv, "label", text_column="text")
    learner = Learner(ds.spec)
    assert len(seen) == 2
    for emb, labeled_emb, pool, labeled in seen:
        assert emb.dtype == np.float16 and labeled_emb.dtype == np.float16
        assert np.array_equal(emb, learner.embed(pool).astype(np.float16))
        assert np.array_equal(labeled_emb, learner.embed(labeled).astype(np.float16))
