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
    e, d = m["encoder"], m["dataset"]
    click.echo(f"cache      {path}  ({'complete' if m.get('complete') else 'INCOMPLETE'})")
    click.echo(f"rows       {m.get('num_rows', '?')} from {d['num_items']} items of {d['spec']} ({d['kind']})")
    click.echo(f"encoder    {e['model']}  alignment={e['alignment']}  latent={e['latent_channels']} ch")
    click.echo(f"weights    dinov3 {str(e.get('dinov3_sha256'))[:16]}  svg {str(e.get('svg_sha256'))[:16]}")
    t = m["transform"]
    click.echo(f"transform  {t['preset']} {t['size']}px  views={m['views']}  dtype={m['dtype']}")
    for g, s in sorted(m["groups"].items()):
        click.echo(f"  {g:<12} {s['dtype']:<9} {tuple(s['shape'])}")
    click.echo(f"shards     {len(m.get('shards', []))}  classes {len(d.get('classes', []))}  "
               f"failures {len(m.get('failures', []))}")


@cache.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--quick", is_flag=True, help="Skip hashing and the NaN/Inf scan (schema, sizes, headers, indexes only).")
def verify(path, quick):
    """Check everything: schema, shards, indexes, row counts, checksums, NaN/Inf; exit 1 when damaged."""
    from ..cache.verify import verify_cache

    problems = verify_cache(path, deep=not quick)
    for p in problems:
        click.echo(f"FAIL {p}", err=True)
    if problems:
        sys.exit(1)
    click.echo("OK: schema, shards, indexes and row counts match" + ("" if quick else "; checksums match; all values finite"))
