"""``python -m lit_align {fit,validate,test,predict} --config FILE.yaml``.

``model.class_path`` picks the method (``lit_align.methods.SFT``, ...); ``data`` is always an
``AlignDataModule``. Trainer flags (accelerator, devices, strategy, precision, num_nodes) pick
the hardware.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lit_align.data.datamodule import AlignDataModule


class AlignCLI(LightningCLI):
    pass


def main(args: list[str] | None = None) -> AlignCLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return AlignCLI(
        L.LightningModule,
        AlignDataModule,
        subclass_mode_model=True,
        # The window sampler shards data across ranks itself (see lit_align/data/sampler.py).
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
