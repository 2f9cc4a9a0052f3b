"""Training configuration: a TOML or JSON file with four tables. Every key is optional except
``data.files``; unknown keys and out-of-range values raise :class:`ConfigError`.

Example (TOML)::

    [data]
    files = ["train.extxyz"]      # extxyz, ASE db (.db/.json) or n2p2 input.data; several allowed
    format = "auto"               # or extxyz | db | n2p2 (for all files)
    test_fraction = 0.1           # for structures without set=train/test in the file
    split = "structure"           # "structure": random over structures; "label": stratified
                                  # per type label (every label keeps ~test_fraction in test)
    use_file_split = true         # respect set=train/test stored in the files
    use_forces = true

    [model]
    input_nn = ""                 # n2p2 input.nn with elements, network and SFs (its training
                                  # keywords are ignored); if empty the keys below are used
    elements = []                 # default: all elements in the data
    cutoff = 6.0                  # Å
    cutoff_type = 6               # n2p2 cutoff enum (6 = POLY2)
    hidden = [15, 15]
    activations = ["t", "t", "l"]
    scaling = "scalecenter"       # none | scale | center | scalecenter | sigma
    reference_energies = true     # least-squares per-element offsets -> atom_energy
    radial = {n = 6, r_min = 1.5, mode = "shifted"}          # type 2 grid ("centred" too)
    angular = {eta = [0.02], zeta = [1, 4], lambda = [-1, 1], type = 9}   # n = 0 disables
    drop_pairs = []               # e.g. [["Zn", "H"], ["H", "H"]]
    pair_cutoffs = []             # e.g. [["Zn", "H", 4.0]]
    constant_sf = "error"         # (near-)constant symmetry functions, i.e. max - min over the
                                  # training atoms of their element <= constant_sf_tol *
                                  # max(1, |max|, |min|) (scaling would divide by ~0 and new
                                  # environments extrapolate wildly): "error" stops with a
                                  # message naming element, SF index, input.nn line and range;
                                  # "drop" removes them before training (the written input.nn,
                                  # scaling.data and potential.fragnn lack them, so the saved
                                  # potential evaluates exactly as trained; the list goes to
                                  # output/dropped_symmetry_functions.txt)
    constant_sf_tol = 1e-6        # relative tolerance of that check (>= 0)
    init_from = ""                # fine-tuning: a trained potential (file, n2p2 directory or
                                  # shipped name) whose model, SF scaling, atom energies and
                                  # weights are the starting point; the other model keys are
                                  # then ignored and the scaling is kept (new data outside its
                                  # range is scaled beyond [-1, 1], not rescaled)

    [training]
    optimizer = "ekf"             # ekf | adam
    epochs = 10
    seed = 12345
    force_weight = 10.0           # EKF: multiplies force errors and Jacobians (n2p2)
    energy_fraction = 1.0         # EKF energy updates per epoch / training structures
    force_fraction = 0.02315      # EKF force updates per epoch / training force components
    energy_error_threshold = 0.0  # EKF candidate accepted if |error| > thr * RMSE (n2p2
    force_error_threshold = 1.0   #   selection_mode 2; energy error per atom vs per-atom RMSE),
                                  #   at most threshold_trials candidates from the epoch's
                                  #   shuffled lists; the energy update itself uses the total
                                  #   energy error and Jacobian, as n2p2
    threshold_trials = 3
    jacobian_memory_mb = 0        # per process: cache the descriptor Jacobians dG/dr of the
                                  # training structures up to this size (MiB). 0 (default):
                                  # none, recomputed per force update; peak memory then stays
                                  # near the Kalman matrix (8 n_weights^2 bytes). The cache
                                  # takes ~45 kB per atom and saved no measurable time on
                                  # the EMT bench (benchmarks/bench_training.py: 0.49 GiB
                                  # peak without, 1.99 GiB with 1.5 GiB of cache; 116-125
                                  # vs 113-117 CPU s per epoch)
    ema_epochs = 0.1              # the model evaluated each epoch and saved is the moving
                                  # average of the optimiser's weights over its updates, with
                                  # this time constant in epochs (bias-corrected EMA, as MACE
                                  # and NequIP; not in n2p2); 0: the last weights (n2p2).
                                  # ../shared/bench, 3 EKF epochs: fragments' energy RMSE
                                  # -25..-40 %, forces ~-5 %
    early_stopping_patience = 0   # epochs without test improvement before stopping (0: off)
    early_stopping_metric = "sum" # energy | force | sum (E RMSE/atom + F RMSE)
    resume = true                 # continue from output/checkpoint.npz if present
    progress = true
    threads = 1                   # threads over structures for the per-epoch error pass and
                                  # predictions (results do not depend on it)

    [training.kalman]             # n2p2 kalman_type 0 (standard) or 1 (fading memory)
    type = 0
    epsilon = 0.01
    q0 = 0.01
    qtau = 2.302
    qmin = 1e-6
    eta = 0.01
    etatau = 2.302
    etamax = 1.0
    lambda = 0.96
    nu = 0.99987
    decoupled = false             # one filter per element (block-diagonal covariance)
    rank_block = 64               # deferred rank-1 updates between covariance folds
    threads = 1                   # BLAS threads for the covariance products
    init_state = ""               # optional checkpoint.npz of an earlier run (same number of
                                  # weights) whose filter state (P, q, eta, lambda) starts
                                  # this one; use with model.init_from to continue an annealed
                                  # filter on extended data (active learning)
    symmetric = false             # serial only: one-triangle SYMV/SYRK filter (faster, but
                                  # then MPI runs agree with serial only to round-off, which
                                  # threshold selection can amplify)
    max_innovation = 0.5          # innovation gate kappa (not in n2p2; 0 = off, n2p2's filter):
                                  # an update whose error e exceeds kappa * sqrt(h.P h + R)
                                  # is damped by raising R to e^2/kappa^2 - h.P h, so that no
                                  # single update moves the weights by more than kappa in the
                                  # metric of P^-1 (keeps large errors, outliers or saturated
                                  # networks from throwing the weights far; it damps
                                  # more updates as P shrinks: 19 % of the force updates
                                  # in epoch 3 of ../shared/bench)
    gate_energies = false         # the gate applies to force updates only: an energy update
                                  # corrects the structure's total energy in full, as in
                                  # n2p2 (gating them kept the bench's densest periodic
                                  # cells, which the filter forgets between their one
                                  # energy update per epoch, half-corrected)

    [training.adam]
    learning_rate = 0.001
    batch_size = 16
    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-8
    force_weight = 1.0            # loss = (dE/N)^2 + force_weight * mean(dF^2)

    [output]
    directory = "train_out"
    n2p2 = true                   # also write input.nn, scaling.data, weights.NNN.data
    plots = true
    checkpoint = true
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Dict

__all__ = ["ConfigError", "DEFAULTS", "load_config", "normalise_config"]


class ConfigError(ValueError):
    """Invalid training configuration (message names the key)."""


DEFAULTS: Dict[str, Dict[str, Any]] = {
    "data": {"files": None, "format": "auto", "test_fraction": 0.1, "split": "structure",
             "use_file_split": True, "use_forces": True},
    "model": {"input_nn": "", "elements": [], "cutoff": 6.0, "cutoff_type": 6,
              "cutoff_alpha": 0.0, "hidden": [15, 15], "activations": ["t", "t", "l"],
              "scaling": "scalecenter", "normalize_nodes": False, "reference_energies": True,
              "radial": {"n": 6, "r_min": 1.5, "mode": "shifted"},
              "angular": {"n": 1, "eta": [0.02], "zeta": [1, 4], "lambda": [-1, 1], "type": 9},
              "drop_pairs": [], "pair_cutoffs": [], "constant_sf": "error",
              "constant_sf_tol": 1e-6, "init_from": ""},
    "training": {"optimizer": "ekf", "epochs": 10, "seed": 12345, "force_weight": 10.0,
                 "energy_fraction": 1.0, "force_fraction": 0.02315,
                 "energy_error_threshold": 0.0, "force_error_threshold": 1.0,
                 "threshold_trials": 3, "jacobian_memory_mb": 0.0,
                 "ema_epochs": 0.1,
                 "early_stopping_patience": 0, "early_stopping_metric": "sum",
                 "resume": True, "progress": True, "threads": 1,
                 "kalman": {"type": 0, "epsilon": 0.01, "q0": 0.01, "qtau": 2.302,
                            "qmin": 1e-6, "eta": 0.01, "etatau": 2.302, "etamax": 1.0,
                            "lambda": 0.96, "nu": 0.99987, "decoupled": False,
                            "rank_block": 64, "threads": 1, "symmetric": False,
                            "init_state": "", "max_innovation": 0.5,
                            "gate_energies": False},
                 "adam": {"learning_rate": 1e-3, "batch_size": 16, "beta1": 0.9,
                          "beta2": 0.999, "eps": 1e-8, "force_weight": 1.0}},
    "output": {"directory": "train_out", "n2p2": True, "plots": True, "checkpoint": True},
}


def load_config(path: str) -> Dict[str, Any]:
    """Read a TOML (.toml) or JSON file and return the validated config with defaults."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such config file")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if path.endswith(".json"):
            cfg = json.loads(raw.decode())
        else:
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib
            cfg = tomllib.loads(raw.decode())
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    base = os.path.dirname(os.path.abspath(path))
    cfg = normalise_config(cfg)
    # paths relative to the config file
    cfg["data"]["files"] = [f if os.path.isabs(f) else os.path.join(base, f)
                            for f in cfg["data"]["files"]]
    if cfg["model"]["input_nn"] and not os.path.isabs(cfg["model"]["input_nn"]):
        cfg["model"]["input_nn"] = os.path.join(base, cfg["model"]["input_nn"])
    init = cfg["model"]["init_from"]
    if init and os.path.exists(os.path.join(base, init)):
        cfg["model"]["init_from"] = os.path.join(base, init)
    st = cfg["training"]["kalman"]["init_state"]
    if st and not os.path.isabs(st):
        cfg["training"]["kalman"]["init_state"] = os.path.join(base, st)
    if not os.path.isabs(cfg["output"]["directory"]):
        cfg["output"]["directory"] = os.path.join(base, cfg["output"]["directory"])
    return cfg


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_type(default: Any, v: Any, name: str) -> Any:
    """v if it has the type of the key's default (bool, finite number, string, list), else a
    ConfigError naming the key. (TOML/JSON give no "false" for false: a string is not a bool.)"""
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"'{name}' must be true or false, got {v!r}")
    elif _is_number(default):
        if not _is_number(v):
            raise ConfigError(f"'{name}' must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(f"'{name}' must be a finite number, got {v!r}")
    elif isinstance(default, str):
        if not isinstance(v, str):
            raise ConfigError(f"'{name}' must be a string, got {v!r}")
    elif isinstance(default, list):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"'{name}' must be a list, got {v!r}")
        v = list(v)
    return v


def _check_number_list(v: list, name: str) -> None:
    for x in v:
        if not _is_number(x) or not math.isfinite(x):
            raise ConfigError(f"'{name}' must list finite numbers, got {x!r}")


def _merge(defaults: dict, given: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        if k not in defaults:
            raise ConfigError(f"unknown key '{where}{k}' (known: {', '.join(sorted(defaults))})")
        if isinstance(defaults[k], dict) and k not in ("radial", "angular"):
            if not isinstance(v, dict):
                raise ConfigError(f"'{where}{k}' must be a table")
            out[k] = _merge(defaults[k], v, f"{where}{k}.")
        elif isinstance(defaults[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"'{where}{k}' must be a table")
            unknown = set(v) - set(defaults[k])
            if unknown:
                raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{where}{k}'")
            out[k] = {**defaults[k], **{kk: _check_type(defaults[k][kk], vv, f"{where}{k}.{kk}")
                                        for kk, vv in v.items()}}
        else:
            out[k] = _check_type(defaults[k], v, f"{where}{k}")
    return out


def _num(cfg, sec, key, lo=None, hi=None, integer=False, lo_open=False):
    v = cfg[sec][key] if "." not in sec else cfg[sec.split(".")[0]][sec.split(".")[1]][key]
    name = f"{sec}.{key}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"'{name}' must be a number, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"'{name}' must be a finite number, got {v!r}")
    if integer and int(v) != v:
        raise ConfigError(f"'{name}' must be an integer, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"'{name}' = {v} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v > hi:
        raise ConfigError(f"'{name}' = {v} must be <= {hi}")


def normalise_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fill defaults and check values; raises ConfigError naming the key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config must be a table/object")
    out = _merge(DEFAULTS, cfg, "")
    files = out["data"]["files"]
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, (list, tuple)) or not files or \
            not all(isinstance(f, str) for f in files):
        raise ConfigError(f"'data.files' must list at least one data file (paths), got "
                          f"{files!r}")
    out["data"]["files"] = list(files)
    if out["data"]["format"] not in ("auto", "extxyz", "db", "n2p2"):
        raise ConfigError(f"'data.format' must be auto, extxyz, db or n2p2, got "
                          f"{out['data']['format']!r}")
    _num(out, "data", "test_fraction", 0.0, 1.0)
    if out["data"]["test_fraction"] >= 1.0:
        raise ConfigError("'data.test_fraction' must be < 1")
    if out["data"]["split"] not in ("structure", "label"):
        raise ConfigError(f"'data.split' must be 'structure' or 'label', got "
                          f"{out['data']['split']!r}")
    m = out["model"]
    _num(out, "model", "cutoff", 0.0, lo_open=True)
    _num(out, "model", "cutoff_type", 0, 8, integer=True)
    if not all(isinstance(h, int) and h > 0 for h in m["hidden"]):
        raise ConfigError(f"'model.hidden' must list positive integers, got {m['hidden']!r}")
    if len(m["activations"]) != len(m["hidden"]) + 1:
        raise ConfigError(f"'model.activations' needs {len(m['hidden']) + 1} letters "
                          f"(hidden layers + output), got {m['activations']!r}")
    for a in m["activations"]:
        if a not in list("ltsprgcSeh"):
            raise ConfigError(f"'model.activations': unknown activation {a!r} "
                              "(n2p2 letters l t s p r g c S e h)")
    for key in ("eta", "zeta", "lambda"):
        _check_number_list(m["angular"][key], f"model.angular.{key}")
    if not all(isinstance(e, str) for e in m["elements"]):
        raise ConfigError(f"'model.elements' must list element symbols, got {m['elements']!r}")
    if not all(isinstance(a, str) for a in m["activations"]):
        raise ConfigError(f"'model.activations' must list letters, got {m['activations']!r}")
    if m["scaling"] not in ("none", "scale", "center", "scalecenter", "sigma"):
        raise ConfigError(f"'model.scaling' invalid: {m['scaling']!r}")
    if m["constant_sf"] not in ("error", "drop"):
        raise ConfigError(f"'model.constant_sf' must be 'error' or 'drop', got "
                          f"{m['constant_sf']!r}")
    _num(out, "model", "constant_sf_tol", 0.0)
    if not isinstance(m["init_from"], str):
        raise ConfigError(f"'model.init_from' must be a path or potential name, got "
                          f"{m['init_from']!r}")
    if m["init_from"] and m["input_nn"]:
        raise ConfigError("'model.init_from' and 'model.input_nn' exclude each other (the "
                          "model comes from the potential given in init_from)")
    t = out["training"]
    if t["optimizer"] not in ("ekf", "adam"):
        raise ConfigError(f"'training.optimizer' must be 'ekf' or 'adam', got {t['optimizer']!r}")
    _num(out, "training", "epochs", 0, integer=True)
    _num(out, "training", "seed", 0, integer=True)
    _num(out, "training", "force_weight", 0.0)
    _num(out, "training", "energy_fraction", 0.0)
    _num(out, "training", "force_fraction", 0.0)
    _num(out, "training", "energy_error_threshold", 0.0)
    _num(out, "training", "force_error_threshold", 0.0)
    _num(out, "training", "threshold_trials", 1, integer=True)
    _num(out, "training", "jacobian_memory_mb", 0.0)
    _num(out, "training", "ema_epochs", 0.0)
    _num(out, "training", "early_stopping_patience", 0, integer=True)
    if t["early_stopping_metric"] not in ("energy", "force", "sum"):
        raise ConfigError("'training.early_stopping_metric' must be energy, force or sum")
    k = t["kalman"]
    if k["type"] not in (0, 1):
        raise ConfigError(f"'training.kalman.type' must be 0 or 1, got {k['type']!r}")
    for key in ("epsilon", "eta", "etamax", "lambda", "nu"):
        _num(out, "training.kalman", key, 0.0, lo_open=True)
    for key in ("q0", "qtau", "qmin", "etatau"):
        _num(out, "training.kalman", key, 0.0)
    _num(out, "training.kalman", "lambda", 0.0, 1.0, lo_open=True)
    _num(out, "training.kalman", "nu", 0.0, 1.0, lo_open=True)
    _num(out, "training.kalman", "rank_block", 1, integer=True)
    _num(out, "training.kalman", "max_innovation", 0.0)
    _num(out, "training.kalman", "threads", 1, integer=True)
    _num(out, "training", "threads", 1, integer=True)
    if not isinstance(k["gate_energies"], bool):
        raise ConfigError(f"'training.kalman.gate_energies' must be true or false, got "
                          f"{k['gate_energies']!r}")
    if not isinstance(k["init_state"], str):
        raise ConfigError(f"'training.kalman.init_state' must be a path, got {k['init_state']!r}")
    _num(out, "training.adam", "learning_rate", 0.0, lo_open=True)
    _num(out, "training.adam", "batch_size", 1, integer=True)
    _num(out, "training.adam", "beta1", 0.0, 1.0)
    _num(out, "training.adam", "beta2", 0.0, 1.0)
    _num(out, "training.adam", "force_weight", 0.0)
    return out
