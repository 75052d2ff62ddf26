"""`svgfeat serve INDEX [--host 127.0.0.1] [--port 8080]`: HTTP search service (standard library only)."""

import click

from ._common import encoder_options
from ._types import K_NEIGHBOURS, SECONDS, Count


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (loopback by default; 0.0.0.0 exposes the service to the network).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--max-upload", default="10MB", show_default=True, help="Largest accepted upload, e.g. 10MB.")
@click.option("--max-concurrent", default=4, show_default=True, type=Count(1, "a number of requests", 1024),
              help="Searches running at once; more get 503.")
@click.option("--max-k", default=100, show_default=True, type=K_NEIGHBOURS, help="Largest k accepted.")
@click.option("--cache", "caches", multiple=True, metavar="NAME=CACHE",
              help="A feature cache whose rows clients may query as {\"cache_row\": \"NAME:ROW\"} (repeatable). "
                   "The index's own source cache is always available as 'index'; clients never name paths.")
@click.option("--body-timeout", default=30.0, show_default=True, type=SECONDS,
              help="Seconds a client may take to send its request body (then 408).")
@click.option("--verbose", is_flag=True, help="Log every request.")
@encoder_options
def serve(index_path, host, port, max_upload, max_concurrent, max_k, caches, body_timeout, verbose, dinov3, svg,
          svg_config, model, alignment, device):
    """Serve INDEX over HTTP: GET / (upload page), GET /api/info, POST /api/search, GET /thumb/<id>.
    Image uploads are encoded with the index's encoder, rebuilt from the weight files its cache recorded (or
    --model/--dinov3/--svg given here); when a file cannot be found, only row queries work."""
    from ..errors import ConfigError
    from ..heads.index_factory import parse_memory
    from ..heads.patch_retrieval import PatchIndex, load_any
    from ..serve.engine import index_encoder
    from ..serve.server import make_server

    limit = parse_memory(max_upload)
    named = {}
    for item in caches:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r}: expected NAME=CACHE, e.g. val=./cache/val", param_hint="--cache")
        named[name] = path
    idx = load_any(index_path, device=device)
    flat = idx.index_ if isinstance(idx, PatchIndex) else idx
    try:
        encoder = index_encoder(flat.provenance_, dinov3, svg, svg_config, model, alignment, device)
    except ConfigError as e:
        if dinov3 or svg or svg_config or model:
            raise
        encoder = None  # row queries only; the reason is printed
        click.echo(f"note: image uploads are off: {e}", err=True)
    server = make_server(idx, encoder, host, port, max_upload=limit, max_concurrent=max_concurrent, max_k=max_k,
                         device=device, verbose=verbose, caches=named, body_timeout=body_timeout)
    if not server.is_loopback:
        click.echo(f"warning: listening on {host}: anyone who can reach this machine can query the index", err=True)
    click.echo(f"serving {index_path} on {server.url} (caches: {', '.join(sorted(server.caches)) or 'none'}; "
               "Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
