"""A cell of the grid: the coordinates of one dictionary, as a frozen dataclass.

The grid (:func:`backdoor_sae.dictionaries.stage.sae_grid`) is a list of cells; every step after
the dictionaries addresses a dictionary by its cell (its folder: :meth:`RunLayout.dictionary
<backdoor_sae.common.layout.RunLayout.dictionary>`), and tables carry its coordinates as columns
(:data:`DICTIONARY_KEYS`), from which :meth:`Cell.of` reads a cell back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Cell:
    """One dictionary of the grid."""

    recipe: str
    """``pooled`` (one vector per sample, the paper's) or ``token`` (every token, the field's)."""
    seed: int
    """The dictionary's initialisation and batch order."""
    regime: str
    """The fine-tune it compares with the base model: ``lora``, ``full`` or a clean control (``<regime>_clean``)."""
    protocol: str
    """What its activations pool over: ``full_text`` or ``prompt_only``."""
    fit_mode: str
    """Fitted on the scored samples (``eval``, the paper's) or on the disjoint fit split (``fit``)."""
    layer: int
    """The decoder layer whose output it reads."""
    architecture: str
    """``diff_sae`` or ``crosscoder``."""

    @classmethod
    def of(cls, row: Mapping) -> Cell:
        """The cell whose coordinates ``row`` (a dict, a table's row) holds among other columns."""
        return cls(**{name: row[name] for name in DICTIONARY_KEYS}).normalised()

    def normalised(self) -> Cell:
        """Plain ints for the seed and layer (a table gives numpy integers)."""
        return replace(self, seed=int(self.seed), layer=int(self.layer))

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> Cell:
        """This cell with some coordinates changed (another architecture, recipe or seed)."""
        return replace(self, **changes)

    @property
    def coordinates(self) -> tuple:
        """Its coordinates in :data:`DICTIONARY_KEYS` order."""
        return tuple(getattr(self, name) for name in DICTIONARY_KEYS)

    @property
    def cell_coordinates(self) -> tuple:
        """Its coordinates without the recipe and seed (:data:`CELL_KEYS` order)."""
        return tuple(getattr(self, name) for name in CELL_KEYS)


#: The coordinates of one dictionary, in order: its recipe and seed, then its cell's.
DICTIONARY_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Cell))
#: The coordinates of a cell of the primary grid (the first recipe, the first seed).
CELL_KEYS: tuple[str, ...] = DICTIONARY_KEYS[2:]
