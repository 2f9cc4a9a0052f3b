"""``pyfragnn train CONFIG``: the command line of the trainer (MPI-aware)."""
from __future__ import annotations

import argparse
import os
import sys
__all__ = ["register_cli"]


def _comm():
    """mpi4py COMM_WORLD when started under mpirun with more than one rank, else None."""
    if not any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                         "PMIX_RANK", "MPI_LOCALNRANKS")):
        return None
    from mpi4py import MPI
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _cmd_train(args) -> int:
    from .config import ConfigError, load_config
    from ..dataset import DatasetError
    from .trainer import Trainer
    comm = _comm()
    try:
        cfg = load_config(args.config)
        if args.epochs is not None:
            cfg["training"]["epochs"] = args.epochs
        if args.output:
            cfg["output"]["directory"] = os.path.abspath(args.output)
        if args.no_resume:
            cfg["training"]["resume"] = False
        if args.quiet:
            cfg["training"]["progress"] = False
        Trainer(cfg, comm=comm).run()
    except (ConfigError, DatasetError) as exc:
        if comm is None or comm.Get_rank() == 0:
            print(f"pyfragnn train: error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        # An error on some ranks only: end every rank (the others may wait in a collective,
        # and MPI_Finalize at exit would wait for them), after printing the traceback.
        if comm is None:
            raise
        import time
        import traceback
        # one write, then a pause before MPI_Abort: mpirun forwards a rank's stderr through a
        # pipe, and an abort that arrives first discards what is still in it (CI once got only
        # the traceback's first line)
        sys.stderr.flush()
        os.write(2, traceback.format_exc().encode())
        time.sleep(1.0)
        comm.Abort(3)
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (config format: see pyfragnn.training.config)."""
    p = subparsers.add_parser(
        "train", help="train an HDNNP (EKF or Adam; mpirun -np N for data parallelism)",
        description="Train an HDNNP from a TOML/JSON config file; see "
                    "pyfragnn.training.config for every key. Writes potential.fragnn, n2p2/, "
                    "learning_curve.csv/png, rmse_table.csv/md, parity plots and a per-epoch "
                    "checkpoint (resumed automatically) into output.directory.")
    p.add_argument("config", help="config file (.toml or .json)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("-o", "--output", help="override output.directory")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)
    return p
