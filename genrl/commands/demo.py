"""`genrl demo CONFIG` (configs/demo/): serve the gradio sampling page (genrl/demo/; docs/demo.md).

Binds 127.0.0.1 unless `host` says otherwise; runs until interrupted. Models are loaded on first use,
so a missing model directory is a message in the page, not a failed start.
"""

from __future__ import annotations

import os

from genrl.config import DemoConfig, save_config
from genrl.errors import ConfigError


def run(config: DemoConfig) -> dict:
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError("genrl demo needs gradio: pip install -e '.[demo]'") from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings
    from genrl.demo.app import launch
    from genrl.demo.backend import DemoBackend

    backend = DemoBackend(config)
    backend.output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, backend.output_dir / "config.yaml")
    demo, url = launch(backend)
    print(f"genrl demo on {url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()  # until Ctrl+C, which closes the server
    return {"url": url}
