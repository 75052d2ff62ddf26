"""Pretrained weight files on the Hugging Face Hub: what they are and how to get them.

One home for every pretrained file svgfeat knows (timm's ``default_cfgs`` idea): each registered model
name has a *pretrained config*, a mapping ``role -> HubFile`` (roles: ``dinov3``, ``svg``, ``svg_config``,
``dit``, ``dit_config``, ``stats``, ...). Files are fetched with ``huggingface_hub.hf_hub_download`` into
the standard cache (``$HF_HOME/hub``), so ``HF_HUB_OFFLINE=1`` and pre-populated caches work as for
timm/transformers. Public API:

- :class:`HubFile` -- (repo_id, filename, revision) of one file;
- :func:`register_pretrained` -- add or replace a model's files (other modules register theirs this way);
- :func:`pretrained_cfg` -- a model's files, with user overrides (``overlay``);
- :func:`resolve` -- a weight *spec* (local path, ``"hf"``, ``"hf://ORG/NAME/path[@rev]"`` or a HubFile)
  -> ``(local path, provenance)``; provenance = {path, repo, filename, revision (snapshot commit), sha256}.

Weight specs accepted everywhere a weight path is (``--dinov3``, ``--svg``, ``--dit``, ``--stats``):
``hf`` (the model's registered file), ``hf://ORG/NAME/path/in/repo`` or ``hf://ORG/NAME/path@REVISION``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path

from .errors import CheckpointError, ConfigError

HF_WORDS = ("hf", "hub", "pretrained")
HF_SCHEME = "hf://"
_HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")  # not '.', '..' or a trailing dot
_HUB_REV = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
ENV_OVERRIDE = "SVGFEAT_PRETRAINED_{role}"  # e.g. SVGFEAT_PRETRAINED_SVG=hf://me/my-svg/ae.ckpt or a path


@dataclass(frozen=True)
class HubFile:
    """One file in a Hugging Face model repo. ``revision`` None = the repo's main branch."""

    repo_id: str
    filename: str
    revision: str | None = None
    optional: bool = False  # a missing optional file (e.g. a YAML whose content can be inferred) is skipped
    hint: str = ""          # extra advice for the error message (e.g. another place the file is published)
    alternatives: tuple = ()  # other paths of the same file in the repo (another layout); the first found is used

    def __post_init__(self):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id or ""):
            raise ConfigError(f"HubFile: repo_id must look like 'ORG/NAME', got {self.repo_id!r}")
        for name in self.candidates:
            if not name or not isinstance(name, str) or name.startswith("/") or ".." in Path(name).parts:
                raise ConfigError(f"HubFile: filename must be a relative path inside the repo, got {name!r}")

    @property
    def candidates(self) -> tuple:
        """Paths the file may have in the repo, preferred first."""
        return (self.filename, *self.alternatives)

    @property
    def spec(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"

    @classmethod
    def parse(cls, spec: str) -> "HubFile":
        """``hf://ORG/NAME/path/in/repo[@revision]`` -> HubFile."""
        body = spec[len(HF_SCHEME):] if spec.startswith(HF_SCHEME) else spec
        rev = None
        if "@" in body:
            body, rev = body.rsplit("@", 1)
        parts = body.split("/", 2)
        if len(parts) < 3 or not all(parts):
            raise ConfigError(f"Hub file spec {spec!r}: expected hf://ORG/NAME/path/in/repo[@revision]")
        # names as the Hub spells them; a path inside the repo, never out of it (no '..', '.', '\\' or '//')
        if not all(_HUB_NAME.fullmatch(p) for p in parts[:2]) or any(
                seg in ("", ".", "..") for seg in parts[2].split("/")) or "\\" in parts[2] or (
                rev is not None and not _HUB_REV.fullmatch(rev)):
            raise ConfigError(f"Hub file spec {spec!r}: expected hf://ORG/NAME/path/in/repo[@revision] with ORG and "
                              "NAME made of letters, digits, '-', '_', '.' and a path without '.' or '..' parts")
        return cls(f"{parts[0]}/{parts[1]}", parts[2], rev or None)


# ---------------------------------------------------------------------------------------------- registry
_PRETRAINED: dict[str, dict[str, HubFile]] = {}


def register_pretrained(model: str, **files: HubFile) -> None:
    """Register (or replace) the Hub files of ``model`` by role, e.g.
    ``register_pretrained("svg_vits16plus", svg=HubFile("howlin/SVG", "pretrained/autoencoder/x.ckpt"))``.
    Roles already registered for ``model`` and not named here are kept."""
    for role, f in files.items():
        if not isinstance(f, HubFile):
            raise ConfigError(f"register_pretrained({model!r}): {role} must be a HubFile, got {type(f).__name__}")
    _PRETRAINED.setdefault(model, {}).update(files)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Registered model names that have pretrained files."""
    import fnmatch

    return sorted(n for n in _PRETRAINED if fnmatch.fnmatch(n, pattern))


def pretrained_cfg(model: str, overlay: dict | None = None) -> dict[str, HubFile | str]:
    """The files of ``model`` (role -> HubFile), updated by ``overlay`` (role -> HubFile, ``hf://`` spec or
    local path) and by ``SVGFEAT_PRETRAINED_<ROLE>`` environment variables (overlay wins)."""
    if model not in _PRETRAINED and not overlay:
        raise ConfigError(f"model {model!r} has no pretrained weights registered; models with weights: "
                          f"{', '.join(list_pretrained()) or 'none'}")
    cfg: dict = dict(_PRETRAINED.get(model, {}))
    for role in list(cfg):
        env = os.environ.get(ENV_OVERRIDE.format(role=role.upper()))
        if env:
            cfg[role] = env
    for role, v in (overlay or {}).items():
        if v is not None:
            cfg[role] = v
    return cfg


# One place per model: repo id + file name of every released file (timm's default_cfgs). Override per call with
# ``pretrained_cfg_overlay={"svg": "hf://ORG/NAME/file.ckpt" | HubFile | local path}``, per process with
# ``SVGFEAT_PRETRAINED_<ROLE>`` (e.g. SVGFEAT_PRETRAINED_SVG), or on the CLI by passing --svg/--dinov3/... next to
# --pretrained. Other modules add theirs with :func:`register_pretrained`.
SVG_REPO = "howlin/SVG"
T2I_REPO = "KlingTeam/SVG-T2I"
T2I_STAGE_PX = {1: 256, 2: 512, 3: 1024}


def svg_repo_file(path: str, **kw) -> HubFile:
    """A file of ``howlin/SVG``. Its layout could not be verified: the official README downloads the repo into
    ``pretrained/`` (files at ``pretrained/...``), one user's paths show ``checkpoints/...`` at the repo root.
    Both are candidates; the one that exists is used."""
    other = path[len("pretrained/"):] if path.startswith("pretrained/") else f"pretrained/{path}"
    return HubFile(SVG_REPO, path, alternatives=(other,), **kw)


def _register_defaults() -> None:
    dino = HubFile("timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m", "model.safetensors",
                   hint="or Meta's gated dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth via "
                        "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/")
    svg_ae = "pretrained/autoencoder/svg_autoencoder_dinov3s16p_vit-s_epoch40"
    register_pretrained("dinov3_vits16plus", dinov3=dino)
    register_pretrained("svg_vits16plus", dinov3=dino, svg=svg_repo_file(svg_ae + ".ckpt"),
                        svg_config=svg_repo_file(svg_ae + ".yaml", optional=True))  # inferred if absent
    register_pretrained("svg_dit_xl",
                        dit=svg_repo_file("pretrained/checkpoints/V1-SVG-XL-7000K-256x256.pt"),
                        dit_config=svg_repo_file("pretrained/svg_xl_pretrained_config.yaml", optional=True),
                        stats=svg_repo_file("dinov3_sp_stats.pt",
                                            hint="it is also in the root of https://github.com/shiml20/SVG"))
    # SVG-T2I autoencoders (pre-trained/autoencoder/ of KlingTeam/SVG-T2I). The P YAMLs are optional (the
    # architecture is read from the weights anyway); the R YAMLs are not registered: the released ones are copies
    # of the P configs (extra_vit_config: null).
    t2i_dino = dc_replace(dino, hint="or Meta's dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth (also in "
                                     "KlingTeam/SVG-T2I pre-trained/)")
    root = "pre-trained/autoencoder"
    for fam in ("R", "P"):
        for st, px in T2I_STAGE_PX.items():
            files = {"dinov3": t2i_dino, "svg": HubFile(T2I_REPO, f"{root}/svg_autoencoder-{fam}-stage{st}.ckpt")}
            if fam == "P":
                files["svg_config"] = HubFile(T2I_REPO, f"{root}/svg_autoencoder_P_stage{st}_{px}.yaml", optional=True)
            register_pretrained(f"svg_t2i_{fam.lower()}_vits16plus_stage{st}", **files)


_register_defaults()


def is_hub_spec(spec) -> bool:
    return isinstance(spec, HubFile) or (isinstance(spec, str) and (spec.lower() in HF_WORDS
                                                                   or spec.startswith(HF_SCHEME)))


# ---------------------------------------------------------------------------------------------- location
_LISTINGS: dict[tuple, frozenset | None] = {}
UNREACHABLE = None  # _repo_files(): the Hub could not be reached
UNKNOWN = frozenset({"\0"})  # _repo_files(): the Hub answered with an error (gated, missing repo): ask per file


def _repo_files(repo: str, revision: str | None):
    """The files of ``repo`` at ``revision``: ONE listing request per repo and revision per process, without
    retries (huggingface_hub's own calls retry a dead network for ~30 s). UNREACHABLE when the Hub cannot be
    reached, UNKNOWN when it answers with an error (then hf_hub_download's own error message is the one shown)."""
    key = (repo, revision or "main")
    if key not in _LISTINGS:
        from urllib.parse import quote

        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session

        url = f"{constants.ENDPOINT}/api/models/{repo}/tree/{quote(revision or 'main', safe='')}?recursive=true"
        files: set[str] = set()
        try:
            while url:
                r = get_session().get(url, headers=build_hf_headers(), timeout=constants.HF_HUB_ETAG_TIMEOUT)
                if r.status_code in (401, 403, 404):  # gated / private / no such repo or revision
                    files = UNKNOWN
                    break
                if r.status_code != 200:  # 5xx, 429: as good as unreachable (no retry storm)
                    files = UNREACHABLE
                    break
                files |= {e["path"] for e in r.json() if isinstance(e, dict) and e.get("type") == "file"}
                m = re.search(r'<([^>]+)>;\s*rel="next"', r.headers.get("link", ""))
                url = m.group(1) if m else None
        except Exception:  # noqa: BLE001 - DNS, refused, timeout, TLS, bad JSON: any failure = no listing
            files = UNREACHABLE
        _LISTINGS[key] = files if files is UNREACHABLE or files is UNKNOWN else frozenset(files)
    return _LISTINGS[key]


def _cached(f: HubFile) -> str | None:
    """The first candidate of ``f`` present in the local Hugging Face cache (a lookup, no network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in f.candidates:
        if isinstance(try_to_load_from_cache(f.repo_id, name, revision=f.revision), str):
            return name
    return None


def locate(f: HubFile) -> tuple[str | None, str]:
    """(the path of ``f`` in its repo that exists, how it was found) -- or (None, why it is missing).

    Offline or with the Hub unreachable, the local cache is looked up; online, the repo's listing (one request
    per repo) decides which of the candidate paths (layouts) exists."""
    if not _offline():
        listing = _repo_files(f.repo_id, f.revision)
        if listing is UNKNOWN:
            return f.filename, "ask"
        if listing is not UNREACHABLE:
            found = next((n for n in f.candidates if n in listing), None) or _cached(f)  # (a copy put there by hand)
            return (found, "listed") if found else (None, f"the repo has no such file at revision "
                                                          f"{f.revision or 'main'}")
    found = _cached(f)
    if found:
        return found, "cached"
    why = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache" if _offline() else \
        "it is not in the Hugging Face cache and the Hub could not be reached"
    return None, f"{why} ({_cache_dir()})"


def _describe(f: HubFile, role: str | None) -> str:
    alt = "".join(f" or {a}" for a in f.alternatives)
    opt = f" (--{role.replace('_', '-')} PATH, or {role}= in Python)" if role else ""
    return f"{f.filename}{alt} from Hugging Face repo {f.repo_id}{'@' + f.revision if f.revision else ''}{opt}: " \
           f"download it from {f.url}" + (f" ({f.hint})" if f.hint else "")


def check_available(files: dict) -> dict:
    """role -> HubFile: which of them exist, found all at once (cache lookups offline, one listing per repo online).

    Returns role -> HubFile with the path that exists (or None for a missing optional file). Every missing
    required file is named in ONE :class:`CheckpointError`."""
    out, missing, whys = {}, [], []
    for role, f in files.items():
        name, how = locate(f)
        if name is None:
            if not f.optional:
                missing.append(_describe(f, role))
                whys.append(how)
            out[role] = None
        else:
            out[role] = dc_replace(f, filename=name, alternatives=())
    if missing:
        why = whys[0] if len(set(whys)) == 1 else "; ".join(dict.fromkeys(whys))
        raise CheckpointError(f"{len(missing)} pretrained file(s) missing ({why}): " + "; ".join(missing)
                              + ". Pass local paths instead, or copy the files into the Hugging Face cache")
    return out


# ---------------------------------------------------------------------------------------------- download
def _snapshot_revision(path: str) -> str | None:
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def download(f: HubFile, role: str | None = None) -> tuple[Path, dict] | None:
    """Fetch ``f`` (the first of its candidate paths that exists) through the Hugging Face cache; returns
    (local path, provenance), or None for a missing optional file. Raises one :class:`CheckpointError` naming
    the repo, the file and how to get it by hand."""
    located = check_available({role or "file": f})[role or "file"]
    if located is None:
        return None
    f = located
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency (through timm)
        raise CheckpointError(f"downloading {f.spec} needs huggingface_hub: pip install huggingface_hub") from None
    where = f" (--{role.replace('_', '-')} PATH, or {role}= in Python)" if role else ""
    manual = (f"download it by hand from {f.url} and pass its local path instead{where}, or copy the file into the "
              "Hugging Face cache" + (f" ({f.hint})" if f.hint else ""))
    listing = None if _offline() else _repo_files(f.repo_id, f.revision)
    # the cached copy when offline, when the Hub is unreachable (no retry storm) or when the repo does not list it
    local_only = _offline() or listing is UNREACHABLE or (listing is not UNKNOWN and f.filename not in listing)
    try:
        local = hf_hub_download(f.repo_id, f.filename, revision=f.revision, local_files_only=local_only)
    except LocalEntryNotFoundError:
        if f.optional:
            return None
        raise CheckpointError(f"pretrained file {f.filename} from Hugging Face repo {f.repo_id}"
                              f"{'@' + f.revision if f.revision else ''}: it is not in the Hugging Face cache "
                              f"({_cache_dir()}) and could not be downloaded; {manual}") from None
    except (EntryNotFoundError, RevisionNotFoundError) as e:
        if f.optional:
            return None
        raise CheckpointError(f"Hugging Face repo {f.repo_id} has no file {f.filename} at revision "
                              f"{f.revision or 'main'} ({type(e).__name__}); pass a local path instead") from None
    except GatedRepoError:
        raise CheckpointError(f"Hugging Face repo {f.repo_id} is gated: accept its licence on "
                              f"https://huggingface.co/{f.repo_id} and log in (`hf auth login`), or {manual}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hugging Face repo {f.repo_id} does not exist or is private; {manual}") from None
    except OSError as e:  # network errors surface as OSError subclasses
        raise CheckpointError(f"could not download {f.filename} from Hugging Face repo {f.repo_id} "
                              f"({type(e).__name__}); {manual}") from None
    from .checkpoints import sha256_file

    p = Path(local)
    return p, {"path": str(p), "repo": f.repo_id, "filename": f.filename,
               "revision": _snapshot_revision(local) or f.revision, "sha256": sha256_file(p)}


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def _as_hub_file(spec, model, role, overlay):
    """A weight spec -> HubFile, or the spec itself when it is a local path (or None)."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.lower() in HF_WORDS:
        if model is None or role is None:
            raise ConfigError(f"weight spec {spec!r} needs a model to know which file to fetch; "
                              "use hf://ORG/NAME/path/in/repo instead")
        cfg = pretrained_cfg(model, overlay)
        if role not in cfg:
            raise ConfigError(f"model {model!r} has no pretrained {role} file registered "
                              f"(it has: {', '.join(sorted(cfg)) or 'none'})")
        spec = cfg[role]
    if isinstance(spec, str) and spec.startswith(HF_SCHEME):
        spec = HubFile.parse(spec)
    return spec


def hub_files(specs: dict, model: str | None = None, overlay: dict | None = None) -> dict:
    """role -> weight spec  =>  role -> HubFile, for the specs that name Hub files (local paths left out)."""
    out = {role: _as_hub_file(v, model, role, overlay) for role, v in specs.items()}
    return {role: f for role, f in out.items() if isinstance(f, HubFile)}


def resolve_all(specs: dict, model: str | None = None, overlay: dict | None = None) -> dict:
    """role -> weight spec  =>  role -> (local path, provenance or None). Every Hub file is located first, so
    that all missing files are named in one error before anything is downloaded."""
    files = {role: _as_hub_file(v, model, role, overlay) for role, v in specs.items()}
    check_available({role: f for role, f in files.items() if isinstance(f, HubFile)})
    return {role: resolve(f, model, role) for role, f in files.items()}


def resolve(spec, model: str | None = None, role: str | None = None, overlay: dict | None = None):
    """A weight spec -> (local path, provenance or None). ``spec``: None (-> (None, None)), a local path,
    ``"hf"`` (the file registered for ``model``/``role``), ``"hf://ORG/NAME/path[@rev]"`` or a HubFile.
    Local paths are returned unchanged (their provenance is recorded by the loader)."""
    spec = _as_hub_file(spec, model, role, overlay)
    if isinstance(spec, HubFile):
        got = download(spec, role)
        return (None, None) if got is None else (str(got[0]), got[1])
    return spec, None


def fetch_pretrained(model: str, role: str, overlay: dict | None = None):
    """Local path of ``model``'s registered ``role`` file (downloaded or from the cache), e.g.
    ``fetch_pretrained("svg_dit_xl", "stats")``; None for a missing optional file."""
    return resolve("hf", model, role, overlay)[0]
