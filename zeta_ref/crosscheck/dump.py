"""Dumps: one implementation's inputs, config and stage results, in a file any language can write.

A dump is a ``.npz`` archive (or a folder of ``.npy`` files, one per name) holding

- ``q``, ``k``, ``v``: the inputs, float32 or float64, shapes (..., N, d_k), (..., N, d_k),
  (..., N, d_v); the leading dims (batch, head) are optional;
- ``config``: a JSON string of :class:`~zeta_ref.ZetaConfig` fields (absent fields take their
  defaults): ``np.savez(path, config=json.dumps({"k": 16}), ...)``; in a folder, ``config.npy``
  or ``config.json``;
- any subset of the stage results named in :data:`~zeta_ref.crosscheck.schema.FIELDS` (the
  fields of :class:`~zeta_ref.Intermediates`, and the gradients ``dq``, ``dk``, ``dv``,
  ``dgamma`` of the backward pass), with the documented shapes; integer results in any
  integer dtype where the values fit;
- with any gradient, ``grad_output``: the gradient of the output they come from (the loss
  L = sum(grad_output * output)), (..., N, d_v), q's dtype;
- optionally ``format_version`` (this zeta_ref writes and reads version
  :data:`~zeta_ref.crosscheck.schema.FORMAT_VERSION`) and ``zeta_ref_version``.

:func:`load_dump` checks everything a comparison relies on and raises :class:`DumpError`, with
one line naming the array and what is wrong, for a dump it cannot read.
"""

from __future__ import annotations

import difflib
import json
import os
import zipfile
from dataclasses import dataclass, field, fields

import numpy as np

from .._version import __version__
from .._checks import as_host_array, check_bits_for_dim, check_gamma, check_qkv
from ..config import ZetaConfig
from .schema import FIELD_BY_NAME, FIELDS, FORMAT_VERSION, KNOWN_NAMES

CONFIG_FIELDS = tuple(f.name for f in fields(ZetaConfig))
FLOAT_KINDS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class DumpError(ValueError):
    """A dump that cannot be read or does not fit its own config; the message is one line."""


@dataclass(frozen=True)
class Dump:
    """A dump, read and checked: the inputs, the config and the results it holds.

    ``results`` maps field names to NumPy arrays: integers as int64 (indices, -1 empty) or
    uint64 (coordinates, codes), floats as given; leading dims as in ``q``.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    config: ZetaConfig
    results: dict = field(default_factory=dict)
    source: str = "arrays"  # the path it came from, for the report
    grad_output: np.ndarray | None = None  # dL/doutput, where the dump holds gradients

    @property
    def n(self) -> int:
        return self.q.shape[-2]

    @property
    def lead(self) -> tuple:
        return self.q.shape[:-2]


# ------------------------------------------------------------------ writing


def save_dump(path, q, k, v, config=None, **results) -> str:
    """Write a dump to ``path`` (a ``.npz`` file; the suffix is added when missing).

    Parameters
    ----------
    path : str or os.PathLike
    q, k, v : arrays from any framework (NumPy, torch, JAX, CuPy, ...)
        The inputs; GPU arrays are copied to the host.
    config : ZetaConfig, dict of its fields, or None (the defaults)
    **results : arrays
        Any of the stage results, by the names of :data:`~zeta_ref.crosscheck.schema.FIELDS`
        (``q_codes=..., candidates=..., output=...``), from any framework; with gradients
        (``dq=..., dk=..., dv=..., dgamma=...``), ``grad_output=``, the output's gradient.

    Returns
    -------
    The path written.

    The dump is checked as :func:`load_dump` checks it before anything is written, so a dump
    that this writes is one that ``zeta-ref compare`` reads.
    """
    arrays = {"q": q, "k": k, "v": v, **results}
    host = {name: as_host_array(a, name) for name, a in arrays.items()}
    cfg = dump_from_arrays(host, config=config).config  # refuse what could not be read back
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    write_archive(path, cfg, host)
    return path


def write_archive(path: str, cfg: ZetaConfig, arrays: dict, *, compressed: bool = False) -> None:
    """Write checked host ``arrays`` and ``cfg`` to the ``.npz`` file ``path``, with the format
    version and the zeta_ref version: the one writer of the format (save_dump, golden files)."""
    write = np.savez_compressed if compressed else np.savez
    write(path, config=json.dumps(config_fields(cfg)), format_version=FORMAT_VERSION,
          zeta_ref_version=__version__, **arrays)


def config_fields(cfg: ZetaConfig) -> dict:
    """The JSON-ready fields of ``cfg`` (every field, so a dump is explicit)."""
    out = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
    out["clip_range"] = list(out["clip_range"])
    return out


# ------------------------------------------------------------------ reading


def load_dump(path) -> Dump:
    """Read and check the dump at ``path`` (a ``.npz`` file or a folder of ``.npy`` files).

    Raises
    ------
    DumpError
        One line saying what is wrong: not an archive, a truncated or corrupt file, a missing
        input, an unknown name (with the closest known one), a wrong shape or dtype, an
        unknown config field, a value out of range, another format version.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raw = _read_folder(path)
    elif os.path.exists(path):
        raw = _read_archive(path)
    else:
        raise DumpError(f"{path}: no such file or folder")
    try:
        return dump_from_arrays(raw, source=path)
    except DumpError as err:
        raise DumpError(f"{path}: {err}") from None


def _read_archive(path: str) -> dict:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise DumpError(f"{path}: a single .npy array; a dump is a .npz archive (np.savez) or "
                        f"a folder of .npy files, one per name")
    if not zipfile.is_zipfile(path):
        if magic[:4] == b"PK\x03\x04":  # a zip's first entry, but no directory at the end
            raise DumpError(f"{path}: the archive is truncated (its zip directory is missing)")
        raise DumpError(f"{path}: not a .npz archive (np.savez writes one) nor a folder of "
                        f".npy files")
    out = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                out[name] = archive[name]
    except Exception as err:  # zlib, zipfile, format errors...: whatever the bytes provoke
        raise DumpError(f"{path}: the archive is truncated or corrupt "
                        f"({type(err).__name__}: {_one_line(err)})") from None
    return out


def _read_folder(path: str) -> dict:
    out = {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        name, ext = os.path.splitext(entry)
        if ext == ".json" and name == "config":
            with open(full, encoding="utf-8") as f:
                out["config"] = f.read()
        elif ext == ".npy":
            try:
                out[name] = np.load(full, allow_pickle=False)
            except Exception as err:  # whatever a damaged file provokes
                raise DumpError(f"{full}: truncated or not a .npy file ({_one_line(err)})") \
                    from None
    if not out:
        raise DumpError(f"{path}: the folder holds no .npy files")
    return out


def dump_from_arrays(raw: dict, source: str = "arrays", config=None) -> Dump:
    """Check a mapping of names to arrays (and a config) as a dump; see :func:`load_dump`.
    ``config`` (a ZetaConfig or a dict of its fields), when given, stands for ``raw``'s."""
    unknown = [name for name in raw if name not in KNOWN_NAMES]
    if unknown:
        name = unknown[0]
        near = difflib.get_close_matches(name, KNOWN_NAMES, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else \
            f"; known names: q, k, v, grad_output, config, {', '.join(FIELD_BY_NAME)}"
        raise DumpError(f"unknown array {name!r}{hint}")
    if "format_version" in raw:
        version = _scalar(raw["format_version"], "format_version")
        if str(version) != str(FORMAT_VERSION):
            raise DumpError(f"format_version is {version}; this zeta_ref ({__version__}) reads "
                            f"dumps of version {FORMAT_VERSION}")
    for name in ("q", "k", "v"):
        if name not in raw:
            raise DumpError(f"missing the input {name!r}: a dump must hold q, k and v")
    if config is None and "config" in raw:
        config = _parse_config(raw["config"])
    cfg = _config_from(config)
    arrays = {name: a for name, a in raw.items()
              if name not in ("config", "format_version", "zeta_ref_version")}
    q, k, v, results = check_dump(arrays, cfg)
    return Dump(q=q, k=k, v=v, config=cfg, results=results, source=source,
                grad_output=_grad_output(arrays, q, v, results))


def _parse_config(value) -> dict:
    text = _scalar(value, "config")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise DumpError(f"config must be a JSON string of ZetaConfig fields; got {text!r}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise DumpError(f"config is not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(parsed, dict):
        raise DumpError(f"config must be a JSON object of ZetaConfig fields; got {text[:60]!r}")
    return parsed


def _config_from(config) -> ZetaConfig:
    if config is None:
        return ZetaConfig()
    if isinstance(config, ZetaConfig):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config must be a ZetaConfig, a dict of its fields or None; "
                        f"got {type(config).__name__}")
    for key in config:
        if key not in CONFIG_FIELDS:
            near = difflib.get_close_matches(str(key), CONFIG_FIELDS, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else \
                f"; known fields: {', '.join(CONFIG_FIELDS)}"
            raise DumpError(f"config has an unknown field {key!r}{hint}")
    values = dict(config)
    if isinstance(values.get("clip_range"), list):
        values["clip_range"] = tuple(values["clip_range"])
    try:
        return ZetaConfig(**values)
    except (TypeError, ValueError) as err:
        raise DumpError(f"config: {_one_line(err)}") from None


def _scalar(value, name: str):
    arr = np.asarray(value)
    if arr.ndim != 0 and arr.size != 1:
        raise DumpError(f"{name} must be a single value; got an array of shape {arr.shape}")
    return arr.reshape(()).item()


def check_dump(arrays: dict, cfg: ZetaConfig):
    """Check the inputs and results of a dump against each other and ``cfg``.

    Returns ``(q, k, v, results)``: the inputs as zeta_attention takes them, the results as
    int64 / uint64 / float arrays. Raises :class:`DumpError` naming the array at fault.
    """
    try:
        q, k, v = check_qkv(arrays["q"], arrays["k"], arrays["v"])
        check_bits_for_dim(cfg.bits, q.shape[-1], name="config.bits")
        if cfg.score == "cauchy":  # what zeta_attention refuses, the dump may not hold either
            check_gamma(cfg.gamma, q.dtype, cfg.k_for(q.shape[-2]) + cfg.history_mean)
    except (TypeError, ValueError) as err:
        raise DumpError(_one_line(err)) from None
    n, d_k, d_v, lead = q.shape[-2], q.shape[-1], v.shape[-1], q.shape[:-2]
    sizes = {"N": n, "d_k": d_k, "d_v": d_v, "W": cfg.window_for(n), "k": cfg.k_for(n)}
    results = {}
    for spec in FIELDS:
        if spec.name not in arrays:
            continue
        a = np.asarray(arrays[spec.name])
        want = _expected_shape(spec.shape, lead, sizes)
        if spec.name == "dgamma" and a.size == 1:  # a number, however it was saved
            a = a.reshape(())
            if a.dtype.kind in "iu":  # 0 for the scores without gamma, say
                a = a.astype(np.float64)
        if a.shape != want:
            raise DumpError(f"{spec.name} must have shape {want} {spec.shape} "
                            f"({_sizes_text(spec.shape, sizes)}); got {a.shape}"
                            + _shape_hint(spec.name, a.shape, want, cfg))
        results[spec.name] = _checked_values(spec, a, n, d_k, cfg)
    return q, k, v, results


def _grad_output(arrays: dict, q, v, results: dict):
    """The dump's ``grad_output``, checked: needed by any gradient, useless without one."""
    gradients = [name for name in ("dq", "dk", "dv", "dgamma") if name in results]
    if "grad_output" not in arrays:
        if gradients:
            raise DumpError(f"{gradients[0]} needs grad_output, the gradient of the output it "
                            f"comes from (L = sum(grad_output * output)), of shape {v.shape}")
        return None
    g = np.asarray(arrays["grad_output"])
    if g.shape != v.shape:
        raise DumpError(f"grad_output must have the shape of v, {v.shape} (..., N, d_v); got "
                        f"{g.shape}")
    if g.dtype != q.dtype:
        raise DumpError(f"grad_output must have q's dtype, {q.dtype}; got {g.dtype}")
    if g.size and not np.isfinite(g).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
        raise DumpError(f"grad_output contains NaN or Inf (first at index {bad})")
    return g


def _expected_shape(shape: str, lead: tuple, sizes: dict) -> tuple:
    dims = [s.strip() for s in shape.strip("()").split(",") if s.strip()]
    out = []
    for d in dims:
        if d == "...":
            out.extend(lead)
        else:
            out.append(sizes[d])
    return tuple(out)


def _sizes_text(shape: str, sizes: dict) -> str:
    used = [d for d in ("N", "d_k", "d_v", "W", "k") if d in shape.replace("(", " ")
            .replace(")", " ").replace(",", " ").split()]
    notes = {"W": "config.window_for(N)", "k": "config.k_for(N)"}
    return ", ".join(f"{d} = {notes[d] + ' = ' if d in notes else ''}{sizes[d]}" for d in used)


def _shape_hint(name: str, got: tuple, want: tuple, cfg: ZetaConfig) -> str:
    if name in ("window_idx", "candidates") and got[:-1] == want[:-1]:
        which = "window" if name == "window_idx" else "k"
        return f"; if yours holds {got[-1]} slots, set {which}={got[-1]} in the dump's config"
    return ""


def _checked_values(spec, a: np.ndarray, n: int, d_k: int, cfg: ZetaConfig) -> np.ndarray:
    name = spec.name
    if spec.kind == "float":
        if a.dtype not in FLOAT_KINDS:
            raise DumpError(f"{name} must be a float array (float16/32/64); got dtype {a.dtype}")
        return a
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise DumpError(f"{name} must be an integer array (any integer dtype where the values "
                        f"fit); got dtype {a.dtype}")
    if a.size == 0:
        return a.astype(np.uint64 if name in _CODE_LIKE else np.int64)
    lo, hi = int(a.min()), int(a.max())
    low, high, what = _value_range(name, n, d_k, cfg)
    if lo < low or hi > high:
        bad = np.argwhere((a < low) | (a > high))[0] if a.dtype.kind == "i" or low == 0 \
            else np.argwhere(a > high)[0]
        value = a[tuple(bad)]
        hint = ""
        if name in ("window_idx", "candidates") and int(value) == n:
            hint = " (if it marks an empty slot: zeta_ref marks those -1, D9)"
        raise DumpError(f"{name} must hold {what}; got {value} at {tuple(int(i) for i in bad)}"
                        f"{hint}")
    return a.astype(np.uint64 if name in _CODE_LIKE else np.int64)


_CODE_LIKE = ("q_coords", "k_coords", "q_codes", "k_codes", "sorted_key_codes")


def _value_range(name: str, n: int, d_k: int, cfg: ZetaConfig):
    b = cfg.bits
    if name in ("q_coords", "k_coords"):
        return 0, (1 << b) - 1, f"cells in [0, 2^bits - 1] = [0, {(1 << b) - 1}] (bits = {b})"
    if name in ("q_codes", "k_codes", "sorted_key_codes"):
        top = (1 << (d_k * b)) - 1
        return 0, top, (f"codes in [0, 2^(d_k * bits) - 1] = [0, {top}] "
                        f"(d_k = {d_k}, bits = {b})")
    if name == "key_perm":
        return 0, n - 1, f"key positions in [0, N - 1] = [0, {n - 1}]"
    if name in ("pool_len", "insertion"):
        return 0, n, f"values in [0, N] = [0, {n}]"
    return -1, n - 1, f"key positions in [0, N - 1] = [0, {n - 1}], or -1 for an empty slot"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
