"""Model factory: config (model + regularizer groups) -> nn.Module. Refuses combinations the
paper never makes with a one-line error naming the field."""
from __future__ import annotations

from zoneout.models.classifier import SequenceClassifier
from zoneout.models.init import initialize
from zoneout.models.initial_state import make_initial_state
from zoneout.models.language_model import LanguageModel
from zoneout.nn.bn_lstm import BatchNormLSTM
from zoneout.nn.gru import GRU
from zoneout.nn.lstm import LSTM
from zoneout.nn.rnn import RNN
from zoneout.regularizers import RecurrentDropout, SequenceDropout, StochasticDepth, Zoneout

CELLS = ("lstm", "gru", "rnn", "bn_lstm")


class ModelConfigError(ValueError):
    pass


def recurrent_regularizers(reg, cell: str, layer: int) -> list:
    """The in-recurrence noise sources of one layer (fresh instances per layer)."""
    sources = []
    if reg.zoneout_cell or reg.zoneout_hidden:
        if cell in ("gru", "rnn") and reg.zoneout_cell:
            raise ModelConfigError(f"regularizer.zoneout_cell: a {cell} has no cell state; use regularizer.zoneout_hidden")
        sources.append(Zoneout(reg.zoneout_cell, reg.zoneout_hidden, shared_mask=reg.zoneout_shared_mask,
                               static_mask=reg.zoneout_static_mask, static_seed=layer))
    if reg.recurrent_dropout:
        if cell not in ("lstm", "bn_lstm"):
            raise ModelConfigError(f"regularizer.recurrent_dropout: needs model.cell=lstm or bn_lstm (got {cell})")
        sources.append(RecurrentDropout(reg.recurrent_dropout))
    if reg.stochastic_depth:
        if reg.zoneout_cell or reg.zoneout_hidden:
            raise ModelConfigError("regularizer.stochastic_depth: cannot be combined with zoneout (both set the keep masks)")
        hidden_only = cell in ("gru", "rnn")
        sources.append(StochasticDepth(reg.stochastic_depth, cell=not hidden_only))
    return sources


def make_layer(cell: str, input_size: int, hidden_size: int, sources: list, model_cfg, max_length: int):
    if cell == "lstm":
        return LSTM(input_size, hidden_size, recurrent_regularizers=sources, impl=model_cfg.impl)
    if cell == "gru":
        return GRU(input_size, hidden_size, recurrent_regularizers=sources, impl=model_cfg.impl)
    if cell == "rnn":
        return RNN(input_size, hidden_size, nonlinearity=model_cfg.nonlinearity, recurrent_regularizers=sources,
                   impl=model_cfg.impl)
    return BatchNormLSTM(input_size, hidden_size, max_length=max_length, population_warmup=model_cfg.bn_population_warmup,
                         recurrent_regularizers=sources, impl=model_cfg.impl)


def build_model(model_cfg, reg, input_vocab: int | None, num_outputs: int, max_length: int):
    """input_vocab: vocabulary size for language models; None for pixel classification."""
    cell = model_cfg.cell
    if cell not in CELLS:
        raise ModelConfigError(f"model.cell must be one of {', '.join(CELLS)}; got {cell!r}")
    if reg.batchnorm != (cell == "bn_lstm"):
        raise ModelConfigError("regularizer.batchnorm: recurrent batch norm needs model=bn_lstm, and model=bn_lstm needs regularizer.batchnorm=true")
    hidden = model_cfg.hidden_size
    if input_vocab is None:
        first_input = 1
    else:
        first_input = model_cfg.embedding_size if model_cfg.input == "embedding" else input_vocab
        if model_cfg.input == "embedding" and not model_cfg.embedding_size:
            raise ModelConfigError("model.embedding_size: must be a positive integer with model.input=embedding")
        if model_cfg.input not in ("onehot", "embedding"):
            raise ModelConfigError(f"model.input must be onehot or embedding; got {model_cfg.input!r}")
    initial_state, recurrent_bias = model_cfg.get("initial_state", "zeros"), model_cfg.get("recurrent_bias", True)
    try:
        start = make_initial_state(initial_state, model_cfg.num_layers, hidden, has_cell=cell in ("lstm", "bn_lstm"))
    except ValueError as error:
        raise ModelConfigError(str(error)) from None
    if recurrent_bias is not True and (recurrent_bias is not False or cell != "lstm"):
        raise ModelConfigError(f"model.recurrent_bias must be true, or false with model.cell=lstm; got {recurrent_bias!r} "
                               f"with model.cell={cell}")
    layers = [make_layer(cell, first_input if layer == 0 else hidden, hidden,
                         recurrent_regularizers(reg, cell, layer), model_cfg, max_length)
              for layer in range(model_cfg.num_layers)]
    if input_vocab is None:
        if reg.dropout:
            raise ModelConfigError("regularizer.dropout: non-recurrent dropout is a language-model option (pMNIST has none)")
        model = SequenceClassifier(layers, hidden, num_outputs, start)
    else:
        dropout = SequenceDropout(reg.dropout, variational=reg.variational_dropout) if reg.dropout else None
        embedding = model_cfg.embedding_size if model_cfg.input == "embedding" else None
        model = LanguageModel(input_vocab, layers, hidden, embedding, dropout, start)
    try:
        initialize(model, cell, model_cfg.init, model_cfg.init_range, model_cfg.forget_bias)
    except ValueError as error:  # a scheme that does not fit these shapes: one line, not a traceback
        raise ModelConfigError(str(error)) from None
    if not recurrent_bias:  # the authors' W_state has no bias: hold bias_hh at zero, out of training
        for layer in model.layers:
            for name, parameter in layer.named_parameters():
                if name.startswith("bias_hh"):
                    parameter.detach().zero_()
                    parameter.requires_grad_(False)
    return model
