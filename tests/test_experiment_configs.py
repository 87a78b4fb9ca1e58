"""Every experiment config (one row of a paper table or figure) against docs/replication.md §2-§6, and every
experiments/*.yaml table against its configs and the paper's numbers (§3). Compose and build only: no training."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

import zoneout.resolvers  # noqa: F401 - the Slurm launcher config resolves through them
from zoneout.models.build import build_model
from zoneout.nn.bn_lstm import BatchNormLSTM
from zoneout.nn.gru import GRU
from zoneout.nn.rnn import RNN
from zoneout.regularizers import RecurrentDropout, SequenceDropout, StochasticDepth, Zoneout

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(str(p.relative_to(ROOT / "configs" / "experiment").with_suffix(""))
                     for p in (ROOT / "configs" / "experiment").rglob("*.yaml"))
# The original repository's toys (experiments/toy_*.yaml) have their own settings, no table rows: tests/test_toys.py.
TABLES = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if not p.stem.startswith("toy_"))
REG_KNOBS = {"zoneout_cell": 0.0, "zoneout_hidden": 0.0, "zoneout_shared_mask": False, "zoneout_static_mask": False,
             "recurrent_dropout": 0.0, "stochastic_depth": 0.0, "weight_noise": 0.0, "norm_stabilizer": 0.0,
             "batchnorm": False, "dropout": 0.0, "variational_dropout": False, "cell_dropout": 0.0}
VOCAB = {"ptb_char": 50, "ptb_word": 10_000, "text8": 27, "pmnist": None}


# The settings of docs/replication.md, written out independently of the config files.
def char(cell="lstm", lr=0.002, **reg):  # §2.1, §6.6-6.9, §6.14
    # The authors' char-PTB code's init (§1.5: square gcd blocks), except recurrent BN, whose code is Cooijmans'.
    return dict(dataset="ptb_char", cell=cell, hidden=1000, layers=1, optim="adam", lr=lr, lr_decay=1.0, decay_start=0,
                batch=32, seq_len=100, clip=1.0, epochs=150, patience=25,
                init="orthogonal" if cell == "bn_lstm" else "orthogonal_square_blocks",
                forget_bias=1.0 if cell in ("lstm", "bn_lstm") else 0.0, loss_sum=False, reg=reg)


def text8(cell="lstm", **reg):  # §2.3, §6.10
    # text8's 27-symbol input has no square blocks at 2000 units (gcd(8000, 27) = 1): per-gate orthogonal.
    return dict(char(cell, **reg), dataset="text8", hidden=2000, lr=0.001, batch=128, seq_len=180, init="orthogonal")


def word_large(**reg):  # §2.2, §5 (Zaremba large), §6.11
    return dict(dataset="ptb_word", cell="lstm", hidden=1500, layers=2, embedding=1500, optim="sgd", lr=1.0, lr_decay=1.15,
                decay_start=14, batch=20, seq_len=35, clip=10.0, epochs=55, patience=55, init="uniform", init_range=0.04,
                forget_bias=0.0, loss_sum=True, reg=reg)


def pmnist(cell="lstm", epochs=150, **reg):  # §2.4, §6.12
    return dict(dataset="pmnist", cell=cell, hidden=100, layers=1, optim="rmsprop", alpha=0.5, lr=0.001, lr_decay=1.0,
                decay_start=0, batch=100, seq_len=None, clip=1.0, epochs=epochs, patience=epochs, init="orthogonal",
                forget_bias=1.0, loss_sum=False, reg=reg)


EXPECTED = {
    "ptb_char/unregularized": char(),
    "ptb_char/weight_noise": char(weight_noise=0.075),
    "ptb_char/norm_stabilizer": char(norm_stabilizer=50.0),
    "ptb_char/stochastic_depth": char(stochastic_depth=0.05),
    "ptb_char/stochastic_depth_050": char(stochastic_depth=0.5),
    "ptb_char/recurrent_dropout": char(recurrent_dropout=0.7),
    "ptb_char/recurrent_batchnorm": char("bn_lstm", batchnorm=True),
    "ptb_char/zoneout": char(zoneout_cell=0.5, zoneout_hidden=0.05),
    "ptb_char/gru_unregularized": char("gru", lr=0.001),
    "ptb_char/gru_zoneout": char("gru", lr=0.001, zoneout_hidden=0.05),
    "ptb_char/rnn_unregularized": char("rnn", lr=0.0003),
    "ptb_char/rnn_zoneout": char("rnn", lr=0.0003, zoneout_hidden=0.05),
    "ptb_char/fig3_zh050": char(zoneout_hidden=0.5),
    "ptb_char/fig3_zc050": char(zoneout_cell=0.5),
    "ptb_char/fig3_zh005": char(zoneout_hidden=0.05),
    "ptb_char/fig3_zc005": char(zoneout_cell=0.05),
    "ptb_char/fig3_zc050_zh050": char(zoneout_cell=0.5, zoneout_hidden=0.5),
    "ptb_char/fig3_zc005_zh005": char(zoneout_cell=0.05, zoneout_hidden=0.05),
    "ptb_word/dropout": word_large(dropout=0.65),
    "ptb_word/zoneout": word_large(dropout=0.65, zoneout_cell=0.25, zoneout_hidden=0.025),
    "ptb_word/variational_dropout": word_large(dropout=0.65, variational_dropout=True),
    "ptb_word/recurrent_dropout": word_large(recurrent_dropout=0.5),  # settings not found: our documented choice
    # Zaremba's non-regularized model (§5); clip 5 is our choice (not given for it in §5).
    "ptb_word/unregularized": dict(word_large(), hidden=200, embedding=200, lr_decay=2.0, decay_start=4, seq_len=20,
                                   clip=5.0, epochs=13, patience=13, init_range=0.1),
    "text8/unregularized": text8(),
    "text8/weight_noise": text8(weight_noise=0.075),
    "text8/norm_stabilizer": text8(norm_stabilizer=50.0),
    "text8/stochastic_depth": text8(stochastic_depth=0.05),
    "text8/stochastic_depth_050": text8(stochastic_depth=0.5),
    "text8/recurrent_dropout": text8(recurrent_dropout=0.5),
    "text8/recurrent_batchnorm": text8("bn_lstm", batchnorm=True),
    "text8/zoneout": text8(zoneout_cell=0.5, zoneout_hidden=0.05),
    "text8/zoneout_020": text8(zoneout_cell=0.2, zoneout_hidden=0.2),
    "pmnist/unregularized": pmnist(),
    "pmnist/recurrent_dropout": pmnist(recurrent_dropout=0.5),
    "pmnist/recurrent_dropout_015": pmnist(recurrent_dropout=0.15),
    "pmnist/zoneout": pmnist(zoneout_cell=0.15, zoneout_hidden=0.15, zoneout_shared_mask=True),
    "pmnist/recurrent_batchnorm": pmnist("bn_lstm", batchnorm=True),
    "pmnist/batchnorm_zoneout": pmnist("bn_lstm", batchnorm=True, zoneout_cell=0.15, zoneout_hidden=0.15, zoneout_shared_mask=True),
    "pmnist/gradflow_unregularized": pmnist(epochs=1),
    "pmnist/gradflow_zoneout": pmnist(epochs=1, zoneout_cell=0.5),
    "pmnist/gradflow_cell_dropout": pmnist(epochs=1, cell_dropout=0.5),
}

# docs/replication.md §3: (table, experiment) -> (valid, test) exactly as the paper reports them.
PAPER = {
    ("table1_ptb_char", "ptb_char/unregularized"): (1.466, 1.356), ("table1_ptb_char", "ptb_char/weight_noise"): (1.507, 1.344),
    ("table1_ptb_char", "ptb_char/norm_stabilizer"): (1.459, 1.352), ("table1_ptb_char", "ptb_char/stochastic_depth"): (1.432, 1.343),
    ("table1_ptb_char", "ptb_char/recurrent_dropout"): (1.358, 1.321), ("table1_ptb_char", "ptb_char/recurrent_batchnorm"): (None, 1.32),
    ("table1_ptb_char", "ptb_char/zoneout"): (1.362, 1.27),
    ("table1_ptb_word", "ptb_word/unregularized"): (120.7, 114.5), ("table1_ptb_word", "ptb_word/dropout"): (82.2, 78.4),
    ("table1_ptb_word", "ptb_word/variational_dropout"): (None, 73.4), ("table1_ptb_word", "ptb_word/recurrent_dropout"): (91.6, 87.0),
    ("table1_ptb_word", "ptb_word/zoneout"): (81.4, 77.4),
    ("table1_text8", "text8/unregularized"): (1.396, 1.408), ("table1_text8", "text8/weight_noise"): (1.356, 1.367),
    ("table1_text8", "text8/norm_stabilizer"): (1.382, 1.398), ("table1_text8", "text8/stochastic_depth"): (1.337, 1.343),
    ("table1_text8", "text8/recurrent_dropout"): (1.409, 1.358), ("table1_text8", "text8/recurrent_batchnorm"): (None, 1.36),
    ("table1_text8", "text8/zoneout"): (1.331, 1.336),
    ("table2_pmnist", "pmnist/unregularized"): (0.092, 0.102), ("table2_pmnist", "pmnist/recurrent_dropout"): (0.083, 0.075),
    ("table2_pmnist", "pmnist/zoneout"): (0.063, 0.069), ("table2_pmnist", "pmnist/recurrent_batchnorm"): (None, 0.046),
    ("table2_pmnist", "pmnist/batchnorm_zoneout"): (0.045, 0.041),
    ("text_gru_rnn", "ptb_char/gru_unregularized"): (1.53, None), ("text_gru_rnn", "ptb_char/gru_zoneout"): (1.41, None),
    ("text_gru_rnn", "ptb_char/rnn_unregularized"): (1.67, None), ("text_gru_rnn", "ptb_char/rnn_zoneout"): (1.52, None),
}
CITED = {("table1_ptb_char", "ptb_char/recurrent_batchnorm"), ("table1_text8", "text8/recurrent_batchnorm"),
         ("table2_pmnist", "pmnist/recurrent_batchnorm"), ("table1_ptb_word", "ptb_word/unregularized"),
         ("table1_ptb_word", "ptb_word/dropout"), ("table1_ptb_word", "ptb_word/variational_dropout")}


@functools.lru_cache(maxsize=None)
def composed(name: str, scale: str = "paper"):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", f"scale={scale}"])


def load_table(table: str) -> dict:
    return yaml.safe_load((ROOT / "experiments" / f"{table}.yaml").read_text())


def test_every_experiment_file_has_expected_settings_and_a_table():
    assert set(EXPECTED) == set(EXPERIMENTS)
    in_tables = {row["experiment"] for table in TABLES for row in load_table(table)["rows"]}
    assert set(EXPERIMENTS) <= in_tables, f"experiments in no table: {set(EXPERIMENTS) - in_tables}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_hyperparameters_match_replication(name):
    cfg, want = composed(name), EXPECTED[name]
    first_line = (ROOT / "configs" / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line == "# @package _global_" and cfg.name == name and cfg.scale_name == "paper"
    m, o, d, t = cfg.model, cfg.optim, cfg.dataset, cfg.trainer
    assert (d.name, m.cell, m.hidden_size, m.num_layers) == (want["dataset"], want["cell"], want["hidden"], want["layers"])
    assert (o.name, o.lr, o.lr_decay, o.decay_start_epoch) == (want["optim"], want["lr"], want["lr_decay"], want["decay_start"])
    assert (d.batch_size, d.get("seq_len"), t.clip_grad_norm) == (want["batch"], want["seq_len"], want["clip"])
    assert (t.max_epochs, t.patience, t.loss_sum_over_time) == (want["epochs"], want["patience"], want["loss_sum"])
    assert (m.init, m.forget_bias) == (want["init"], want["forget_bias"])
    if want["init"] == "uniform":
        assert m.init_range == want["init_range"]
    if want["optim"] == "rmsprop":
        assert o.alpha == want["alpha"] and d.permutation == "permutation" and d.permutation_seed == 1
    if want["optim"] == "adam":
        assert list(o.betas) == [0.9, 0.999]
    if want["optim"] == "sgd":
        assert o.momentum == 0.0
    if want["dataset"] == "ptb_word":
        assert (m.input, m.embedding_size, d.loader) == ("embedding", want["embedding"], "stream")
    elif want["dataset"] != "pmnist":
        assert m.input == "onehot" and d.loader == "chunks"
    if want["cell"] == "rnn":
        assert m.nonlinearity == "tanh"  # docs/replication.md §6.14
    for knob, default in REG_KNOBS.items():
        assert cfg.regularizer.get(knob, 0.0 if knob == "cell_dropout" else None) == want["reg"].get(knob, default), knob


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_quick_scale_shrinks_the_row(name):
    paper, quick = composed(name), composed(name, "quick")
    shrink = paper.dataset.quick
    assert quick.scale_name == "quick" and quick.name == name
    assert quick.model.hidden_size == shrink.hidden_size <= paper.model.hidden_size
    assert quick.trainer.max_epochs == shrink.max_epochs and quick.trainer.patience == shrink.patience
    assert quick.dataset.train_fraction == shrink.train_fraction < paper.dataset.train_fraction
    # Validation batches per epoch: capped only where the dataset's quick block says so (text8); never at paper scale.
    assert paper.trainer.eval_max_batches is None and quick.trainer.eval_max_batches == shrink.get("eval_max_batches")
    assert (quick.trainer.eval_max_batches is not None) == (paper.dataset.name == "text8")
    assert quick.model.hidden_size < paper.model.hidden_size or quick.trainer.max_epochs < paper.trainer.max_epochs
    if paper.model.input == "embedding":
        assert quick.model.embedding_size == quick.model.hidden_size  # Zaremba: embedding size = hidden size
    # Everything that is not a shrink stays the paper's.
    assert quick.optim == paper.optim and quick.regularizer == paper.regularizer
    assert quick.dataset.batch_size == paper.dataset.batch_size and quick.trainer.clip_grad_norm == paper.trainer.clip_grad_norm


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_small_scale_changes_only_size_knobs(name):
    paper = composed(name)
    if "small" not in paper.dataset:
        pytest.skip(f"{paper.dataset.name} has no small scale yet")
    small, shrink = composed(name, "small"), paper.dataset.small
    assert small.scale_name == "small" and small.name == name
    assert small.model.hidden_size == shrink.hidden_size <= paper.model.hidden_size
    assert (small.trainer.max_epochs, small.trainer.patience) == (shrink.max_epochs, shrink.patience)
    assert small.dataset.train_fraction == shrink.train_fraction < paper.dataset.train_fraction
    assert small.trainer.eval_max_batches == shrink.get("eval_max_batches")
    # recurrent BN: the paper's training EMA, unless the dataset's few steps an epoch leave it behind the weights
    assert small.trainer.bn_recalibration_batches == shrink.get("bn_recalibration_batches")
    # Everything that is not a size knob stays the paper's: optimizer, lr, batch, length, clipping, init, regularizers.
    for group in ("optim", "regularizer"):
        assert small[group] == paper[group], group
    size_knobs = {"hidden_size", "embedding_size", "init"}
    assert {k: v for k, v in small.model.items() if k not in size_knobs} == {
        k: v for k, v in paper.model.items() if k not in size_knobs}
    # A scale block may name its own init (the paper's square-block init has no blocks at its shapes).
    assert small.model.init == shrink.get("init", paper.model.init)
    assert {k: v for k, v in small.dataset.items() if k != "train_fraction"} == {
        k: v for k, v in paper.dataset.items() if k != "train_fraction"}
    for knob in ("clip_grad_norm", "loss_sum_over_time", "eval_stream", "divergence_factor"):
        assert small.trainer[knob] == paper.trainer[knob], knob


@pytest.mark.parametrize("table", TABLES)
def test_small_scale_described_in_the_table_is_the_one_applied(table):
    spec = load_table(table)
    for row in spec["rows"]:
        if not row["experiment"]:
            continue
        cfg = composed(row["experiment"])
        if "small" not in cfg.dataset or spec.get("script"):
            continue
        small = cfg.dataset.small
        text = spec["small_scale"]
        assert f"x{small.hidden_size} " in text and f"first {small.train_fraction * 100:g}% " in text
        assert f"at most {small.max_epochs} epochs, patience {small.patience}" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_model_of_each_row_builds_with_its_regularizers(name):
    cfg, want = composed(name), EXPECTED[name]
    reg, dataset, hidden = want["reg"], want["dataset"], 50  # 50: every cell's shapes have square blocks (4H, 3H, H x 50)
    model_cfg = cfg.model.copy()
    model_cfg.hidden_size = hidden
    max_length = want["seq_len"] or 784
    torch.manual_seed(0)
    model = build_model(model_cfg, cfg.regularizer, VOCAB[dataset], VOCAB[dataset] or 10, max_length)
    layer_type = {"gru": GRU, "rnn": RNN, "bn_lstm": BatchNormLSTM}.get(want["cell"])
    assert len(model.layers) == want["layers"]
    assert all(isinstance(layer, layer_type) for layer in model.layers) if layer_type else True
    modules = list(model.modules())
    zoneouts = [m for m in modules if isinstance(m, Zoneout)]
    if reg.get("zoneout_cell") or reg.get("zoneout_hidden"):
        assert len(zoneouts) == want["layers"]  # independent masks per layer
        assert {(z.cell, z.hidden, z.shared_mask) for z in zoneouts} == {
            (reg.get("zoneout_cell", 0.0), reg.get("zoneout_hidden", 0.0), reg.get("zoneout_shared_mask", False))}
    else:
        assert not zoneouts
    per_layer = lambda knob: [reg[knob]] * want["layers"] if reg.get(knob) else []  # noqa: E731
    assert [m.p for m in modules if isinstance(m, RecurrentDropout)] == per_layer("recurrent_dropout")
    assert [m.p for m in modules if isinstance(m, StochasticDepth)] == per_layer("stochastic_depth")
    dropouts = [(m.p, m.variational) for m in modules if isinstance(m, SequenceDropout)]  # one module, shared
    assert dropouts == ([(reg["dropout"], reg.get("variational_dropout", False))] if reg.get("dropout") else [])
    # A short training-mode forward pass: the combination runs, with the task's shapes.
    if VOCAB[dataset] is None:
        logits = model(torch.rand(3, 6))[0]
        assert logits.shape == (3, 10)
    else:
        logits = model(torch.randint(VOCAB[dataset], (3, 5)), None)[0]
        assert logits.shape == (5, 3, VOCAB[dataset])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("table", TABLES)
def test_table_rows_match_configs_and_paper(table):
    spec = load_table(table)
    assert spec["table"] == table and spec["metric"] in ("bpc", "perplexity", "error")
    assert spec["title"] and spec["source"] and spec["quick_scale"]
    names = [row["name"] for row in spec["rows"]]
    assert len(names) == len(set(names))
    for row in spec["rows"]:
        assert set(row) == {"name", "label", "experiment", "paper", "cited"} and set(row["paper"]) == {"valid", "test"}
        experiment = row["experiment"]
        if experiment is None:
            assert row["cited"], f"{row['name']}: only a cited figure may have nothing of ours to run"
            continue
        assert (ROOT / "configs" / "experiment" / f"{experiment}.yaml").is_file()
        cfg = composed(experiment)
        assert cfg.name == experiment and cfg.dataset.metric == spec["metric"]
        quick = cfg.dataset.quick  # the shrink described in words is the one scale=quick applies
        assert f"x{quick.hidden_size} " in spec["quick_scale"] and f"first {quick.train_fraction * 100:g}% " in spec["quick_scale"]
        if not spec.get("script"):  # a table made by a script (Figure 6) trains its own one epoch
            assert f"at most {quick.max_epochs} epochs" in spec["quick_scale"]
        if (table, experiment) in PAPER:
            assert (row["paper"]["valid"], row["paper"]["test"]) == PAPER[(table, experiment)]
        assert row["cited"] == ((table, experiment) in CITED)
    if table.startswith("fig"):  # figures: plots only, no numbers in the paper
        assert all(v is None for row in spec["rows"] for v in row["paper"].values())


# The paper's orderings each table checks (docs/replication.md §3: Table 1 caption and text, Table 2 caption, §3.3).
CLAIMS = {
    "table1_ptb_char": ["zoneout<unregularized", "zoneout<weight_noise", "zoneout<norm_stabilizer",
                        "zoneout<stochastic_depth", "zoneout<recurrent_dropout", "zoneout<recurrent_batchnorm",
                        "weight_noise<unregularized", "norm_stabilizer<unregularized", "stochastic_depth<unregularized",
                        "recurrent_dropout<unregularized"],
    "table1_ptb_word": ["zoneout<dropout", "zoneout<recurrent_dropout", "dropout<unregularized"],
    "table2_pmnist": ["zoneout<unregularized", "zoneout<recurrent_dropout", "recurrent_dropout<unregularized",
                      "batchnorm_zoneout<recurrent_batchnorm", "batchnorm_zoneout<zoneout"],
    "text_gru_rnn": ["gru_zoneout<gru_unregularized", "rnn_zoneout<rnn_unregularized"],
    "fig3_zoneout_grid": [f"zc050_zh005<{other}" for other in ("zh050", "zc050", "zh005", "zc005", "zc050_zh050", "zc005_zh005")],
}
CLAIMS["table1_text8"] = CLAIMS["table1_ptb_char"]
# Figure 6 (checked by scripts/gradient_flow.py): "better" = more gradient reaches the early timesteps.
CLAIMS["fig6_gradient_flow"] = ["zoneout<cell_dropout", "zoneout<unregularized"]


@pytest.mark.parametrize("table", TABLES)
def test_claims_are_the_papers_orderings(table):
    spec = load_table(table)
    claims = spec.get("claims", [])
    assert [f"{c['better']}<{c['than']}" for c in claims] == CLAIMS.get(table, [])
    split = spec.get("claims_split", "test")
    assert split in ("valid", "test")
    rows = {row["name"]: row for row in spec["rows"]}
    for claim in claims:
        better, than = rows[claim["better"]]["paper"][split], rows[claim["than"]]["paper"][split]
        if better is None or than is None:
            assert claim.get("note"), f"{claim}: without the paper's numbers the claim must say where it comes from"
        else:
            assert better < than, f"{claim}: the paper's own numbers do not order this way"


def test_every_paper_number_is_in_a_table():
    found = {(table, row["experiment"]): (row["paper"]["valid"], row["paper"]["test"])
             for table in TABLES for row in load_table(table)["rows"]}
    assert {key: found.get(key) for key in PAPER} == PAPER
    cited_only = {(row["paper"]["valid"], row["paper"]["test"]) for table in TABLES for row in load_table(table)["rows"]
                  if row["experiment"] is None}
    assert cited_only == {(1.281, 1.250), (None, 1.24), (None, 1.29)}  # HyperLSTM, HM-LSTM (char-PTB, Text8)


def test_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=ptb_char/zoneout", "hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert launcher.cpus_per_task == 4 and launcher.mem_gb == 32
    # A CPU row asks for no GPU (a CPU-only cluster must schedule it), and for the threads it uses.
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cpu = compose("config", overrides=["experiment=ptb_char/zoneout", "hydra/launcher=slurm", "device=cpu",
                                           "trainer.threads=1"], return_hydra_config=True).hydra.launcher
    assert cpu.gpus_per_node is None and cpu.cpus_per_task == 1 and cpu.mem_gb == 8
    try:
        from dataclasses import fields

        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return  # the plugin is only needed on a cluster
    assert set(launcher) <= {f.name for f in fields(SlurmQueueConf)}
