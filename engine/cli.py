"""Command-line entry points: ``sae-run`` and ``sae-diff``.

Bad input of any kind prints one line per problem to stderr and exits 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.errors import UserError

EXIT_INTERRUPTED = 130


def _fail(err: UserError) -> None:
    for line in err.lines():
        click.echo(line, err=True)
    sys.exit(err.exit_code)


def _log(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_table(metrics: dict) -> list[str]:
    """An aligned table of every cell's settings and headline metrics."""
    columns = ["mmcs_truth", "recovered_0.9", "dead", "l0", "fvu", "ce_recovered"]
    larger = metrics.get("analyses", {}).get("mmcs_larger", {})
    rows = [["cell", "m", "l1"] + [c for c in columns if any(c in cell["metrics"] for cell in metrics["cells"].values())] + (["mmcs_larger"] if larger else [])]
    shown = rows[0][3:]
    order = sorted(metrics["cells"].items(), key=lambda kv: (kv[1]["source"], kv[1]["sae"]["m"], kv[1]["sae"]["l1"], kv[0]))
    for cid, cell in order:
        row = [cid, str(cell["sae"]["m"]), _fmt(cell["sae"]["l1"])]
        for c in shown:
            if c == "mmcs_larger":
                row.append(_fmt(larger[cid]["value"]) if cid in larger else "-")
            else:
                row.append(_fmt(cell["metrics"][c]) if c in cell["metrics"] else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    for source, fc in metrics.get("analyses", {}).get("feature_count", {}).items():
        planted = f" (planted: {fc['planted']})" if "planted" in fc else ""
        rising = "" if fc.get("saturated", True) else "; still rising at the largest size: a lower bound"
        lines.append(f"feature_count[{source}]: {fc['estimate']} (range {fc['range'][0]}-{fc['range'][1]}{rising}){planted}")
    return lines


def verify_command(bundle: str) -> None:
    from engine.bundle import verify

    v = verify(Path(bundle))
    if v.ok:
        click.echo(f"{bundle}: ok ({len(v.meta['files'])} files verified, content {v.meta['content_digest'][:16]})")
        return
    for line in v.lines():
        click.echo(line, err=True)
    sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("spec", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a spec value, e.g. --set sae.train.steps=500 (YAML value).")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True, help="Where bundles (and finished cells) are kept.")
@click.option("--threads", type=click.IntRange(1, 256), help="Threads for torch (same as --set run.threads=N; part of the result's identity).")
@click.option("--dry-run", is_flag=True, help="Print the plan (cells, sizes, steps, cost) and do no work.")
@click.option("--rerun", is_flag=True, help="Recompute the bundle even if one exists for this spec.")
@click.option("--verify", "verify_bundle", metavar="BUNDLE", help="Recompute every hash of a bundle and report changed, missing or extra files.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result.")
def sae_run(spec, overrides, results, threads, dry_run, rerun, verify_bundle, quiet):
    """Run the experiment SPEC (YAML) and write a content-hashed result bundle."""
    if verify_bundle:
        if spec or overrides or dry_run or rerun:
            raise click.UsageError("--verify takes a bundle and no SPEC, --set, --dry-run or --rerun")
        try:
            verify_command(verify_bundle)
        except UserError as e:
            _fail(e)
        return
    if spec is None:
        raise click.UsageError("missing SPEC (a YAML file such as specs/toy_quick.yaml)")
    if dry_run and rerun:
        raise click.UsageError("--dry-run and --rerun exclude each other")
    overrides = list(overrides) + ([f"run.threads={threads}"] if threads else [])
    log = _log(quiet)
    try:
        from engine.plan import make_plan
        from engine.spec import load_spec

        plan = make_plan(load_spec(spec, overrides))
        if dry_run:
            from engine.runner import dry_run_lines

            for line in dry_run_lines(plan):
                click.echo(line)
            return
        from engine import runner

        try:
            outcome = runner.run(plan, results, rerun=rerun, log=log)
        except runner.RunFailed as e:
            for f in e.failures:
                click.echo(f"error: {f}", err=True)
            click.echo("finished cells are kept; rerun the same command to retry only the failed cells", err=True)
            sys.exit(1)
    except UserError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted: finished cells are kept; rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for note in outcome.notes:
        click.echo(note, err=True)
    if outcome.status == "cached":
        click.echo(f"cached: {outcome.path} (already complete and verified; nothing to do)")
    else:
        click.echo(f"created: {outcome.path} ({outcome.trained} cells trained, {outcome.reused} reused)")
    if not quiet:
        import json

        metrics = json.loads((outcome.path / "metrics.json").read_text())
        for line in summary_table(metrics):
            click.echo(line)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-2, show_default=True, help="Relative tolerance for metrics.")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="Absolute tolerance for metrics.")
@click.option("--min-mmcs", type=click.FloatRange(0, 1), default=0.99, show_default=True, help="Dictionaries match if their MMCS is at least this, both ways.")
@click.option("--count-tol", type=click.FloatRange(0, 1), default=0.02, show_default=True, help="Counts (dead atoms, recovered features) match if their fractions differ by at most this.")
@click.option("--json", "as_json", is_flag=True, help="Print a stable JSON document (schema 1) instead of tables.")
@click.option("--all", "show_all", is_flag=True, help="Show every compared value, not only differences.")
@click.option("--verify", "verify_only", is_flag=True, help="Only verify the given bundle(s): recompute every file hash.")
def sae_diff(bundles, rtol, atol, min_mmcs, count_tol, as_json, show_all, verify_only):
    """Compare result bundles A and B: verdict identical / equivalent / different.

    Exit status: 0 identical or equivalent, 1 different, 2 unusable input."""
    try:
        if verify_only:
            if not bundles:
                raise click.UsageError("--verify needs at least one BUNDLE")
            for b in bundles:
                verify_command(str(b))
            return
        if len(bundles) != 2:
            raise click.UsageError(f"expected two bundles, got {len(bundles)}: sae-diff A B")
        from engine import diff

        code = diff.main(*bundles, tol=diff.Tolerances(rtol, atol, min_mmcs, count_tol), as_json=as_json, show_all=show_all, echo=click.echo)
    except UserError as e:
        _fail(e)
    sys.exit(code)
