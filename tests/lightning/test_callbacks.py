"""Callbacks declare what they need of the module and refuse, by name, a module without it."""

from types import SimpleNamespace

import lightning as L
import pytest

from lit_align.lightning.callbacks import Exportable, HFExport
from lit_align.methods import SFT, RewardModel


def test_export_takes_every_trained_module_and_refuses_others_before_fit():
    assert isinstance(SFT(model="tiny:causal-lm"), Exportable)
    assert isinstance(RewardModel(model="tiny:classifier"), Exportable)
    callback = HFExport()
    callback.setup(SimpleNamespace(), SFT(model="tiny:causal-lm"), "fit")
    with pytest.raises(TypeError, match="export.*LightningModule has none"):
        callback.setup(SimpleNamespace(), L.LightningModule(), "fit")
    callback.setup(SimpleNamespace(), L.LightningModule(), "test")  # nothing is exported outside fit
