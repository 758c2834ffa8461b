"""What a run writes as it goes: ``metrics.jsonl`` (one JSON record per line), TensorBoard
scalars and one-line messages above the progress bar. Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    """Append-only run log in ``run_dir``; a disabled log (ranks other than 0) does nothing.

    ``fresh``: start a new ``metrics.jsonl`` (a new run) instead of appending (a resumed one).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, fresh: bool = True) -> None:
        self.enabled = enabled
        self.metrics = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            if fresh:
                self.metrics.write_text("")
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def record(self, kind: str, values: dict[str, Any], step: int | None = None,
               message: str | None = None) -> None:
        """One ``{kind: values}`` line in metrics.jsonl; numbers also go to TensorBoard as
        ``kind/name`` at ``step``; ``message`` is printed above the progress bar."""
        if not self.enabled:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps({kind: values}) + "\n")
        if step is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and name != "step":
                    self.writer.add_scalar(f"{kind}/{name}", value, step)
        if message:
            tqdm.write(message)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
