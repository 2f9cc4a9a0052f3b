"""The ``pyfragnn`` command line.

Subcommands: ``example`` (the main job: a shipped potential on an example structure),
``evaluate``, ``info``, ``convert``, ``plugin-path``, and the workflow commands that their
modules register: ``fragments``, ``label``, ``range``, ``train``, ``select``, ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# Modules that add their own subcommand through register_cli(subparsers).
_REGISTERED = ["pyfragnn.fragments", "pyfragnn.labelling", "pyfragnn.interaction_range",
               "pyfragnn.training.cli", "pyfragnn.demo", "pyfragnn.example",
               "pyfragnn.active_learning",
               "pyfragnn.workflow"]


def _cmd_info(args) -> int:
    from pyfragnn import Potential

    pot = Potential.load(args.potential)
    print(pot)
    for e, el in enumerate(pot.elements):
        layers = pot.core.network_layers(e)
        print(f"  {el}: {pot.core.n_symmetry_functions(e)} symmetry functions, network "
              f"{'-'.join(map(str, layers))}")
    print(f"  scaling: {pot.core.scaling_type}; normalisation: {pot.core.normalisation[0]}")
    return 0


def _cmd_evaluate(args) -> int:
    import ase.io

    from pyfragnn import FragNN

    calc = FragNN(args.potential)
    if args.length_unit or args.energy_unit:
        calc.potential.set_units(args.length_unit or calc.potential.length_unit,
                                 args.energy_unit or calc.potential.energy_unit)
    for k, atoms in enumerate(ase.io.iread(args.structure, index=":")):
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        line = (f"structure {k}: {len(atoms)} atoms, E = {e:.8f} eV ({e / len(atoms):.6f} eV/atom), "
                f"max |F| = {abs(f).max():.5f} eV/Å")
        if atoms.cell.rank == 3:
            line += f", stress (GPa) = {(atoms.get_stress() * 160.21766).round(4).tolist()}"
        n = calc.results["n_extrapolations"]
        if n:
            line += f", {n} extrapolating symmetry-function values"
        print(line)
    return 0


def _cmd_convert(args) -> int:
    from pyfragnn import Potential

    pot = Potential.load(args.source)
    if args.n2p2:
        pot.save_n2p2(args.target)
    else:
        pot.save(args.target)
    print(f"wrote {args.target}")
    return 0


def _cmd_plugin_path(args) -> int:
    from pyfragnn.lammps import plugin_dir, plugin_path

    try:
        print(plugin_dir() if args.dir else plugin_path())
    except FileNotFoundError as err:
        print(f"pyfragnn plugin-path: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyfragnn", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a potential")
    p.add_argument("potential", help="native file, n2p2 directory or shipped name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("evaluate", help="energy, forces and stress of structures (any ASE format)")
    p.add_argument("potential")
    p.add_argument("structure")
    p.add_argument("--length-unit", type=float, help="Å per potential length unit")
    p.add_argument("--energy-unit", type=float, help="eV per potential energy unit")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("convert", help="convert a potential between n2p2 and native format")
    p.add_argument("source")
    p.add_argument("target", help="native file, or a directory with --n2p2")
    p.add_argument("--n2p2", action="store_true", help="write n2p2 files into TARGET")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("plugin-path", help="print the path of the LAMMPS plugin")
    p.add_argument("--dir", action="store_true", help="print its directory instead")
    p.set_defaults(func=_cmd_plugin_path)

    for name in _REGISTERED:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                continue  # an optional part that is not installed
            raise
        mod.register_cli(sub)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"pyfragnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
