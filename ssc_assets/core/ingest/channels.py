"""Channel map: MetaXpress wavelength index (``w<n>``) -> biological channel name."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

#: Channels used downstream, in the order the thesis stacks them (actin, borders, nuclei).
MODEL_CHANNELS: tuple[str, ...] = ("actin", "borders", "nuclei")
#: Channels processed by the image pipeline (illumination, preprocessing, masks).
IMAGE_CHANNELS: tuple[str, ...] = ("nuclei", "borders", "actin")
#: Channel names a channel map may use, and those it must contain.
KNOWN_CHANNELS: tuple[str, ...] = ("nuclei", "borders", "actin", "mitochondria")
REQUIRED_CHANNELS: tuple[str, ...] = IMAGE_CHANNELS
DEFAULT_CHANNEL_MAP = "1=nuclei,2=borders,3=actin,4=mitochondria"


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    wavelength: int
    stain: str
    htd_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelMap:
    """Maps the 1-based MetaXpress wavelength index to a :class:`ChannelSpec`.

    ``explicit``: the user chose this map (``SSC_CHANNEL_MAP`` or a resource setting). It
    decides whether HTD wavelength names that disagree with the map stop a plate (default
    map) or are only reported (explicit map); see ``strict_channels`` in
    :func:`ssc_assets.core.ingest.site_tables.build_raw_sites`.
    """

    channels: tuple[ChannelSpec, ...] = field(
        default_factory=lambda: (
            ChannelSpec("nuclei", 1, "DAPI", ("DAPI", "HOECHST", "W1")),
            ChannelSpec("borders", 2, "FITC VE-cadherin", ("FITC", "GFP", "ALEXA 488", "W2")),
            ChannelSpec("actin", 3, "TRITC phalloidin", ("TRITC", "CY3", "TEXAS RED", "W3")),
            ChannelSpec("mitochondria", 4, "CY5 MitoTracker", ("CY5", "W4")),
        )
    )
    explicit: bool = field(default=False, compare=False)

    def by_wavelength(self) -> dict[int, ChannelSpec]:
        return {c.wavelength: c for c in self.channels}

    def by_name(self) -> dict[str, ChannelSpec]:
        return {c.name: c for c in self.channels}

    def name_of(self, wavelength: int) -> str | None:
        spec = self.by_wavelength().get(wavelength)
        return spec.name if spec else None

    @classmethod
    def from_string(cls, text: str, explicit: bool | None = None) -> "ChannelMap":
        """Parse and validate ``"1=nuclei,2=borders,3=actin,4=mitochondria"`` (``SSC_CHANNEL_MAP``).

        Wavelengths are 1-9 (``w1`` is accepted too) and unique; names are unique, known
        (:data:`KNOWN_CHANNELS`) and include :data:`REQUIRED_CHANNELS`. Raises ``ValueError``
        naming the bad part and showing the expected form. ``explicit`` records whether the
        user chose this map (HTD disagreements are then warnings, not errors); by default a map
        that differs from :data:`DEFAULT_CHANNEL_MAP` counts as explicit.
        """
        default = {c.name: c for c in cls().channels}
        hint = f"expected the form {DEFAULT_CHANNEL_MAP!r}"
        if text is None or not str(text).strip():
            raise ValueError(f"channel map is empty; {hint}")
        specs: list[ChannelSpec] = []
        seen_w: dict[int, str] = {}
        seen_n: dict[str, int] = {}
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            w_text, eq, name = part.partition("=")
            name = name.strip().lower()
            w_text = w_text.strip()
            if not eq or not name or not w_text:
                raise ValueError(f"channel map entry {part!r} in {text!r} is not <wavelength>=<channel>; {hint}")
            m = re.fullmatch(r"[wW]?(\d+)", w_text)
            if not m or not 1 <= int(m[1]) <= 9:
                raise ValueError(f"channel map entry {part!r} in {text!r}: wavelength must be 1-9; {hint}")
            w = int(m[1])
            if w in seen_w:
                raise ValueError(f"channel map {text!r}: wavelength {w} is given twice "
                                 f"({seen_w[w]!r} and {name!r}); {hint}")
            if name not in default:
                raise ValueError(f"channel map entry {part!r} in {text!r}: unknown channel {name!r} "
                                 f"(known: {', '.join(KNOWN_CHANNELS)}); {hint}")
            if name in seen_n:
                raise ValueError(f"channel map {text!r}: channel {name!r} is given twice "
                                 f"(w{seen_n[name]} and w{w}); {hint}")
            seen_w[w], seen_n[name] = name, w
            base = default[name]
            specs.append(ChannelSpec(name, w, base.stain, base.htd_names))
        absent = [c for c in REQUIRED_CHANNELS if c not in seen_n]
        if absent:
            raise ValueError(f"channel map {text!r} lacks required channel(s) {absent} "
                             f"(required: {', '.join(REQUIRED_CHANNELS)}); {hint}")
        out = cls(tuple(specs))
        if explicit is None:
            explicit = not out.same_as(cls())
        return dataclasses.replace(out, explicit=explicit)

    def same_as(self, other: "ChannelMap") -> bool:
        """Same wavelength -> channel assignments (order and ``explicit`` ignored)."""
        return sorted((c.wavelength, c.name) for c in self.channels) == sorted((c.wavelength, c.name) for c in other.channels)

    def to_string(self) -> str:
        """``"1=nuclei,2=borders,..."``, the inverse of :meth:`from_string`."""
        return ",".join(f"{c.wavelength}={c.name}" for c in self.channels)

    def check_against_htd(self, wave_names: dict[int, str]) -> list[str]:
        """Return human-readable mismatches between this map and HTD ``WaveName<n>`` entries:
        HTD wavelengths the map lacks and names that do not look like their channel."""
        problems = []
        for w, htd_name in sorted(wave_names.items()):
            if w not in self.by_wavelength():
                problems.append(f"HTD wavelength w{w} ({htd_name!r}) is not in the channel map")
            else:
                problems += self.htd_name_mismatches({w: htd_name})
        return problems

    def htd_name_mismatches(self, wave_names: dict[int, str]) -> list[str]:
        """HTD ``WaveName<n>`` entries whose name does not look like the channel mapped to w<n>
        (e.g. ``WaveName1='FITC'`` on ``1=nuclei``)."""
        problems = []
        for w, htd_name in sorted(wave_names.items()):
            spec = self.by_wavelength().get(w)
            if spec is None:
                continue
            upper = htd_name.upper()
            if spec.htd_names and not any(tok in upper for tok in spec.htd_names):
                problems.append(
                    f"HTD WaveName{w}={htd_name!r} does not look like channel {spec.name!r} "
                    f"({spec.stain}); expected one of {list(spec.htd_names)}"
                )
        return problems
