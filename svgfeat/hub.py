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

    def __post_init__(self):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id or ""):
            raise ConfigError(f"HubFile: repo_id must look like 'ORG/NAME', got {self.repo_id!r}")
        if not self.filename or self.filename.startswith("/") or ".." in Path(self.filename).parts:
            raise ConfigError(f"HubFile: filename must be a relative path inside the repo, got {self.filename!r}")

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

    _ensure_loaded()
    return sorted(n for n in _PRETRAINED if fnmatch.fnmatch(n, pattern))


def _ensure_loaded() -> None:
    from .models import registry  # the default configs live next to the model registry

    registry._ensure_loaded()


def pretrained_cfg(model: str, overlay: dict | None = None) -> dict[str, HubFile | str]:
    """The files of ``model`` (role -> HubFile), updated by ``overlay`` (role -> HubFile, ``hf://`` spec or
    local path) and by ``SVGFEAT_PRETRAINED_<ROLE>`` environment variables (overlay wins)."""
    _ensure_loaded()
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


def is_hub_spec(spec) -> bool:
    return isinstance(spec, HubFile) or (isinstance(spec, str) and (spec.lower() in HF_WORDS
                                                                   or spec.startswith(HF_SCHEME)))


# ---------------------------------------------------------------------------------------------- download
def _snapshot_revision(path: str) -> str | None:
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def download(f: HubFile, role: str | None = None) -> tuple[Path, dict] | None:
    """Fetch ``f`` through the Hugging Face cache; returns (local path, provenance), or None for a missing
    optional file. Raises one :class:`CheckpointError` naming the repo, the file and how to get it by hand."""
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
    try:
        local = hf_hub_download(f.repo_id, f.filename, revision=f.revision)
    except LocalEntryNotFoundError:
        if f.optional:
            return None
        offline = _offline()
        why = "HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache" if offline else \
            "it is not in the Hugging Face cache and the Hub could not be reached"
        raise CheckpointError(f"pretrained file {f.filename} from Hugging Face repo {f.repo_id}"
                              f"{'@' + f.revision if f.revision else ''}: {why} ({_cache_dir()}); {manual}") from None
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


def resolve(spec, model: str | None = None, role: str | None = None, overlay: dict | None = None):
    """A weight spec -> (local path, provenance or None). ``spec``: None (-> (None, None)), a local path,
    ``"hf"`` (the file registered for ``model``/``role``), ``"hf://ORG/NAME/path[@rev]"`` or a HubFile.
    Local paths are returned unchanged (their provenance is recorded by the loader)."""
    if spec is None:
        return None, None
    if isinstance(spec, str) and spec.lower() in HF_WORDS:
        if model is None or role is None:
            raise ConfigError(f"weight spec {spec!r} needs a model to know which file to fetch; "
                              "use hf://ORG/NAME/path/in/repo instead")
        cfg = pretrained_cfg(model, overlay)
        if role not in cfg:
            raise ConfigError(f"model {model!r} has no pretrained {role} file registered "
                              f"(it has: {', '.join(sorted(cfg)) or 'none'})")
        spec = cfg[role]
        if not is_hub_spec(spec):  # overridden by a local path
            return spec, None
    if isinstance(spec, str) and spec.startswith(HF_SCHEME):
        spec = HubFile.parse(spec)
    if isinstance(spec, HubFile):
        got = download(spec, role)
        return (None, None) if got is None else (str(got[0]), got[1])
    return spec, None


def fetch_pretrained(model: str, role: str, overlay: dict | None = None):
    """Local path of ``model``'s registered ``role`` file (downloaded or from the cache), e.g.
    ``fetch_pretrained("svg_dit_xl", "stats")``; None for a missing optional file."""
    return resolve("hf", model, role, overlay)[0]
