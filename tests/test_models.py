"""models: the interface's checks, the scikit-learn wrapper, the built-in models, safe artifacts, the
registry (entry points and AL_MODELS), and the Learner-shaped scorer."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from backend.labelconfig import TaskSpec
from backend.models import (
    BUILTIN,
    ImageModel,
    LearnerModel,
    Model,
    ModelError,
    ModelRegistry,
    ModelScorer,
    SklearnModel,
    artifacts,
    scorer_for,
    sklearn_model,
)
from backend.models.base import check_committee, check_features, check_proba

TEXT = TaskSpec("label", "text", "text", ("spam", "ham"), False, "text", "Text")
MULTI = TaskSpec("tags", "text", "text", ("a", "b", "c"), True, "text", "Text")
IMAGE = TaskSpec("digit", "img", "image", tuple("0123456789"), False, "image", "Image")
TEXTS = ["win cash now", "free prize call", "cash prize win", "see you at dinner", "mom says hi", "dinner at six"]
LABELS = ["spam", "spam", "spam", "ham", "ham", "ham"]

NbText = sklearn_model(lambda: make_pipeline(TfidfVectorizer(), MultinomialNB()), object_tags={"Text"}, name="NbText")


# -- the scikit-learn wrapper -----------------------------------------------------------------------


def test_sklearn_wrapper_fits_predicts_in_label_config_order() -> None:
    model = NbText(TEXT, seed=0).fit(TEXTS, LABELS)
    assert model.classes_ == ("spam", "ham")  # the config's order, not sorted ("ham" < "spam")
    p = model.predict_proba(["cash prize", "dinner mom"])
    assert p.shape == (2, 2)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert model.predict_labels(p) == [["spam"], ["ham"]]
    assert model.capabilities() == frozenset({"committee", "features"})


def test_sklearn_wrapper_committee_is_the_estimator_plus_bootstrap_clones() -> None:
    model = NbText(TEXT, seed=0).fit(TEXTS, LABELS)
    c = model.committee_proba(TEXTS)
    assert c.shape == (3, 6, 2)
    assert np.allclose(c[0], model.predict_proba(TEXTS))  # member 0 is the model itself
    assert not np.allclose(c[1], c[0])  # a bootstrap member saw other rows
    # Seeded: the same seed gives the same committee.
    again = NbText(TEXT, seed=0).fit(TEXTS, LABELS).committee_proba(TEXTS)
    assert np.array_equal(c, again)


def test_sklearn_wrapper_features_are_what_the_last_step_receives() -> None:
    model = NbText(TEXT).fit(TEXTS, LABELS)
    F = model.features(["cash cash"])
    vec = model.estimator_[0]
    assert (vec.transform(["cash cash"]) != F).nnz == 0


def test_bare_estimator_on_text_has_no_features_and_committee_size_one_has_no_committee() -> None:
    Bare = sklearn_model(lambda: LogisticRegression(), object_tags={"Table"}, committee_size=1)
    spec = TaskSpec("c", "t", "row", ("x", "y"), False, "tabular", "Table")
    assert Bare(spec).capabilities() == frozenset()
    assert NbText(TEXT).capabilities() >= {"committee"}


def test_sklearn_wrapper_multi_label_uses_an_indicator_matrix() -> None:
    from sklearn.multiclass import OneVsRestClassifier

    Multi = sklearn_model(
        lambda: make_pipeline(TfidfVectorizer(), OneVsRestClassifier(LogisticRegression())),
        object_tags={"Text"},
        multi_label=True,
    )
    y = [["a"], ["a", "b"], ["b"], ["c"], ["a", "c"], ["b", "c"]]
    model = Multi(MULTI).fit(TEXTS, y)
    assert model.classes_ == ("a", "b", "c")
    p = check_proba(model, model.predict_proba(TEXTS), 6)
    assert p.shape == (6, 3)


@pytest.mark.parametrize(
    ("inputs", "y", "message"),
    [
        (TEXTS, LABELS[:-1], "differ in length: 6 != 5"),
        ([], [], "zero examples"),
        (TEXTS, ["spam"] * 6, r"at least 2 classes to fit, got \['spam'\]"),
    ],
)
def test_sklearn_wrapper_validates_at_the_boundary(inputs: list, y: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NbText(TEXT).fit(inputs, y)


def test_sklearn_model_helper_refuses_unknown_tags() -> None:
    with pytest.raises(ValueError, match=r"subset of .*got \['Video'\]"):
        sklearn_model(lambda: LogisticRegression(), object_tags={"Video"})


# -- output checks ----------------------------------------------------------------------------------


class Fixed(SklearnModel):
    object_tags = frozenset({"Text"})

    def make_estimator(self) -> object:
        return make_pipeline(TfidfVectorizer(), MultinomialNB())


@pytest.mark.parametrize(
    ("proba", "message"),
    [
        (np.full((2, 3), 1 / 3), r"shape \(2, 3\); expected \(2, 2\)"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), r"returned nan at \(0, 1\)"),
        (np.array([[0.9, 0.9], [0.5, 0.5]]), "row 0 sums to 1.8, not 1"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), r"returned -0.5, outside \[0, 1\]"),
        ("nonsense", "returned str, not an array"),
    ],
)
def test_check_proba_names_the_model_and_the_offending_value(proba: object, message: str) -> None:
    model = Fixed(TEXT).fit(TEXTS, LABELS)
    with pytest.raises(ModelError, match=f"Fixed.predict_proba .*{message}|{message}"):
        check_proba(model, proba, 2)


def test_check_committee_and_features() -> None:
    model = Fixed(TEXT).fit(TEXTS, LABELS)
    with pytest.raises(ModelError, match=r"expected \(m >= 2, 2, 2\)"):
        check_committee(model, np.full((1, 2, 2), 0.5), 2)
    with pytest.raises(ModelError, match=r"features returned shape \(3, 4\); expected \(2, d >= 1\)"):
        check_features(model, np.zeros((3, 4)), 2)
    with pytest.raises(ModelError, match="NaN or infinite"):
        check_features(model, np.array([[np.inf], [0.0]]), 2)


# -- built-in models --------------------------------------------------------------------------------


def test_learner_model_is_the_learner(tmp_path: Path) -> None:
    model = LearnerModel(TEXT, seed=0).fit(TEXTS, LABELS)
    X = model.learner.transform(TEXTS)
    assert np.array_equal(model.predict_proba(TEXTS), model.learner.predict_proba(X))
    assert np.array_equal(model.committee_proba(TEXTS), model.learner.committee_proba(X))
    assert model.capabilities() == frozenset({"committee", "features"})
    assert scorer_for(model) is model.learner
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learner.json", "learner.skops"]
    loaded = LearnerModel.load(tmp_path, TEXT)
    assert loaded.classes_ == model.classes_
    assert np.array_equal(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS))


@pytest.mark.parametrize("kind", ["text", "tabular", "multi"])
def test_every_kind_of_learner_round_trips_through_its_trusted_types(tmp_path: Path, kind: str) -> None:
    if kind == "tabular":
        spec = TaskSpec("c", "t", "row", ("x", "y"), False, "tabular", "Table")
        inputs: list = [{"a": float(i), "b": float(i % 3)} for i in range(8)]
        y: list = ["x", "y"] * 4
    elif kind == "multi":
        spec, inputs, y = MULTI, TEXTS, [["a"], ["a", "b"], ["b"], ["c"], ["a"], ["b"]]
    else:
        spec, inputs, y = TEXT, TEXTS, LABELS
    model = LearnerModel(spec).fit(inputs, y)
    model.save(tmp_path)
    assert np.array_equal(LearnerModel.load(tmp_path, spec).predict_proba(inputs), model.predict_proba(inputs))


def digit_features() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    from backend.features.image import PixelFeaturizer

    d = load_digits()
    imgs = [
        Image.fromarray((x.reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((32, 32)).convert("RGB")
        for x in d.data[:400]
    ]
    return PixelFeaturizer().transform(imgs), d.target[:400].astype(str)


def test_image_model_learns_digits_from_image_features(tmp_path: Path) -> None:
    X, y = digit_features()
    model = ImageModel(IMAGE, seed=0).fit(list(X[:300]), list(y[:300]))
    accuracy = float(np.mean([p[0] for p in model.predict_labels(model.predict_proba(list(X[300:])))] == y[300:]))
    assert accuracy > 0.85
    model.save(tmp_path)
    loaded = ImageModel.load(tmp_path, IMAGE)
    assert np.array_equal(loaded.predict_proba(list(X[300:])), model.predict_proba(list(X[300:])))
    assert loaded.committee_proba(list(X[:5])).shape == (3, 5, 10)


def test_image_model_multi_label_with_a_label_never_seen(tmp_path: Path) -> None:
    spec = TaskSpec("tags", "img", "image", ("round", "dark", "never"), True, "image", "Image")
    X, _ = digit_features()
    y = [["round"] if i % 2 else ["dark"] for i in range(40)]
    model = ImageModel(spec).fit(list(X[:40]), y)
    p = check_proba(model, model.predict_proba(list(X[:3])), 3)
    assert p.shape == (3, 3)
    model.save(tmp_path)  # OneVsRest's constant predictor for "never" is a trusted type too
    assert np.array_equal(ImageModel.load(tmp_path, spec).predict_proba(list(X[:3])), p)


# -- artifacts cannot execute code ------------------------------------------------------------------


class Evil:
    """Loading this through pickle would run os.system; skops must refuse to build it."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch " + os.environ.get("LSAL_TEST_MARKER", "/tmp/lsal-pwned"),))


def test_crafted_artifact_naming_an_untrusted_type_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LSAL_TEST_MARKER", str(marker))
    sio.dump({"estimator": Evil(), "members": [], "classes": ["a", "b"]}, tmp_path / "model.skops")
    with pytest.raises(ModelError, match=r"not trusted: .*test_models.Evil"):
        Fixed.load(tmp_path, TEXT)
    sio.dump({"estimator": os.system, "members": [], "classes": ["a", "b"]}, tmp_path / "model.skops")
    with pytest.raises(ModelError, match=r"not trusted: .*system"):
        Fixed.load(tmp_path, TEXT)
    assert not marker.exists()


def test_pickle_or_joblib_at_the_artifact_path_is_not_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LSAL_TEST_MARKER", str(marker))
    (tmp_path / "learner.skops").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="not a readable model artifact"):
        LearnerModel.load(tmp_path, TEXT)
    joblib.dump(Evil(), tmp_path / "model.skops")
    with pytest.raises(ModelError, match="not a readable model artifact"):
        Fixed.load(tmp_path, TEXT)
    assert not marker.exists()
    # The check is real: unpickling the same bytes does run the command.
    pickle.loads(pickle.dumps(Evil()))
    assert marker.exists()


def test_artifacts_load_trusts_exactly_the_listed_types(tmp_path: Path) -> None:
    model = LearnerModel(TEXT).fit(TEXTS, LABELS)
    artifacts.dump(model.learner, tmp_path / "x.skops")
    with pytest.raises(ModelError, match="backend.learner.Learner"):
        artifacts.load(tmp_path / "x.skops")  # without the Learner's own types
    assert artifacts.load(tmp_path / "x.skops", LearnerModel.trusted_types).classes_ == model.classes_


# -- the registry -----------------------------------------------------------------------------------


PLUGIN = """
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline
from backend.models import sklearn_model

NbModel = sklearn_model(lambda: make_pipeline(TfidfVectorizer(), MultinomialNB()), object_tags={"Text"})
NOT_A_MODEL = 42
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "lsal_test_plugin.py").write_text(PLUGIN)
    (tmp_path / "lsal_test_broken.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("lsal_test_plugin", "lsal_test_broken"):
        sys.modules.pop(name, None)


def test_env_registration_and_per_project_choice(plugin_dir: Path) -> None:
    reg = ModelRegistry.discover(
        "nb=lsal_test_plugin:NbModel, broken=lsal_test_broken:X, nope=lsal_test_plugin:NOT_A_MODEL",
        entry_points=False,
    )
    assert reg.names() == [BUILTIN, "nb"]
    model = reg.create("nb", TEXT, seed=1).fit(TEXTS, LABELS)
    assert model.classes_ == ("spam", "ham")
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in reg.broken["broken"]
    with pytest.raises(ModelError, match="failed to load: ModuleNotFoundError"):
        reg.create("broken", TEXT)
    with pytest.raises(ModelError, match="is 42, not a backend.models.Model subclass"):
        reg.create("nope", TEXT)
    with pytest.raises(ModelError, match="unknown model 'os.system'; registered models: builtin, nb"):
        reg.create("os.system", TEXT)
    with pytest.raises(ModelError, match=r"does not accept <Image> \(it accepts Text\)"):
        reg.create("nb", IMAGE)
    with pytest.raises(ModelError, match="single-label; this label config is multi-label"):
        reg.create("nb", MULTI)


def test_a_name_from_a_request_never_imports_anything(plugin_dir: Path) -> None:
    reg = ModelRegistry.discover("", entry_points=False)
    for name in ("lsal_test_plugin:NbModel", "lsal_test_plugin", "backend.models.builtin:ImageModel"):
        with pytest.raises(ModelError, match="unknown model"):
            reg.create(name, TEXT)
    assert "lsal_test_plugin" not in sys.modules


def test_entry_point_registration(plugin_dir: Path) -> None:
    dist = plugin_dir / "lsal_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lsal-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lsal.models]\nnb-ep = lsal_test_plugin:NbModel\n")
    reg = ModelRegistry.discover("")
    assert "nb-ep" in reg.names()
    assert reg.create("nb-ep", TEXT).object_tags == frozenset({"Text"})


@pytest.mark.parametrize(
    "raw", ["nb", "nb=", "=m:a", "Nb=m:a", "nb=m", "builtin=m:a", "a=m:a,a=m:b", "nb=m:a; rm -rf /"]
)
def test_malformed_al_models_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        ModelRegistry.discover(raw, entry_points=False)


def test_builtin_picks_the_model_that_fits_the_config() -> None:
    reg = ModelRegistry.discover("", entry_points=False)
    assert type(reg.create(BUILTIN, TEXT)) is LearnerModel
    assert type(reg.create(BUILTIN, IMAGE)) is ImageModel
    assert reg.missing(BUILTIN, TEXT, {"committee", "features", "estimator", "labeled"}) == []
    assert reg.missing(BUILTIN, IMAGE, {"committee", "features", "estimator"}) == ["estimator"]


def test_registry_reports_what_a_model_lacks(plugin_dir: Path) -> None:
    (plugin_dir / "lsal_test_plain.py").write_text(
        textwrap.dedent(
            """
            from sklearn.linear_model import LogisticRegression
            from backend.models import sklearn_model
            Plain = sklearn_model(lambda: LogisticRegression(), object_tags={"Table"}, committee_size=1)
            """
        )
    )
    reg = ModelRegistry.discover("plain=lsal_test_plain:Plain", entry_points=False)
    spec = TaskSpec("c", "t", "row", ("x", "y"), False, "tabular", "Table")
    assert reg.missing("plain", spec, {"committee", "features"}) == ["committee", "features"]
    sys.modules.pop("lsal_test_plain", None)


# -- the scorer -------------------------------------------------------------------------------------


def test_model_scorer_computes_each_output_once_and_slices_it_back() -> None:
    model = NbText(TEXT, seed=0).fit(TEXTS, LABELS)
    scorer = ModelScorer(model, committee=True)
    X = scorer.transform(TEXTS)
    assert np.allclose(scorer.predict_proba(X), model.predict_proba(TEXTS))
    assert np.allclose(scorer.committee_proba(X), model.committee_proba(TEXTS))
    assert np.allclose(scorer.predict_proba(X[[4, 1]]), model.predict_proba([TEXTS[4], TEXTS[1]]))
    F = model.features(TEXTS)
    assert np.allclose(X[:, : F.shape[1]].toarray(), F.toarray())
    with pytest.raises(ModelError, match="no estimator factory"):
        scorer.make_estimator()


class NanModel(Fixed):
    def predict_proba(self, inputs: object) -> np.ndarray:
        return np.full((len(inputs), 2), np.nan)  # type: ignore[arg-type]


def test_model_scorer_refuses_nan_probabilities() -> None:
    model = NanModel(TEXT).fit(TEXTS, LABELS)
    with pytest.raises(ModelError, match=r"NanModel.predict_proba returned nan at \(0, 0\)"):
        ModelScorer(model).transform(TEXTS)


def test_model_is_abstract() -> None:
    with pytest.raises(TypeError):
        Model(TEXT)  # type: ignore[abstract]
