"""`svgfeat cache info|verify CACHE`."""

import json
import sys

import click


@click.group()
def cache():
    """Inspect feature caches."""


@cache.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(path, as_json):
    """Show what a cache holds and how it was made."""
    from ..cache import read_manifest

    m = read_manifest(path)
    if as_json:
        click.echo(json.dumps(m, indent=1))
        return
    e, d, t = m["encoder"], m["dataset"], m["transform"]
    click.echo(f"cache      {path}  ({'complete' if m.get('complete') else 'INCOMPLETE'})")
    click.echo(f"rows       {m.get('num_rows', '?')} from {d.get('num_items', '?')} items of {d.get('spec', '?')} "
               f"({d.get('kind', '?')})")
    click.echo(f"encoder    {e.get('model', '?')}  alignment={e.get('alignment')}  latent={e.get('latent_channels')} ch"
               + ("  (external features)" if e.get("external") else ""))
    click.echo(f"weights    dinov3 {str(e.get('dinov3_sha256'))[:16]}  svg {str(e.get('svg_sha256'))[:16]}")
    click.echo(f"transform  {t.get('preset')} {t.get('size')}px  views={m.get('views', 1)}  dtype={m.get('dtype')}")
    for g, s in sorted(m["groups"].items()):
        click.echo(f"  {g:<12} {s['dtype']:<9} {tuple(s['shape'])}")
    click.echo(f"shards     {len(m.get('shards') or [])}  classes {len(d.get('classes') or [])}  "
               f"failures {len(m.get('failures') or [])}")


@cache.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--quick", is_flag=True,
              help="Skip the sha256 of every shard (schema, sizes, headers, indexes and the NaN/Inf scan only).")
def verify(path, quick):
    """Check everything: schema, shards, indexes, row counts, checksums, NaN/Inf; exit 1 when damaged."""
    from ..cache.verify import verify_cache

    problems = verify_cache(path, deep=not quick)
    for p in problems:
        click.echo(f"FAIL {p}", err=True)
    if problems:
        sys.exit(1)
    click.echo("OK: schema, shards, indexes and row counts match; all values finite" + ("" if quick else "; checksums match"))
