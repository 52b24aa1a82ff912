"""SWAA schedules: which attention each layer uses in prefill and in decode.

A :class:`SWAAConfig` is the recipe; :meth:`SWAAConfig.plan` turns it into one
:class:`LayerPlan` per layer of a concrete model.  The recipes are those of
Sliding Window Attention Adaptation (SWAA): sliding-window attention (SWA) with

* ``window``      keys per query including its own position (HF ``sliding_window`` convention);
* ``sink``        the first ``sink`` positions stay visible to every query ("keep first k tokens");
* ``full_layers`` layers that keep full attention everywhere ("interleaving layers");
* ``full_decode`` generated tokens attend to the whole context ("FA decode"): ``True`` for all
  SWA layers, or the layer indices where it applies;
* ``full_tail``   the last ``full_tail`` prompt tokens attend to the whole context during prefill
  (our extension: the first answer token of a non-reasoning model also sees everything).

Layer sets (``full_layers``, and ``full_decode`` when not a bool) are either explicit indices
``(1, 3, 5)`` or the slice shorthand ``"o::k"`` = every k-th layer from offset o (``"1::2"``: the
odd layers, half of the model; ``"3::4"``: a quarter).  ``"o:e:k"`` stops before layer e.  The
shorthand is kept as written (``to_dict`` round-trips it) and resolved by ``plan(num_layers)``.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
from typing import Dict, List, Optional, Tuple, Union

__all__ = ["SWAAConfig", "LayerPlan"]

LayerSet = Union[Tuple[int, ...], str]

# published SWAA toolkit keys -> meaning
_SWAA_KEYS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers")

# presets: component name -> (description, overrides); combined by "+"
_DEFAULT_PRESET_SINK = 100
_COMPONENTS = {
    "sink": ("keep the first tokens visible (sink tokens)", {"sink": _DEFAULT_PRESET_SINK}),
    "fa_decode": ("generated tokens attend to the whole context", {"full_decode": True}),
    "half_full": ("every 2nd layer (odd layers) keeps full attention", {"full_layers": "1::2"}),
    "quarter_full": ("every 4th layer (3, 7, ...) keeps full attention", {"full_layers": "3::4"}),
}


def _preset_table() -> Dict[str, Tuple[str, dict]]:
    table = {"naive": ("naive SWA: every layer, prefill and decode, sees only the window", {})}
    for sink in (False, True):
        for fa_decode in (False, True):
            for layers in (None, "half_full", "quarter_full"):
                parts = [n for n, on in (("sink", sink), ("fa_decode", fa_decode)) if on]
                if layers:
                    parts.append(layers)
                if not parts:
                    continue
                overrides: dict = {}
                for part in parts:
                    overrides.update(_COMPONENTS[part][1])
                desc = "SWA + " + "; ".join(_COMPONENTS[p][0] for p in parts)
                table["+".join(parts)] = (desc, overrides)
    return table


_PRESETS = _preset_table()


def _check_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SWAAConfig: {field} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"SWAAConfig: {field} must be >= {minimum}, got {value}")
    return value


def _parse_slice(field: str, text: str) -> Tuple[int, Optional[int], int]:
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"SWAAConfig: {field} shorthand must look like 'offset::step' or "
                         f"'offset:end:step' (e.g. '1::2'), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        end = int(parts[1]) if parts[1].strip() else None
        step = int(parts[2]) if parts[2].strip() else 1
    except ValueError:
        raise ValueError(f"SWAAConfig: {field} shorthand must hold integers, got {text!r}") from None
    if start < 0 or step < 1 or (end is not None and end < 0):
        raise ValueError(f"SWAAConfig: {field} shorthand needs offset >= 0, end >= 0 and step >= 1, "
                         f"got {text!r}")
    if end is not None and end <= start:
        raise ValueError(f"SWAAConfig: {field} shorthand {text!r} selects no layer (end <= offset)")
    return start, end, step


def _normalise_layers(field: str, value) -> LayerSet:
    if isinstance(value, str):
        _parse_slice(field, value)
        return value.strip()
    if isinstance(value, (bool, int)) or not hasattr(value, "__iter__"):
        raise ValueError(f"SWAAConfig: {field} must be a sequence of layer indices or an "
                         f"'offset::step' string, got {value!r}")
    indices = tuple(value)
    for idx in indices:
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise ValueError(f"SWAAConfig: {field} must hold int layer indices, got {idx!r}")
    indices = tuple(int(idx) for idx in indices)  # numpy / torch integers become ints
    for idx in indices:
        if idx < 0:
            raise ValueError(f"SWAAConfig: {field} layer indices must be >= 0, got {idx}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"SWAAConfig: {field} has duplicate layer indices: {indices}")
    return indices


def _swaa_layers(value) -> tuple:
    """The toolkit's ``non_sliding_layers``: a list of indices; missing or None = none."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("SWAAConfig: non_sliding_layers must be a list of layer indices, got "
                         f"{value!r}")
    return tuple(value)


def _resolve_layers(field: str, layers: LayerSet, num_layers: int) -> frozenset:
    if isinstance(layers, str):
        start, end, step = _parse_slice(field, layers)
        if end is not None and end > num_layers:
            raise ValueError(f"SWAAConfig: {field} shorthand {layers!r} ends at layer {end}, but the "
                             f"model has {num_layers} layers")
        if start >= num_layers:
            raise ValueError(f"SWAAConfig: {field} shorthand {layers!r} starts at layer {start}, but "
                             f"the model has {num_layers} layers")
        return frozenset(range(start, num_layers if end is None else end, step))
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ValueError(f"SWAAConfig: {field} names layers {bad} but the model has {num_layers} "
                         f"layers (0 .. {num_layers - 1})")
    return frozenset(layers)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What one layer does. ``prefill``/``decode`` are "swa" or "full"; in "swa" mode the layer
    sees ``window`` keys plus ``sink`` sink positions, and during prefill the last ``full_tail``
    prompt tokens see everything."""

    layer: int
    prefill: str
    decode: str
    window: int
    sink: int
    full_tail: int

    @property
    def ring(self) -> bool:
        """True when a ring buffer of ``sink + window`` slots can hold this layer's cache: SWA in
        prefill and in decode (a full tail is computed before the keys leave the window)."""
        return self.prefill == "swa" and self.decode == "swa"


@dataclasses.dataclass(frozen=True)
class SWAAConfig:
    """An SWAA recipe; see the module docstring for the fields."""

    window: int = 2048
    sink: int = 0
    full_layers: LayerSet = ()
    full_decode: Union[bool, LayerSet] = False
    full_tail: int = 0

    def __post_init__(self):
        _check_int("window", self.window, 1)
        _check_int("sink", self.sink, 0)
        _check_int("full_tail", self.full_tail, 0)
        object.__setattr__(self, "full_layers", _normalise_layers("full_layers", self.full_layers))
        if not isinstance(self.full_decode, bool):
            object.__setattr__(self, "full_decode",
                               _normalise_layers("full_decode", self.full_decode))

    # ------------------------------------------------------------------ plan
    def plan(self, num_layers: int) -> List[LayerPlan]:
        """One :class:`LayerPlan` per layer; layer indices outside ``0 .. num_layers-1`` raise."""
        _check_int("num_layers", num_layers, 1)
        full = _resolve_layers("full_layers", self.full_layers, num_layers)
        if isinstance(self.full_decode, bool):
            decode_full = frozenset(range(num_layers)) if self.full_decode else frozenset()
        else:
            decode_full = _resolve_layers("full_decode", self.full_decode, num_layers)
        plans = []
        for layer in range(num_layers):
            if layer in full:
                plans.append(LayerPlan(layer, "full", "full", self.window, self.sink, 0))
            else:
                decode = "full" if layer in decode_full else "swa"
                plans.append(LayerPlan(layer, "swa", decode, self.window, self.sink,
                                       self.full_tail))
        return plans

    # ----------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        def layers(v):
            return v if isinstance(v, (str, bool)) else list(v)

        return {"window": self.window, "sink": self.sink, "full_layers": layers(self.full_layers),
                "full_decode": layers(self.full_decode), "full_tail": self.full_tail}

    @classmethod
    def from_dict(cls, d: dict) -> "SWAAConfig":
        if not isinstance(d, dict):
            raise ValueError(f"SWAAConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SWAAConfig.from_dict: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**d)

    @classmethod
    def from_swaa_dict(cls, d: dict) -> "SWAAConfig":
        """Read the published SWAA toolkit's keys: ``sliding_window_size`` (window),
        ``keep_first`` (sink), ``force_fa_decode`` (full_decode), ``non_sliding_layers``
        (full_layers).  Unknown keys raise (nothing is silently dropped)."""
        if not isinstance(d, dict):
            raise ValueError(f"SWAAConfig.from_swaa_dict: expected a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_SWAA_KEYS))
        if unknown:
            raise ValueError(f"SWAAConfig.from_swaa_dict: unknown keys {unknown} "
                             f"(known: {list(_SWAA_KEYS)})")
        if "sliding_window_size" not in d:
            raise ValueError("SWAAConfig.from_swaa_dict: sliding_window_size is required")
        force = d.get("force_fa_decode", False)
        if not isinstance(force, bool):
            raise ValueError(f"SWAAConfig: force_fa_decode must be a bool, got {force!r}")
        return cls(window=d["sliding_window_size"], sink=d.get("keep_first", 0),
                   full_layers=_swaa_layers(d.get("non_sliding_layers")), full_decode=force)

    def to_swaa_dict(self) -> dict:
        """The published toolkit's keys; raises when the recipe has no equivalent there."""
        if self.full_tail or not isinstance(self.full_decode, bool):
            raise ValueError("SWAAConfig.to_swaa_dict: full_tail and per-layer full_decode have no "
                             "equivalent in the SWAA toolkit format")
        if isinstance(self.full_layers, str):
            raise ValueError("SWAAConfig.to_swaa_dict: resolve the full_layers shorthand first "
                             "(the toolkit format needs explicit indices)")
        return {"sliding_window_size": self.window, "keep_first": self.sink,
                "force_fa_decode": self.full_decode, "non_sliding_layers": list(self.full_layers)}

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write ``to_dict()`` as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "SWAAConfig":
        """Read a JSON file in our format (``to_dict``) or the SWAA toolkit's (detected by its
        ``sliding_window_size`` key)."""
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"SWAAConfig.load: {path} is not valid JSON: {e}") from None
        if isinstance(d, dict) and "sliding_window_size" in d:
            return cls.from_swaa_dict(d)
        return cls.from_dict(d)

    # ---------------------------------------------------------------- presets
    @staticmethod
    def presets() -> Dict[str, str]:
        """Preset names -> descriptions.  Names combine the paper's components with "+":
        ``naive``, ``sink``, ``fa_decode``, ``half_full``, ``quarter_full``, e.g.
        ``sink+fa_decode+quarter_full``."""
        return {name: desc for name, (desc, _) in _PRESETS.items()}

    @classmethod
    def preset(cls, name: str, *, window: int = 2048, sink: Optional[int] = None,
               full_tail: int = 0) -> "SWAAConfig":
        """The preset ``name`` with the given window.  ``sink`` replaces the preset's sink count
        (default 100) and is only accepted by presets that keep sink tokens."""
        if name not in _PRESETS:
            raise ValueError(f"SWAAConfig.preset: name {name!r} is not a preset "
                             f"(presets: {', '.join(_PRESETS)})")
        overrides = dict(_PRESETS[name][1])
        if sink is not None:
            if "sink" not in overrides and sink != 0:
                raise ValueError(f"SWAAConfig.preset: sink={sink} given, but preset {name!r} keeps "
                                 "no sink tokens (use a preset with 'sink')")
            if "sink" in overrides:
                overrides["sink"] = sink
        return cls(window=window, full_tail=full_tail, **overrides)
