"""`genrl export CONFIG` (configs/export/): a policy (teacher or distilled student) as a self-contained
directory of ONNX, safetensors, normaliser statistics, a manifest and a numpy + onnxruntime runtime
(genrl/export/policy_export.py; docs/export.md)."""

from __future__ import annotations

from genrl.config import ExportConfig
from genrl.export.policy_export import export_policy


def run(config: ExportConfig) -> dict:
    return export_policy(config)
