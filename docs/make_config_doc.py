#!/usr/bin/env python
"""Regenerate the option tables of docs/configuration.md from the stages' config_options.

    python docs/make_config_doc.py > docs/configuration_options.md
"""
from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer
from rail.photovaez.cli.options import stage_param


def param(key, p):
    p = stage_param(key, p)  # RAIL's SHARED_PARAMS are resolved only when the stage is built
    return p.dtype.__name__ if p.dtype else "any", p.default, (p.msg or "").replace("|", "/")


def table(cls):
    lines = [f"### {cls.__name__}", "", "| option | type | default | meaning |", "|---|---|---|---|"]
    for key, p in cls.config_options.items():
        dtype, default, msg = param(key, p)
        lines.append(f"| `{key}` | {dtype} | `{default!r}` | {msg} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(c) for c in (PhotoVAEzInformer, PhotoVAEzEstimator)))
