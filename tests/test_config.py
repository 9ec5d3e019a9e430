"""Tests for grin_engine.config: every bad value is a GrinError with a one-line message naming the setting."""

from __future__ import annotations

import math

import pytest

from grin_engine.config import DataSpec, GrinConfig, GrinError, ModelSpec
from grin_engine.method.losses import LOSSES


def _error(factory, *fragments) -> str:
    with pytest.raises(GrinError) as info:
        factory()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_defaults_are_valid():
    cfg = GrinConfig()
    assert cfg.loss in LOSSES and 0 < cfg.p <= 1 and cfg.sigma2 >= 0
    assert cfg.to_dict()["p"] == cfg.p
    assert ModelSpec().device == "auto" and DataSpec().forget == "harry_potter"


@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.0000001, 1.5, 2, math.nan, math.inf, -math.inf])
def test_bad_p(p):
    _error(lambda: GrinConfig(p=p), "p ")


@pytest.mark.parametrize("p", [1e-9, 0.01, 0.5, 1, 1.0])
def test_good_p(p):
    assert GrinConfig(p=p).p == p


@pytest.mark.parametrize("sigma2", [-1.0, -1e-12, math.nan, math.inf])
def test_bad_sigma2(sigma2):
    _error(lambda: GrinConfig(sigma2=sigma2), "sigma2")


def test_sigma2_zero_is_allowed():
    assert GrinConfig(sigma2=0.0).sigma2 == 0.0


def test_unknown_loss_lists_losses():
    message = _error(lambda: GrinConfig(loss="nope"), "'nope'")
    for name in LOSSES:
        assert name in message


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_registered_loss_is_accepted(loss):
    assert GrinConfig(loss=loss).loss == loss


def test_a_report_of_the_earlier_names_still_reads():
    """Reports written before the loss was called `loss` say `method` and `grun_method`."""
    old = {**GrinConfig().to_dict(), "method": "npo", "grun_method": "ga", "something_else": 1}
    del old["loss"], old["grun_loss"]
    cfg = GrinConfig.from_dict(old)
    assert (cfg.loss, cfg.grun_loss) == ("npo", "ga")


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", -3), ("batch_size", 0), ("max_length", 0), ("max_new_tokens", 0),
    ("lr", 0.0), ("lr", -1e-4), ("lr", math.nan), ("alpha", -1.0), ("gamma", math.nan), ("weight_decay", -0.1),
    ("eps", -1e-8), ("max_grad_norm", -1.0), ("beta", 0.0), ("beta", -0.5), ("beta", math.inf),
])
def test_bad_numbers(field, value):
    _error(lambda: GrinConfig(**{field: value}), field if field != "lr" else "learning rate")


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "tpu", "", "cuda0"])
def test_bad_device(device):
    _error(lambda: ModelSpec("default", device=device), "device")


@pytest.mark.parametrize("device, expected", [("auto", "auto"), ("CPU", "cpu"), (" cuda:1 ", "cuda:1"), ("mps", "mps")])
def test_good_device_is_normalised(device, expected):
    assert ModelSpec("default", device=device).device == expected


def test_bad_dtype_and_empty_model_name():
    _error(lambda: ModelSpec("default", dtype="float8"), "dtype")
    _error(lambda: ModelSpec("   "), "model")


def test_bad_data_spec():
    _error(lambda: DataSpec(forget=" "), "forget")
    _error(lambda: DataSpec(retain=""), "retain")
    _error(lambda: DataSpec(max_items=0), "max_items")


# gamma is not here: like beta, None means "the method's default" (1.0; simnpo 0.125), see test_gamma_none_*.
NUMBER_FIELDS = ["p", "sigma2", "lr", "steps", "batch_size", "alpha", "weight_decay", "eps", "max_grad_norm",
                 "max_length", "max_new_tokens"]


def test_gamma_none_is_the_methods_default_and_bad_gamma_is_an_error():
    assert GrinConfig().gamma is None
    for bad in ("x", -1.0, math.nan, True):
        with pytest.raises(GrinError, match="gamma"):
            GrinConfig(gamma=bad)


def test_new_switches_are_validated():
    for field, bad in (("label_layout", "both"), ("grad_mean", "median")):
        with pytest.raises(GrinError):
            GrinConfig(**{field: bad})


def test_empty_number_is_a_grin_error():
    """A cleared number box in the UI gives None: that is a user's mistake, so a GrinError (the module's contract:
    "a bad value raises GrinError"), not a TypeError from math.isfinite / int()."""
    wrong = {}
    for field in NUMBER_FIELDS:
        try:
            GrinConfig(**{field: None})
            wrong[field] = "accepted"
        except GrinError:
            pass
        except Exception as exc:  # noqa: BLE001 - recorded and reported below
            wrong[field] = f"{type(exc).__name__}: {exc}"
    assert not wrong, wrong


# ---------------------------------------------------------------------------------------------------------------------
# as_number: the one check of a number from a form, a script or the CLI

from grin_engine.config import as_number  # noqa: E402


@pytest.mark.parametrize("name, value, fragment", [
    ("lr", "abc", "learning rate must be a number, got 'abc'"), ("lr", [1], "must be a number, got list"),
    ("lr", math.nan, "finite"), ("seed", 10**30, "seed must be between 0 and 4,294,967,295"),
    ("seed", 1.5, "whole number"), ("seed", "nan", "finite"), ("steps", 10**9, "between 1 and 1,000,000"),
    ("lr", 1e300, "between 0 and 10"), ("lr", True, "got bool"), ("steps", "x" * 1000, "must be a number"),
])
def test_as_number_refuses_with_the_field_named(name, value, fragment):
    _error(lambda: as_number(value, name), fragment)


def test_as_number_reads_text_and_keeps_integers_integral():
    assert as_number(" 5e-4 ", "lr") == 5e-4
    assert as_number("20", "steps") == 20 and isinstance(as_number(20.0, "steps"), int)


@pytest.mark.parametrize("field, value, fragment", [
    ("seed", 10**30, "seed"), ("lr", 1e300, "learning rate must be at most 10"), ("steps", 10**9, "steps"),
    ("grun_steps", 10**9, "grun_steps"), ("seed", -1, "seed"), ("steps", math.inf, "finite"),
])
def test_config_ranges(field, value, fragment):
    _error(lambda: GrinConfig(**{field: value}), fragment)


@pytest.mark.parametrize("name, fragment", [("x" * 5000, "5,000 characters"), ("org/na\nme", "control"),
                                            (5, "must be text")])
def test_bad_model_names(name, fragment):
    _error(lambda: ModelSpec(name), fragment)
