"""Accelerate training state written so that a checkpoint folder is either complete or absent."""
from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator


def save_state_atomically(accelerator: Accelerator, final: Path,
                          extra_files: dict[str, str] | None = None) -> Path:
    """``accelerator.save_state`` into ``.<name>.partial`` beside ``final``, then rename.

    Every process takes part (each saves its own RNG state); the main process writes
    ``extra_files`` (name -> text) into the folder before the rename, so a reader never sees
    a half-written checkpoint.
    """
    final = Path(final)
    partial = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, text in (extra_files or {}).items():
            (partial / name).write_text(text)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final
