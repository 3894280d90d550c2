"""The method's settings, validated once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from convis_db.engine.windows import DEFAULT_LAYOUT, LAYOUTS
from convis_db.errors import UsageError, flags_as_arguments

#: Ceilings for the size options, checked before anything is allocated. A working image of 16 Mpx
#: (4096 x 4096, 55 times the paper's) is already far past what the method needs; ingest also checks
#: the memory that ranking one image's windows will take against this machine's (see ingest).
MAX_PIXELS_CEILING = 4096 * 4096
MAX_SIDE = 4096
MAX_TOP_K = 100_000



def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _invalid(cli_message: str) -> None:
    """A UsageError worded with the CLI's options, and for Python callers with Settings' arguments
    (`--max-pixels 5` there reads `Settings(max_pixels=5)` here)."""
    raise UsageError(cli_message, python=f"Settings: {flags_as_arguments(cli_message)}")


@dataclass(frozen=True)
class Settings:
    """The method's settings: working-image size, window stride, the two patch sides and the
    concepts kept per window; validated when made (a bad value is a UsageError naming the option).
    The defaults are the paper's; a database keeps the settings of its first ingest.

        >>> Settings(max_pixels=50_000, stride=32).large
        128
    """

    max_pixels: int = 300_000
    stride: int = 16
    small: int = 64
    large: int = 128
    top_k: int = 100
    #: The window lattice (engine/windows.py): one per database, recorded in `window_layout`; not a
    #: user option (old databases keep 'origin', new ones use 'equal').
    layout: str = DEFAULT_LAYOUT

    def __post_init__(self) -> None:
        for name in OPTION_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"--{name.replace('_', '-')} {value!r} is not a whole number.",
                                 python=f"Settings({name}={value!r}): {name} must be an int, e.g. "
                                        f"Settings({name}={getattr(PAPER, name)}).")
        for name, value, ceiling in (("max_pixels", self.max_pixels, MAX_PIXELS_CEILING),
                                     ("stride", self.stride, MAX_SIDE), ("small", self.small, MAX_SIDE),
                                     ("large", self.large, MAX_SIDE), ("top_k", self.top_k, MAX_TOP_K)):
            if value > ceiling:
                _invalid(f"{_flag(name)} {value} is above the ceiling of {ceiling:,}; use a smaller value "
                         f"(the paper's settings: --max-pixels {PAPER.max_pixels:,}, --stride {PAPER.stride}).")
        if self.layout not in LAYOUTS:
            raise UsageError(f"window layout {self.layout!r} is not one of {', '.join(LAYOUTS)}.")
        if self.stride < 1:
            _invalid(f"--stride {self.stride} must be at least 1.")
        if not (1 <= self.small <= self.large):
            _invalid(f"--small {self.small} and --large {self.large} need 1 <= small <= large.")
        if self.stride > self.large:
            _invalid(f"--stride {self.stride} is larger than --large {self.large}: the pixels between "
                     "windows would be covered by no window. Use a stride of at most the large side.")
        if self.max_pixels < self.large * self.large:
            _invalid(f"--max-pixels {self.max_pixels} is smaller than one large patch ({self.large}x{self.large}); "
                     f"use at least {self.large * self.large}.")
        if self.top_k < 1:
            _invalid(f"--top-k {self.top_k} must be at least 1.")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict[str, int | None], base: Settings | None = None) -> Settings:
        """Settings from user options (name -> value; None: not given, `base`'s or the default kept).

        The names are the CLI's (stride, small, large, max_pixels, top_k); the layout is never an
        option (one per database), so it is `base`'s.

            >>> Settings.from_options({"stride": 32}).stride
            32
        """
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise UsageError(f"unknown settings {sorted(unknown)}; valid: {', '.join(OPTION_NAMES)}.")
        b = base or cls()
        given = {k: v for k, v in options.items() if v is not None}
        return cls(**{**asdict(b), **given})


#: The settings a user may choose (the layout is the database's).
OPTION_NAMES = ("stride", "small", "large", "max_pixels", "top_k")


#: The paper's settings (the defaults of Settings).
PAPER = Settings(max_pixels=300_000, stride=16, small=64, large=128)
#: A lighter preset for 2-core CPUs: a smaller working image and a coarser stride.
CPU_FAST = Settings(max_pixels=50_000, stride=32, small=64, large=128)
#: `--preset NAME` values.
PRESETS = {"paper": PAPER, "cpu-fast": CPU_FAST}
#: The settings a preset fixes (top-k and the layout are not part of a preset).
PRESET_FIELDS = ("max_pixels", "stride", "small", "large")


def preset_options(name: str) -> dict[str, int]:
    """The options `--preset NAME` stands for (options given alongside it override them)."""
    if name not in PRESETS:
        raise UsageError(f"--preset {name!r} is not one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    return {f: getattr(preset, f) for f in PRESET_FIELDS}
