import warnings

import lightning as L
import pytest

from lit_align.modeling import hardware
from lit_align.methods import SFT, RewardModel


def test_cpu_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2 fma\n"
    assert hardware.cpu_flags(text) == {"fpu", "avx2", "fma"}
    assert not hardware.cpu_has_bf16(text)
    assert hardware.cpu_has_bf16("flags : avx512f avx512_bf16")
    assert hardware.cpu_has_bf16("Features : fp asimd bf16")  # Arm
    assert hardware.cpu_flags("") == set()


@pytest.mark.parametrize("module", [lambda: SFT(model="tiny:causal-lm"), lambda: RewardModel(model="tiny:classifier")])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "32-true"])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, module, precision):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: False)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False)
    m = module()
    m._trainer = trainer
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m.configure_model()
    slow = [w for w in seen if "without bf16 instructions" in str(w.message)]
    assert len(slow) == (1 if "bf16" in precision else 0)


def test_no_warning_where_the_cpu_has_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: True)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False)
    assert not hardware.warn_if_slow_bf16(trainer)
