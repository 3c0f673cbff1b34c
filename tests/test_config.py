from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from backend.config import ENV_VARS, PER_PROJECT, ConfigError, ProjectConfig, Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.label_studio_url == "http://localhost:8080"
    assert s.redis_url == ""
    assert s.model_dir == Path("./models")
    assert (s.min_labels, s.retrain_every, s.queue_depth, s.keep_versions) == (10, 1, 500, 10)
    assert s.set_sampling is True
    assert s.basic_auth is None
    assert s.strategy == "default"


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "LABEL_STUDIO_URL": "https://ls.example.org/",
            "REDIS_URL": "redis://cache:6379/2",
            "AL_RETRAIN_EVERY": "5",
            "AL_SET_SAMPLING": "false",
            "BASIC_AUTH_USER": "ls",
            "BASIC_AUTH_PASS": "pw",
            "AL_STRATEGY": "entropy",
            "LOG_FORMAT": "JSON",
        }
    )
    assert s.label_studio_url == "https://ls.example.org"
    assert s.redis_url == "redis://cache:6379/2"
    assert s.retrain_every == 5
    assert s.set_sampling is False
    assert s.basic_auth == ("ls", "pw")
    assert s.strategy == "entropy"
    assert s.log_format == "json"


@pytest.mark.parametrize(
    ("env", "field", "fragment"),
    [
        ({"AL_RETRAIN_EVERY": "often"}, "AL_RETRAIN_EVERY", "expected an integer >= 1, got 'often'"),
        ({"AL_RETRAIN_EVERY": "0"}, "AL_RETRAIN_EVERY", "got 0"),
        ({"AL_MIN_LABELS": "1"}, "AL_MIN_LABELS", "got 1"),
        ({"AL_SET_SAMPLING": "maybe"}, "AL_SET_SAMPLING", "expected true or false, got 'maybe'"),
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL", "expected a URL starting with http://"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL", "redis://"),
        ({"AL_STRATEGY": "clever"}, "AL_STRATEGY", "unknown strategy 'clever'; valid names: least_confidence"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "expected one of text, json, got 'xml'"),
        ({"LS_TIMEOUT": "-1"}, "LS_TIMEOUT", "expected a number > 0.0"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS", "must be set together"),
        ({"RQ_QUEUE": "a b"}, "RQ_QUEUE", "expected 1-64 letters"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fragment in str(info.value)


def test_secret_values_are_not_echoed() -> None:
    s = Settings.from_env({"LABEL_STUDIO_API_KEY": "sekrit-123", "AL_TRIGGER_TOKEN": "tok-456"})
    assert "sekrit-123" not in repr(s)
    assert "tok-456" not in repr(s)


def test_every_env_var_has_a_default_and_meaning() -> None:
    names = [v.name for v in ENV_VARS]
    assert len(names) == len(set(names))
    assert all(v.meaning for v in ENV_VARS)


def test_each_default_is_what_its_variable_parses_to() -> None:
    """The documented default text and the typed default are one fact: parsing one gives the other."""
    env = {v.name: v.default for v in ENV_VARS}
    assert Settings.from_env(env) == Settings() == Settings.from_env({})
    assert [v.field for v in ENV_VARS] == [f.name for f in fields(Settings)]


def test_project_config_is_the_per_project_settings_with_their_defaults() -> None:
    assert list(PER_PROJECT) == [
        "strategy",
        "min_labels",
        "retrain_every",
        "queue_depth",
        "queue_floor",
        "set_sampling",
        "text_features",
        "embedding_model",
        "model",
    ]
    assert [f.name for f in fields(ProjectConfig)] == [*PER_PROJECT, "strategy_params"]  # the last: extra params only
    assert ProjectConfig() == ProjectConfig.defaults(Settings())
    custom = Settings.from_env({"AL_QUEUE_DEPTH": "7", "AL_STRATEGY": "margin"})
    assert ProjectConfig.defaults(custom).as_dict() == {
        "strategy": "margin",
        "min_labels": 10,
        "retrain_every": 1,
        "queue_depth": 7,
        "queue_floor": 50,
        "set_sampling": True,
        "text_features": "tfidf+embedding",
        "embedding_model": "wordllama",
        "strategy_params": {},
        "model": "builtin",
    }


def test_extra_params_use_the_variables_bounds() -> None:
    with pytest.raises(ConfigError) as info:
        ProjectConfig().with_extra_params({"min_labels": 1})
    assert str(info.value) == "extra_params.min_labels: expected an integer >= 2, got 1"


def test_project_overrides() -> None:
    base = ProjectConfig.defaults(Settings.from_env({}))
    cfg = base.with_extra_params({"strategy": "entropy", "queue_depth": "50", "set_sampling": False})
    assert (cfg.strategy, cfg.queue_depth, cfg.set_sampling, cfg.min_labels) == ("entropy", 50, False, 10)
    assert base.with_extra_params(None) is base
    assert base.strategy_params == {}
    tuned = base.with_extra_params({"strategy": "default", "strategy_params": {"prefilter": 4, "base": "entropy"}})
    assert tuned.strategy_params == {"prefilter": 4, "base": "entropy"}  # default resolves to diversity


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"strategy": "best"}, "extra_params.strategy", "valid names: least_confidence, margin"),
        ({"queue_depth": "-3"}, "extra_params.queue_depth", "got -3"),
        ({"colour": "blue"}, "extra_params.colour", "unknown setting"),
        ({"strategy": ["margin"]}, "extra_params.strategy", "expected a scalar"),
        ({"strategy_params": 2}, "extra_params.strategy_params", "expected a JSON object"),
        (
            {"strategy": "density", "strategy_params": {"beta": -1}},
            "extra_params.strategy_params.beta",
            "parameter 'beta' of strategy 'density' must be in [0, 100], got -1",
        ),
        (
            {"strategy": "margin", "strategy_params": {"beta": 2}},
            "extra_params.strategy_params.beta",
            "unknown parameter(s) ['beta'] for strategy 'margin'; accepted: ['aggregate']",
        ),
        (
            {"strategy": "diversity", "strategy_params": {"batch_size": 5}},
            "extra_params.strategy_params.batch_size",
            "accepted: ['aggregate', 'base', 'prefilter', 'typical']",
        ),
        (
            {"strategy": "kl_divergence", "strategy_params": {"reduce": "median"}},
            "extra_params.strategy_params.reduce",
            "must be one of max, mean, got 'median'",
        ),
    ],
)
def test_bad_extra_params(extra: dict, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProjectConfig().with_extra_params(extra)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_text_features_and_embedding_model_refuse_bad_values_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"AL_TEXT_FEATURES": "bert"})
    assert e.value.field == "AL_TEXT_FEATURES"
    assert str(e.value) == "AL_TEXT_FEATURES: expected one of tfidf, embedding, tfidf+embedding, got 'bert'"
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"AL_EMBEDDING_MODEL": "glove"})
    assert e.value.field == "AL_EMBEDDING_MODEL" and "'glove'" in str(e.value) and "'wordllama'" in str(e.value)
    assert "\n" not in str(e.value)
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a readable model2vec directory"):
        Settings.from_env({"AL_EMBEDDING_MODEL": missing})
    config = ProjectConfig.defaults(Settings()).with_extra_params({"text_features": "TFIDF"})
    assert config.learner_params() == {"text_features": "tfidf", "embedding_model": "wordllama"}
    with pytest.raises(ConfigError) as e:
        ProjectConfig().with_extra_params({"embedding_model": "/etc/passwd"})
    assert e.value.field == "extra_params.embedding_model" and "valid choices" in str(e.value)


def test_a_project_cannot_choose_a_local_embedding_model_directory(tmp_path: Path) -> None:
    """A request's extra params choose no file to load: a local model directory is the admin's setting."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (model_dir / name).write_bytes(b"")
    admin = Settings.from_env({"AL_EMBEDDING_MODEL": str(model_dir)})
    assert admin.embedding_model == str(model_dir)
    assert ProjectConfig.defaults(admin).embedding_model == str(model_dir)
    for value in (str(model_dir), str(tmp_path), "/etc"):
        with pytest.raises(ConfigError) as e:
            ProjectConfig.defaults(admin).with_extra_params({"embedding_model": value})
        assert e.value.field == "extra_params.embedding_model"
        assert "AL_EMBEDDING_MODEL" in str(e.value) and "missing" not in str(e.value)
    hub = ProjectConfig.defaults(admin).with_extra_params({"embedding_model": "minishlab/potion-base-8M"})
    assert hub.embedding_model == "minishlab/potion-base-8M"
    assert ProjectConfig().with_extra_params({"embedding_model": " wordllama "}).embedding_model == "wordllama"
