"""Command-line entry points: ``sae-run`` and ``sae-diff``.

Bad input of any kind prints one line per problem to stderr and exits 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine import layout, metric_defs
from engine.errors import UserError, one_line, shown_path
from engine.plan import kind_order, kinds_of, sparsity_of

EXIT_INTERRUPTED = 130


def _fail(err: UserError) -> None:
    for line in err.lines():
        click.echo(line, err=True)
    sys.exit(err.exit_code)


def _log(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


def _claim_value(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_claim_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_claim_value(x) for x in v) + "]"
    return metric_defs.fmt(v)


def summary_table(metrics: dict) -> list[str]:
    """An aligned table of every cell's settings and headline metrics."""
    columns = metric_defs.headline("table")
    larger = metrics.analyses.get("mmcs_larger", {})
    axis = "/".join(sorted({sparsity_of(c.sae)[0] for c in metrics.cells.values()})) or "l1"
    several = len(kinds_of(c.sae for c in metrics.cells.values())) > 1  # then a kind column
    lead = ["cell"] + (["kind"] if several else []) + ["m", axis]
    rows = [lead + [c for c in columns if any(c in cell.metrics for cell in metrics.cells.values())] + (["mmcs_larger"] if larger else [])]
    shown = rows[0][len(lead):]
    if several:
        order = sorted(metrics.cells.items(), key=lambda kv: (kv[1].source, kind_order(kv[1].sae["kind"]), kv[1].sae["m"], sparsity_of(kv[1].sae)[1], kv[0]))
    else:
        order = sorted(metrics.cells.items(), key=lambda kv: (kv[1].source, kv[1].sae["m"], sparsity_of(kv[1].sae)[1], kv[0]))
    for cid, cell in order:
        row = [cid] + ([cell.sae["kind"]] if several else []) + [str(cell.sae["m"]), metric_defs.fmt(sparsity_of(cell.sae)[1])]
        for c in shown:
            if c == "mmcs_larger":
                row.append(metric_defs.fmt(larger[cid]["value"]) if cid in larger else "-")
            else:
                row.append(metric_defs.fmt(cell.metrics[c]) if c in cell.metrics else "-")
        if any(c.stop for c in metrics.cells.values()):
            row.append(f"{cell.stop['step']} {cell.stop['reason']}" if cell.stop else "-")
        rows.append(row)
    if any(c.stop for c in metrics.cells.values()):
        rows[0].append("stopped")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    for c in metrics.claims:
        lines.append(f"claim {c['id']}: {c['verdict'].upper()} ({c['metric']} = {_claim_value(c['value'])})" + (f"; {c['note']}" if c.get("note") else ""))
    for source, fc in metrics.analyses.get("feature_count", {}).items():
        planted = f" (planted: {fc['planted']})" if "planted" in fc else ""
        rising = "" if fc.get("saturated", True) else "; still rising at the largest size: a lower bound"
        lines.append(f"feature_count[{source}]: {fc['estimate']} (range {fc['range'][0]}-{fc['range'][1]}{rising}){planted}")
    lines += ranking_lines(metrics.analyses.get("kind_ranking", {}))
    return lines


def ranking_lines(ranking: dict) -> list[str]:
    """One line per (source, size, metric) of ``analyses.kind_ranking``: the kinds in rank
    order with their scores at matched L0, or "no overlap"; then a line per comparison with
    cells not shown converged."""
    from engine.analyses import RANKED_METRICS

    out = []
    for source, r in sorted(ranking.items()):
        for entry in r["comparisons"]:
            where = f"kind_ranking[{source}, m={entry['m']}]"
            for name in [n for n in RANKED_METRICS if n in entry["metrics"]]:
                res = entry["metrics"][name]
                if res["overlap"] is None:
                    spans = ", ".join(f"{k} {v['l0_range'][0]:.3g}-{v['l0_range'][1]:.3g}" for k, v in entry["kinds"].items() if v["l0_range"])
                    out.append(f"{where} {name}: no overlap of the kinds' L0 ranges ({spans}); not ranked")
                    continue
                ranked = " > ".join(f"{k} {metric_defs.fmt(res['scores'][k])}" for k in res["ranking"])
                out.append(f"{where} {name} at L0 {res['overlap'][0]:.3g}-{res['overlap'][1]:.3g}: {ranked}")
            if "convergence" in entry:
                out.append(f"{where}: {entry['convergence']}")
    return out


def verify_command(bundle: str) -> None:
    from engine.bundle import verify

    v = verify(Path(bundle))
    if v.ok:
        click.echo(f"{bundle}: ok ({len(v.meta['files'])} files verified, content {v.meta['content_digest'][:16]})")
        return
    for line in v.lines():
        click.echo(line, err=True)
    sys.exit(1)


def _writable_dir(results: Path) -> None:
    """A UserError (exit 2) if ``--results`` could not be created or written; creates nothing,
    so input found bad later (a corpus file) still leaves no trace."""
    import os

    probe = results.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{shown_path(results)}: cannot create the results directory ({shown_path(probe)} is not a directory)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{shown_path(results)}: cannot write the results directory ({shown_path(probe)} is not writable)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("spec", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a spec value, e.g. --set sae.train.steps=500 (YAML value).")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True, help="Where bundles (and finished cells) are kept.")
@click.option("--threads", type=click.IntRange(1, 256), help="Threads for torch (same as --set run.threads=N; part of the result's identity).")
@click.option("--dry-run", is_flag=True, help="Print the plan (cells, sizes, steps, cost) and do no work.")
@click.option("--rerun", is_flag=True, help="Recompute the bundle even if one exists for this spec.")
@click.option("--verify", "verify_bundle", metavar="BUNDLE", help="Recompute every hash of a bundle and report changed, missing or extra files.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result (no progress bars or log lines).")
@click.option("--jobs", "-j", type=click.IntRange(1, 1024), help="Train groups of cells in N local worker processes (default: in this process).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="local: this machine; ray: each group of cells is a Ray task.")
@click.option("--address", metavar="ADDR", help="With --executor ray: the Ray cluster to use (e.g. 10.0.0.1:6379 or auto); default: start a local Ray instance.")
@click.option("--force", is_flag=True, help="Run even a plan whose time estimate exceeds the limit (7 days).")
def sae_run(spec, overrides, results, threads, dry_run, rerun, verify_bundle, quiet, force, jobs, executor, address):
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
    if threads and any(o.replace(" ", "").startswith("run.threads=") for o in overrides):
        raise click.UsageError("--threads and --set run.threads=... exclude each other")
    if executor == "ray" and jobs:
        raise click.UsageError("--jobs is for the local executor; with --executor ray the cluster's CPUs set the parallelism")
    if address and executor != "ray":
        raise click.UsageError("--address needs --executor ray")
    overrides = list(overrides) + ([f"run.threads={threads}"] if threads else [])
    try:
        from engine import budget
        from engine.plan import make_plan
        from engine.spec import load_spec

        plan = make_plan(load_spec(spec, overrides))
        if dry_run:
            from engine.runner import dry_run_lines

            for line in dry_run_lines(plan):
                click.echo(line)
            click.echo(budget.estimate(plan).line())
            return
        budget.check(plan, force, where=shown_path(spec))
        _writable_dir(results)
        from engine import runner
        from engine.executors import ExecutorOptions
        from engine.progress import for_stream

        options = ExecutorOptions("ray", address=address) if executor == "ray" else ExecutorOptions("pool", jobs) if jobs else ExecutorOptions()
        progress = for_stream(quiet)
        try:
            outcome = runner.run(plan, results, rerun=rerun, progress=progress, executor=options)
        except runner.RunFailed as e:
            progress.close()
            for f in e.failures:
                click.echo(one_line(f"error: {f}"), err=True)
            click.echo("finished cells are kept; rerun the same command to retry only the failed cells", err=True)
            sys.exit(1)
        finally:
            progress.close()
    except UserError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted: finished cells are kept; rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:  # any other refusal of the file system (e.g. --results under /proc): one line
        click.echo(f"{shown_path(e.filename or results)}: cannot write results ({e.strerror or e}); choose a writable --results directory", err=True)
        sys.exit(2)
    for note in outcome.notes:
        click.echo(note, err=True)
    if outcome.status == "cached":
        click.echo(f"cached: {outcome.path} (already complete and verified; nothing to do)")
    else:
        click.echo(f"created: {outcome.path} ({outcome.trained} cells trained, {outcome.reused} reused)")
    if not quiet:

        metrics = layout.read_metrics(outcome.path)
        for line in summary_table(metrics):
            click.echo(line)
        from engine.report import feature_lines

        for line in feature_lines(outcome.path):
            click.echo(line)


def _finite(ctx, param, value):
    """Refuse NaN and infinity, which click's FloatRange lets through."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number.")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rtol", type=click.FloatRange(min=0), callback=_finite, default=1e-2, show_default=True, help="Relative tolerance for metrics.")
@click.option("--atol", type=click.FloatRange(min=0), callback=_finite, default=1e-4, show_default=True, help="Absolute tolerance for metrics.")
@click.option("--min-mmcs", type=click.FloatRange(0, 1), callback=_finite, default=0.99, show_default=True, help="Dictionaries match if their MMCS is at least this, both ways.")
@click.option("--count-tol", type=click.FloatRange(0, 1), callback=_finite, default=0.02, show_default=True, help="Counts (dead atoms, recovered features) match if their fractions differ by at most this.")
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
            if as_json or show_all:
                raise click.UsageError("--verify only checks hashes; it takes no --json or --all")
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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
def sae_report(bundle):
    """Rebuild report/ (figures, feature analysis, index.html) of an existing BUNDLE.

    The bundle must verify outside report/; its content digest does not change.
    Exit status: 0 rebuilt, 2 unusable bundle (nothing is changed)."""
    try:
        from engine import report

        report.rebuild(bundle, log=lambda s: click.echo(s, err=True))
    except UserError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted: the report was left as it was", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"rebuilt: {Path(bundle) / 'report'} (index.html and figures; the bundle verifies, content unchanged)")
