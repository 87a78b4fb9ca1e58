"""examples/tacotron_style.py: NVIDIA-style Tacotron 2 model code runs unchanged on the zoneout classes (the
same loss and gradients as on nn.LSTM / nn.LSTMCell at zoneout 0), trains, and infers deterministically in eval."""
import importlib.util
from pathlib import Path

import torch
from torch import nn

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


def same_model_on_nn_and_on_ours(example):
    """The example's model code built on nn.LSTM / nn.LSTMCell and on ours at zoneout 0, same weights, float64."""
    from zoneout import ZoneoutLSTM, ZoneoutLSTMCell

    torch.manual_seed(0)
    theirs = example.Tacotron(example.SMALL, nn.LSTM, nn.LSTMCell).double()
    ours = example.Tacotron(example.SMALL, ZoneoutLSTM, ZoneoutLSTMCell).double()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def count_flatten_calls(model) -> list:
    calls = []
    flatten = model.encoder.lstm.flatten_parameters
    model.encoder.lstm.flatten_parameters = lambda: calls.append(flatten())
    return calls


def test_the_same_model_code_gives_nns_loss_and_gradients_on_our_classes():
    """NVIDIA-style code (flatten_parameters, packed bidirectional encoder, LSTMCell decoder loops) runs unchanged."""
    example = load_example()
    theirs, ours = same_model_on_nn_and_on_ours(example)
    text, lengths, mels, stop = example.random_batch(example.SMALL, 4, torch.Generator().manual_seed(1))
    mels, stop = mels.double(), stop.double()
    results = []
    for model in (theirs, ours):
        calls = count_flatten_calls(model)
        torch.manual_seed(2)  # the same dropout masks (encoder convolutions, prenet) in both
        loss = example.loss_of(model(text, lengths, mels), mels, stop)
        loss.backward()
        assert len(calls) == 1
        results.append((loss, {name: p.grad for name, p in model.named_parameters()}))
    (nn_loss, nn_grads), (loss, grads) = results
    torch.testing.assert_close(loss, nn_loss, rtol=1e-10, atol=1e-10)
    assert grads.keys() == nn_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], nn_grads[name], rtol=1e-10, atol=1e-10, msg=name)


def test_inference_matches_nn_and_is_deterministic_in_eval():
    example = load_example()
    theirs, ours = same_model_on_nn_and_on_ours(example)
    text = torch.randint(1, example.SMALL["vocab"], (1, 7), generator=torch.Generator().manual_seed(3))
    outputs = []
    for model in (theirs.eval(), ours.eval()):
        calls = count_flatten_calls(model)
        torch.manual_seed(4)  # Tacotron's prenet dropout stays on at inference
        with torch.no_grad():
            outputs.append(model.inference(text, max_steps=12))
        assert len(calls) == 1
    for got, expected in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    zoned = example.Tacotron(example.SMALL).eval()  # zoneout 0.1: eval uses the expectation, no masks drawn
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.no_grad():
            runs.append(zoned.inference(text, max_steps=12))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert 1 <= runs[0][0].shape[1] <= 12 and runs[0][0].shape[2] == example.SMALL["n_mels"]


def test_one_train_step_on_our_classes_changes_every_recurrent_weight():
    example = load_example()
    model = example.Tacotron(example.SMALL)
    text, lengths, mels, stop = example.random_batch(example.SMALL, 3, torch.Generator().manual_seed(6))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = example.loss_of(model(text, lengths, mels), mels, stop)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    recurrent = ("encoder.lstm.", "decoder.attention_rnn.", "decoder.decoder_rnn.")
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert len([name for name in before if name.startswith(recurrent)]) == 8 + 4 + 4
    assert [name for name in unchanged if name.startswith(recurrent)] == []
