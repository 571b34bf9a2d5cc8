"""Export of policies to a robot stack: `policy_export.py` writes the directory, `chain_constants.py` the
sampler as numbers, `runtime.py` runs it with numpy + onnxruntime only (copied into every export)."""
