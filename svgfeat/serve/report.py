"""A self-contained HTML page of search results (queries and neighbours as embedded base64 JPEG thumbnails)."""

from __future__ import annotations

import html

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em} .query{margin:1.2em 0;padding:1em;background:#fff;border:1px solid #ddd;border-radius:6px}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:170px;text-align:center;font-size:.8em;word-break:break-all}
figure img{max-width:160px;max-height:160px;border:1px solid #ccc;background:#eee}
figure.q img{border:2px solid #2a6}
.noimg{display:inline-block;width:160px;height:100px;line-height:100px;background:#eee;color:#888}
.meta{color:#555;font-size:.9em}
"""


def _figure(thumb: str | None, caption: str, cls: str = "") -> str:
    img = (f'<img src="{html.escape(thumb)}" alt="">' if thumb else '<span class="noimg">no image</span>')
    return f'<figure class="{cls}">{img}<figcaption>{caption}</figcaption></figure>'


def render_report(title: str, info: dict, queries: list[dict]) -> str:
    """``queries``: [{"query": str, "thumb": data-uri|None, "results": [{"id", "score", "path", "label",
    "class", "thumb", "patches"?}]}] -> one HTML document."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    prov = info.get("provenance") or {}
    enc = (prov.get("encoder") or {}).get("model", "?")
    parts.append(f"<p class='meta'>index: {html.escape(str(info.get('factory')))}, metric "
                 f"{html.escape(str(info.get('metric')))}, {info.get('ntotal')} vectors of dimension "
                 f"{info.get('dim')}, group {html.escape(str(info.get('group')))}, encoder {html.escape(str(enc))}"
                 "</p>")
    for q in queries:
        parts.append(f"<div class='query' data-query='{html.escape(q['query'])}'>")
        parts.append(f"<div class='meta'>query: {html.escape(q['query'])}</div><div class='row'>")
        parts.append(_figure(q.get("thumb"), "query", "q"))
        for rank, r in enumerate(q["results"], 1):
            cap = f"#{rank} id {r['id']}<br>score {r['score']:.4f}"
            if r.get("class") or r.get("label", -1) >= 0:
                cap += f"<br>{html.escape(str(r.get('class') or r.get('label')))}"
            if r.get("path"):
                cap += f"<br>{html.escape(str(r['path']))}"
            if r.get("patches"):
                rr, cc = r["patches"][0]
                cap += f"<br>best patch ({rr}, {cc})"
            parts.append(_figure(r.get("thumb"), cap, "result"))
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)
