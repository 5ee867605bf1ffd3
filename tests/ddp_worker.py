"""Run by tests/test_distributed.py: fit and test DMRNet on mfeat with 2-process DDP (gloo, CPU).

    python tests/ddp_worker.py OUT_DIR
Rank 0 writes OUT_DIR/ddp.json with the test metrics and the checkpoint path, and
OUT_DIR/samples.npz with the gathered per-sample test statistics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint

from dmrnet.benchmark import quiet_lightning
from dmrnet.training import MultimodalDataModule, MultimodalModule


def main() -> None:
    out = Path(sys.argv[1])
    quiet_lightning()
    L.seed_everything(0, workers=True, verbose=False)
    data = MultimodalDataModule("mfeat", modalities=["fac", "pix", "mor"], seed=0,
                                batch_size=64, eval_batch_size=100)
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes,
                          method="dmrnet", method_kwargs={"hcr_warmup_epochs": 1})
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", filename="best", monitor="val/mean", mode="max")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
                        logger=False, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)
    if trainer.global_rank == 0:
        np.savez(out / "samples.npz", **{f"{subset}|{key}": value
                                         for subset, parts in module.test_samples.items()
                                         for key, value in parts.items()})
        (out / "ddp.json").write_text(json.dumps({
            "world_size": trainer.world_size, "test": module.test_results,
            "checkpoint": ckpt.best_model_path,
            "hard_subsets": module.objective_state.get("hard_subsets", [])}))


if __name__ == "__main__":
    main()
