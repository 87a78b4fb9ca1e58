"""Config validation before any training: every bad value gets one line naming the field and
what is allowed (train.py prints it and exits with status 2)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch

from zoneout.config_dir import config_dir
from zoneout.models.build import CELLS
from zoneout.models.init import INIT_SCHEMES
from zoneout.models.initial_state import INITIAL_STATES
from zoneout.nn.dispatch import IMPLS

CONFIG_DIR = config_dir()
GROUPS = ("dataset", "model", "regularizer", "optim", "logger", "experiment", "scale")
RUN_NAME = re.compile(r"[A-Za-z0-9_.=,+-]+(/[A-Za-z0-9_.=,+-]+)*")


class ConfigError(ValueError):
    pass


def group_choices(group: str) -> list[str]:
    root = CONFIG_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_group_overrides(argv: list[str]) -> None:
    """Catch `dataset=nope` before Hydra prints a multi-line composition error."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in GROUPS and value and value != "null":
            allowed = group_choices(key)
            for choice in value.split(","):  # multirun sweeps list several
                if choice not in allowed:
                    raise ConfigError(f"{key}={choice}: unknown {key}; allowed: {', '.join(allowed)}")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")


def _probability(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value!r}: must be a probability in [0, 1]")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _finite(name, value, above=None, at_least=None):
    """A real, finite number, > above or >= at_least: nan and inf never pass (they train at lr 0 or diverge)."""
    if not _is_real(value) or not -math.inf < value < math.inf or (above is not None and value <= above) or (
            at_least is not None and value < at_least):
        bound = f"> {above}" if above is not None else f">= {at_least}"
        raise ConfigError(f"{name}={value!r}: must be a finite number {bound}")


def _one_of(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: allowed values are {', '.join(map(str, allowed))}")


def check_config(cfg) -> None:
    d, m, r, o, t = cfg.dataset, cfg.model, cfg.regularizer, cfg.optim, cfg.trainer
    _one_of("dataset.name", d.name, group_choices("dataset"))
    if cfg.scale_name != "paper" and cfg.scale_name not in d:  # the scale's sizes live in the dataset config
        have = [s for s in group_choices("scale") if s == "paper" or s in d]
        raise ConfigError(f"scale={cfg.scale_name}: configs/dataset/{d.name}.yaml has no `{cfg.scale_name}:` block "
                          f"(no pilot has chosen that scale's sizes for it yet); allowed for {d.name}: {', '.join(have)}")
    _one_of("dataset.loader", d.loader, ("chunks", "stream", "pixels"))
    for field in ("batch_size", "eval_batch_size"):
        _positive_int(f"dataset.{field}", d[field])
    if d.loader != "pixels":
        _positive_int("dataset.seq_len", d.seq_len)
        if d.seq_len < 2:
            raise ConfigError(f"dataset.seq_len={d.seq_len}: must be at least 2")
    if not isinstance(d.train_fraction, (int, float)) or not 0.0 < d.train_fraction <= 1.0:
        raise ConfigError(f"dataset.train_fraction={d.train_fraction!r}: must be in (0, 1]")
    _one_of("model.cell", m.cell, CELLS)
    _positive_int("model.hidden_size", m.hidden_size)
    _positive_int("model.num_layers", m.num_layers)
    _one_of("model.input", m.input, ("onehot", "embedding"))
    if m.embedding_size is not None:
        _positive_int("model.embedding_size", m.embedding_size)
    _one_of("model.init", m.init, INIT_SCHEMES)
    _one_of("model.impl", m.impl, IMPLS)
    _one_of("model.nonlinearity", m.nonlinearity, ("tanh", "relu"))
    _one_of("model.initial_state", m.get("initial_state", "zeros"), INITIAL_STATES)
    if not isinstance(m.get("recurrent_bias", True), bool):
        raise ConfigError(f"model.recurrent_bias={m.recurrent_bias!r}: allowed values are true, false")
    if m.get("recurrent_bias", True) is False and m.cell != "lstm":
        raise ConfigError(f"model.recurrent_bias=false: only with model.cell=lstm (the authors' char-PTB cell); got {m.cell}")
    if m.cell == "bn_lstm":
        _one_of("model.bn_population_warmup", m.get("bn_population_warmup"), (True, False))
    for field in ("zoneout_cell", "zoneout_hidden", "recurrent_dropout", "stochastic_depth", "dropout"):
        _probability(f"regularizer.{field}", r[field])
    if r.get("cell_dropout"):
        raise ConfigError("regularizer.cell_dropout: dropout on the recurrent cell exists only in scripts/gradient_flow.py (Figure 6)")
    for field in ("weight_noise", "norm_stabilizer"):
        _finite(f"regularizer.{field}", r[field], at_least=0)
    _one_of("optim.name", o.name, ("adam", "sgd", "rmsprop"))
    _finite("optim.lr", o.lr, above=0)
    _finite("optim.lr_decay", o.lr_decay, above=0)
    _finite("optim.eps", o.eps, at_least=0)
    _finite("optim.weight_decay", o.weight_decay, at_least=0)
    if not isinstance(o.decay_start_epoch, int) or isinstance(o.decay_start_epoch, bool) or o.decay_start_epoch < 0:
        raise ConfigError(f"optim.decay_start_epoch={o.decay_start_epoch!r}: must be an integer >= 0")
    if o.name == "adam":
        betas = list(o.betas) if not isinstance(o.betas, (str, int, float)) else None
        if betas is None or len(betas) != 2 or not all(_is_real(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas={o.betas!r}: must be two numbers in [0, 1)")
    for field in ("momentum", "alpha"):
        if field in o and o[field] is not None and not (_is_real(o[field]) and 0 <= o[field] < 1):
            raise ConfigError(f"optim.{field}={o[field]!r}: must be a number in [0, 1)")
    _positive_int("trainer.max_epochs", t.max_epochs)
    _positive_int("trainer.patience", t.patience)
    if t.clip_grad_norm is not None and not (_is_real(t.clip_grad_norm) and 0 < t.clip_grad_norm < math.inf):
        raise ConfigError(f"trainer.clip_grad_norm={t.clip_grad_norm!r}: must be a number > 0 or null")
    if t.divergence_factor is not None and not (_is_real(t.divergence_factor) and 1 < t.divergence_factor < math.inf):
        raise ConfigError(f"trainer.divergence_factor={t.divergence_factor!r}: must be a number > 1 (times the "
                          "uniform prediction's loss) or null")
    _one_of("trainer.clip", t.clip, ("grad", "update"))
    if t.resume and t.overwrite:
        raise ConfigError("trainer.resume=true and trainer.overwrite=true: choose one (continue the run, or replace it)")
    name = str(cfg.name)
    if not RUN_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ConfigError(f"name={name!r}: a run name is a relative path of letters, digits and _ . = , + - "
                          "inside the runs folder (no '..', no leading '/')")
    cadence = t.checkpoint_every_min
    if cadence is not None and (not isinstance(cadence, (int, float)) or isinstance(cadence, bool)
                                or not 0 < cadence < math.inf):
        raise ConfigError(f"trainer.checkpoint_every_min={cadence!r}: must be a number of minutes > 0 or null")
    for field in ("max_steps_per_epoch", "eval_max_batches", "threads", "bn_recalibration_batches"):
        if t[field] is not None:
            _positive_int(f"trainer.{field}", t[field])
    _one_of("logger.name", cfg.logger.name, ("wandb", "csv"))
    if cfg.logger.name == "wandb":
        _one_of("logger.mode", cfg.logger.mode, ("offline", "online", "disabled"))
    _one_of("device", cfg.device, ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available here; use device=cpu or auto")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r}: must be an integer")
    # Paths last: a wrong value elsewhere is reported even before the data has been fetched.
    if not Path(d.data_dir).is_dir():
        raise ConfigError(f"dataset.data_dir={d.data_dir!r}: folder does not exist; run `make data` or set ZONEOUT_DATA_DIR")
    if d.mirror is not None and not Path(d.mirror).is_dir():
        raise ConfigError(f"dataset.mirror={d.mirror!r}: folder does not exist; give a folder laid out like shared/data or null")


def _dotted_keys(node, prefix="") -> list[str]:
    keys = []
    for key, value in node.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def check_command_line(argv: list[str]) -> None:
    """Before Hydra creates a run folder: every `key=value` names a key that exists (else one line with the
    nearest valid key), and for a single run the whole composed config passes check_config, so a refused
    command writes nothing. Multirun jobs are checked one by one as they start (train.py)."""
    import difflib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.lstrip("+~").startswith("hydra")]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    groups = [a.split(",")[0] for a in overrides if a.lstrip("+~").partition("=")[0] in GROUPS]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            base = compose("config", overrides=groups)
        except Exception as error:  # Hydra's composition errors are multi-line: keep the first
            raise ConfigError(str(error).strip().splitlines()[0]) from None
        known = _dotted_keys(OmegaConf.to_container(base, resolve=False))
        for override in overrides:
            key = override.partition("=")[0]
            if override.startswith(("+", "~")) or key in GROUPS:
                continue
            if key not in known:
                nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                raise ConfigError(f"{key}: no such setting" + (f"; did you mean {nearest[0]}?" if nearest else
                                  " (see configs/config.yaml and the group files)"))
        if multirun:
            return
        try:
            cfg = compose("config", overrides=overrides)
        except Exception as error:
            raise ConfigError(str(error).strip().splitlines()[0]) from None
    check_config(cfg)


def fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
