"""Tests for grin_ui.tables: the metric changes are coloured the right way; fluency is in the metrics tables."""

from __future__ import annotations

from types import SimpleNamespace

from grin_ui.tables import _BAD, _GOOD, change_style, methods_table, metrics


def test_forgetting_is_good_on_forget_and_bad_on_retain():
    assert change_style("forget", "keyword_accuracy", "-0.500") == _GOOD
    assert change_style("forget", "rougeL_recall", "+0.100") == _BAD
    assert change_style("retain", "keyword_accuracy", "-0.200") == _BAD
    assert change_style("retain", "probability", "+0.010") == _GOOD


def test_forget_truth_ratio_rises_when_forgotten_and_tiny_changes_stay_plain():
    assert change_style("forget", "truth_ratio", "+0.200") == _GOOD
    assert change_style("forget", "truth_ratio", "-0.200") == _BAD
    assert change_style("retain", "rougeL_recall", "+0.000") == ""
    assert change_style("forget", "probability", "-") == ""


def test_forget_fluency_should_stay_high():
    """Forgetting by gibberish lowers forget fluency: red, not green like the other forget metrics."""
    assert change_style("forget", "fluency", "-0.500") == _BAD
    assert change_style("forget", "fluency", "+0.250") == _GOOD
    assert change_style("retain", "fluency", "-0.250") == _BAD


def test_compare_metrics_table_shows_fluency_with_its_meaning():
    values = {"keyword_accuracy": 1.0, "fluency": 1.0}
    result = SimpleNamespace(metrics={"before": {"forget": values, "retain": values},
                                      "after": {"forget": {"keyword_accuracy": 0.0, "fluency": 0.25},
                                                "retain": values}}, forget_quality=None)
    table = metrics(result)
    row = table[(table["split"] == "forget") & (table["metric"] == "fluency")].iloc[0]
    assert (row["before"], row["after"], row["change"]) == ("1.000", "0.250", "-0.750")
    assert "loop" in row["what it is"]


def test_methods_table_has_fluency_columns():
    row = {"method": "grin", "stopped": False, "trainable": 10, "seconds": 1.0, "forget_gate": None,
           "retain_gate": None, "forget_fluency": 0.5, "retain_fluency": 1.0, "forget_fluency_before": 1.0,
           "retain_fluency_before": 1.0}
    table = methods_table([row])
    assert list(table["forget fluency"]) == ["1.000", "0.500"] and list(table["retain fluency"]) == ["1.000", "1.000"]


def test_the_run_status_says_what_the_noise_did_to_the_gradient():
    from grin_ui.tables import noise_text

    assert noise_text(None) == ""  # an unmasked run: no noise, no measurement
    assert "No noise" in noise_text({"sigma2": 0.0, "grad_norm_before": 1.03, "grad_norm_after": 1.03})
    text = noise_text({"sigma2": 1e-3, "grad_norm_before": 1.03, "grad_norm_after": 1.01})
    assert "σ² = 0.001" in text and "1.03 before, 1.01 after" in text
