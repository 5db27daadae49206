"""Channel map: MetaXpress wavelength index (``w<n>``) -> biological channel name."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Channels used downstream, in the order the thesis stacks them (actin, borders, nuclei).
MODEL_CHANNELS: tuple[str, ...] = ("actin", "borders", "nuclei")
#: Channels processed by the image pipeline (illumination, preprocessing, masks).
IMAGE_CHANNELS: tuple[str, ...] = ("nuclei", "borders", "actin")
IGNORED_CHANNELS: tuple[str, ...] = ("mitochondria",)


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    wavelength: int
    stain: str
    htd_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelMap:
    """Maps the 1-based MetaXpress wavelength index to a :class:`ChannelSpec`."""

    channels: tuple[ChannelSpec, ...] = field(
        default_factory=lambda: (
            ChannelSpec("nuclei", 1, "DAPI", ("DAPI", "HOECHST", "W1")),
            ChannelSpec("borders", 2, "FITC VE-cadherin", ("FITC", "GFP", "ALEXA 488", "W2")),
            ChannelSpec("actin", 3, "TRITC phalloidin", ("TRITC", "CY3", "TEXAS RED", "W3")),
            ChannelSpec("mitochondria", 4, "CY5 MitoTracker", ("CY5", "W4")),
        )
    )

    def by_wavelength(self) -> dict[int, ChannelSpec]:
        return {c.wavelength: c for c in self.channels}

    def by_name(self) -> dict[str, ChannelSpec]:
        return {c.name: c for c in self.channels}

    def name_of(self, wavelength: int) -> str | None:
        spec = self.by_wavelength().get(wavelength)
        return spec.name if spec else None

    @classmethod
    def from_string(cls, text: str) -> "ChannelMap":
        """Parse ``"1=nuclei,2=borders,3=actin,4=mitochondria"`` (env var ``SSC_CHANNEL_MAP``)."""
        default = {c.name: c for c in cls().channels}
        specs = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            w, _, name = part.partition("=")
            name = name.strip()
            base = default.get(name)
            specs.append(
                ChannelSpec(name, int(w.strip().lstrip("wW")), base.stain if base else name,
                            base.htd_names if base else ())
            )
        return cls(tuple(specs))

    def to_string(self) -> str:
        """``"1=nuclei,2=borders,..."``, the inverse of :meth:`from_string`."""
        return ",".join(f"{c.wavelength}={c.name}" for c in self.channels)

    def check_against_htd(self, wave_names: dict[int, str]) -> list[str]:
        """Return human-readable mismatches between this map and HTD ``WaveName<n>`` entries."""
        problems = []
        for w, htd_name in sorted(wave_names.items()):
            spec = self.by_wavelength().get(w)
            if spec is None:
                problems.append(f"HTD wavelength w{w} ({htd_name!r}) is not in the channel map")
                continue
            upper = htd_name.upper()
            if spec.htd_names and not any(tok in upper for tok in spec.htd_names):
                problems.append(
                    f"HTD WaveName{w}={htd_name!r} does not look like channel {spec.name!r} "
                    f"({spec.stain}); expected one of {list(spec.htd_names)}"
                )
        return problems
