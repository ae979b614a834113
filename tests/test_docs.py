"""docs/configuration.md: its option tables are generated from the stages (and so from the core's
configuration dataclasses) and must be current."""

import importlib.util
import os

from photovaez.config import EstimateConfig, ModelConfig, TrainConfig, options

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _make_config_doc():
    spec = importlib.util.spec_from_file_location("make_config_doc", os.path.join(ROOT, "docs", "make_config_doc.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_doc_is_generated_and_current():
    doc = _make_config_doc()
    with open(doc.DOC) as fh:
        text = fh.read()
    assert doc.updated(text) == text, "docs/configuration.md is out of date: run python docs/make_config_doc.py --write"
    for config in (ModelConfig, TrainConfig, EstimateConfig):
        for o in options(config):  # every core setting, with its own help text, under its stage
            assert f"| `{o.name}` |" in text and o.help.replace("|", "/") in text, (config.__name__, o.name)
