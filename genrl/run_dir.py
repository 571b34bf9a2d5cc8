"""A run's output directory: resolved config, metrics.jsonl, checkpoints/, samples/.

Guards the promise that nothing already saved is lost: a directory that already holds a
run is only reused with `resume=true`, and checkpoints are written to a temporary name
and renamed into place, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import torchvision
import yaml

from genrl.config import RESUMABLE_KEYS, Section, changed_keys, save_config
from genrl.errors import CheckpointError, ConfigError

CHECKPOINT_PREFIX = "checkpoint-"


def prepare_output_dir(config: Section, accelerator=None) -> Path:
    """Check and create output_dir; with an accelerator, every rank checks before any rank writes.

    A directory that holds anything a command saved (config.yaml, metrics, checkpoints) is only
    reused by `resume=true` of the same run, and only with the settings it was started with
    (except RESUMABLE_KEYS), unless `resume_allow_changes=true`.
    """
    output_dir = Path(config.output_dir)
    has_run = any((output_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", "summary.json"))
    resume = getattr(config, "resume", False)
    if has_run and not resume:
        hint = "pass resume=true to continue it or " if hasattr(config, "resume") else ""
        raise ConfigError(f"output_dir {output_dir} already holds a run; {hint}choose another output_dir")
    if has_run and resume and not getattr(config, "resume_allow_changes", False):
        _check_same_settings(config, output_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # no rank may see the main rank's fresh directories as an old run
    if accelerator is None or accelerator.is_main_process:
        for sub in ("checkpoints", "samples"):
            (output_dir / sub).mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return output_dir


def _check_same_settings(config: Section, output_dir: Path) -> None:
    saved_path = output_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changed = [key for key in changed_keys(saved, config.model_dump(mode="json")) if key not in RESUMABLE_KEYS]
    if changed:
        raise ConfigError(f"resume would change {', '.join(changed[:5])} of the run in {output_dir}; "
                          f"resume with the same settings, or pass resume_allow_changes=true")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after `last_step`: a run killed between checkpoints redoes those steps on resume."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in lines))


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = _checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def require_checkpoint(output_dir: Path) -> Path:
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        raise CheckpointError(f"resume=true but {output_dir / 'checkpoints'} holds no checkpoint to resume from")
    if not (checkpoint / "trainer_state.json").is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete (no trainer_state.json)")
    return checkpoint


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int | None = None,
                    protect: Path | None = None) -> Path:
    """accelerate save_state into checkpoints/checkpoint-<step>, atomically; every rank takes part.
    With `keep`, older checkpoints beyond the newest `keep` are deleted, except `protect` (the one
    this run resumed from)."""
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    staging = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        # Made here, before the barrier: accelerate creates it on the main process only, and the
        # other ranks' RNG-state files would otherwise race that creation.
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every rank's files (RNG states) are written before the rename
    if accelerator.is_main_process:
        (staging / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        if keep is not None:
            _prune_checkpoints(output_dir, keep, protect)
    accelerator.wait_for_everyone()
    return final


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted((p for p in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit()),
                  key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _prune_checkpoints(output_dir: Path, keep: int, protect: Path | None) -> None:
    for old in _checkpoints(output_dir)[:-keep]:
        if protect is None or old.resolve() != Path(protect).resolve():
            shutil.rmtree(old)


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # accelerate raises many types for a damaged directory
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"checkpoint {checkpoint} could not be loaded: {first_line}") from None
    return json.loads((checkpoint / "trainer_state.json").read_text())


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (float, torch.Tensor)) else v) for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")


class RunningLoss:
    """A pretraining loop's loss, averaged over `every` steps and reported then: metrics.jsonl,
    the accelerate tracker and the progress bar."""

    def __init__(self, log: MetricsLog, accelerator, progress, every: int):
        self.log, self.accelerator, self.progress, self.every = log, accelerator, progress, every
        self.totals: dict[str, float] = {}

    def add(self, step: int, loss: float, learning_rate: float, parts: dict | None = None, extra: dict | None = None) -> None:
        """Record the loss of (1-based) `step` (and its named `parts`, if the loss has several); report the
        averages on every `every`-th step, with `extra` values as they are."""
        for key, value in {"loss": loss, **(parts or {})}.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        if step % self.every:
            return
        record = {"step": step, **{key: total / self.every for key, total in self.totals.items()}, "lr": learning_rate,
                  **(extra or {})}
        self.log.write(record)
        self.accelerator.log(record, step=step)
        self.progress.set_postfix(loss=f"{record['loss']:.4f}")
        self.totals = {}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """Images in [-1, 1] as one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    torchvision.utils.save_image((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)
    return path
