"""examples/tacotron_style.py: the bidirectional packed encoder and the ZoneoutLSTMCell decoder train."""
import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tacotron_style.py"


def load_example():
    spec = importlib.util.spec_from_file_location("tacotron_style", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tacotron_style_example_trains_for_a_few_steps():
    example = load_example()
    losses = example.train(steps=6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_tacotron_style_model_uses_the_zoneout_drop_ins_with_zoneout_0_1():
    from zoneout import ZoneoutLSTM, ZoneoutLSTMCell

    model = load_example().Tacotron(load_example().SMALL)
    recurrent = [m for m in model.modules() if isinstance(m, (ZoneoutLSTM, ZoneoutLSTMCell))]
    assert len(recurrent) == 3 and recurrent[0].bidirectional
    assert all(m.zoneout_cell == m.zoneout_hidden == 0.1 for m in recurrent)
