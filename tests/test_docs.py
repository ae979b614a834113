import os

from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")


def test_every_stage_option_is_documented():
    text = open(DOCS).read()
    for cls in (PhotoVAEzInformer, PhotoVAEzEstimator):
        section = text.split(f"### {cls.__name__}")[1].split("### ")[0]
        missing = [k for k in cls.config_options if f"| `{k}` |" not in section]
        assert not missing, f"{cls.__name__} options missing from docs/configuration.md: {missing}"
