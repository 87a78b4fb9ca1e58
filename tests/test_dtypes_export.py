"""Factory kwargs, dtypes, CPU autocast (bf16), and deployment: torch.jit.trace, torch.export, ONNX (when
installed) and torch.compile of the layers and cells in eval mode give the eager outputs."""
import pytest
import torch
from torch import nn

from zoneout import ZoneoutGRU, ZoneoutGRUCell, ZoneoutLSTM, ZoneoutLSTMCell

I, H = 3, 8
ZONEOUT = dict(zoneout_cell=0.1, zoneout_hidden=0.1)


def modules():
    torch.manual_seed(0)
    return {
        "lstm-bi": ZoneoutLSTM(I, H, 2, bidirectional=True, **ZONEOUT),
        "lstm-reference": ZoneoutLSTM(I, H, impl="reference", **ZONEOUT),
        "gru-bi": ZoneoutGRU(I, H, 2, bidirectional=True, zoneout_hidden=0.1),
        "lstm-cell": ZoneoutLSTMCell(I, H, **ZONEOUT),
        "gru-cell": ZoneoutGRUCell(I, H, zoneout_hidden=0.1),
    }


def example(name):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(*((2, I) if "cell" in name else (5, 2, I)), generator=gen)


def first(result):
    return result[0] if isinstance(result, tuple) else result


def states(result):
    """Every tensor of an (output, (h, c)) / (output, h) / (h, c) / h result, flattened."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in states(part)]


@pytest.mark.parametrize("make", [
    lambda **f: ZoneoutLSTM(I, H, 2, bidirectional=True, **f), lambda **f: ZoneoutGRU(I, H, bidirectional=True, **f),
    lambda **f: ZoneoutLSTMCell(I, H, **f), lambda **f: ZoneoutGRUCell(I, H, **f)])
def test_factory_kwargs_device_and_dtype(make):
    assert all(p.dtype == torch.float64 for p in make(dtype=torch.float64).parameters())
    assert all(p.device.type == "meta" for p in make(device="meta").parameters())


@pytest.mark.parametrize("name", ["lstm-bi", "lstm-reference", "gru-bi", "lstm-cell", "gru-cell"])
def test_cpu_autocast_bf16_runs_keeps_states_float32_and_is_close(name):
    """A Linear before the recurrent module hands it bf16 under autocast: eval values close to float32,
    and a training step (random masks) runs with finite gradients."""
    module = modules()[name].eval()
    pre = nn.Linear(I, I)
    x = example(name)
    want = states(module(pre(x)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = states(module(pre(x)))
        assert pre(x).dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in got)  # the cell state (and h) stay float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = states(module.train()(pre(x)))
    sum(t.sum() for t in got).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["lstm-bi", "gru-bi", "lstm-cell", "gru-cell"])
def test_half_precision_module_and_input_run_and_are_close(dtype, name):
    module = modules()[name].eval()
    x = example(name)
    want = states(module(x))
    got = states(module.to(dtype)(x.to(dtype)))
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["lstm-bi", "gru-bi", "lstm-cell", "gru-cell"])
def test_input_dtype_mismatch_outside_autocast_is_a_clear_error(name):
    with pytest.raises(ValueError, match="dtype"):
        modules()[name](example(name).to(torch.bfloat16))


@pytest.mark.parametrize("name", ["lstm-bi", "lstm-reference", "gru-bi", "lstm-cell", "gru-cell"])
def test_jit_trace_in_eval_gives_the_eager_outputs(name):
    module, x = modules()[name].eval(), example(name)
    with torch.no_grad():
        traced = torch.jit.trace(module, (x,), check_trace=False)
        x2 = torch.randn_like(x)  # a new input of the traced shape
        for a, b in zip(states(traced(x2)), states(module(x2))):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm-bi", "gru-bi", "lstm-cell", "gru-cell"])
def test_torch_export_in_eval_gives_the_eager_outputs(name):
    module, x = modules()[name].eval(), example(name)
    exported = torch.export.export(module, (x,)).module()
    x2 = torch.randn_like(x)
    with torch.no_grad():
        for a, b in zip(states(exported(x2)), states(module(x2))):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm-bi", "lstm-cell"])
def test_onnx_export_in_eval_gives_the_eager_outputs(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module, x = modules()[name].eval(), example(name)
    path = tmp_path / "model.onnx"
    torch.onnx.export(module, (x,), str(path))
    session = onnxruntime.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        for a, b in zip(got, states(module(x))):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-5, rtol=1e-4)


class TinyTTS(nn.Module):
    """A bidirectional encoder and a ZoneoutLSTMCell decoder step, as a compiled model would hold them."""

    def __init__(self):
        super().__init__()
        self.encoder = ZoneoutLSTM(I, H, bidirectional=True, **ZONEOUT)
        self.decoder = ZoneoutLSTMCell(2 * H, H, **ZONEOUT)

    def forward(self, x):
        encoded, _ = self.encoder(x)
        hx = None
        for step in encoded[:3]:
            hx = self.decoder(step, hx)
        return hx[0]


def test_torch_compile_runs_training_and_matches_eager_in_eval():
    torch._dynamo.reset()
    model, x = TinyTTS(), example("lstm-bi")
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()  # training: masks drawn inside the compiled graph
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager_in_eval():
    torch._dynamo.reset()
    model, x = TinyTTS().eval(), example("lstm-bi")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-5, rtol=1e-4)
