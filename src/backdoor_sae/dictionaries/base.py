"""What every sparse dictionary is: the interface the trainer, the later steps and the files rely on.

A dictionary reads an input ``x`` built from a pair of activations (:meth:`Dictionary.inputs`),
encodes it to a sparse code ``f`` over ``n_latents`` latents and decodes ``f`` back:

    pre = encoder_input(x) W_enc + b_enc,    f = σ(pre),    x_hat = f W_dec + b_dec

``W_dec`` is [m, *row]: one decoder row per latent, of the shape of one input (``[d]`` for the
Diff-SAE, ``[2, d]`` for the crosscoder); ``W_enc`` is its flattened transpose at the start. σ is
one of :mod:`backdoor_sae.dictionaries.sparsity`. An architecture (one file each) says what it
reads, what the encoder multiplies, its sparsity penalty and whether its decoder rows keep unit
norm; the rest lives here once, so that the two architectures cannot drift apart.

On disk a dictionary is a folder of three files, read by the later steps: ``weights.safetensors``
(the state dict plus ``input_scale``), ``log.jsonl`` (the training log, one record a line) and
``dictionary.json`` (``spec``, ``metrics``, ``params``). :meth:`Dictionary.load` rebuilds the right
architecture from the spec.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from backdoor_sae.common.io import atomic_path, write_json
from backdoor_sae.dictionaries.sparsity import SparseActivation

#: The file names of a saved dictionary (other steps read them).
WEIGHTS_FILE, LOG_FILE, INFO_FILE = "weights.safetensors", "log.jsonl", "dictionary.json"

#: How many training inputs (at most) set a BatchTopK threshold after training.
CALIBRATION_INPUTS = 16_384


@dataclass(frozen=True)
class DictionarySpec:
    """Everything needed to rebuild a trained dictionary."""

    architecture: str  # "diff_sae" | "crosscoder"
    d: int
    n_latents: int
    activation: str = "relu"  # "relu" | "batchtopk" (both); "topk" (crosscoder)
    k: int = 32


class Dictionary(nn.Module, ABC):
    """A sparse dictionary over paired activations (see the module docstring).

    Parameters: ``W_enc`` [row size, m], ``b_enc`` [m], ``W_dec`` [m, *row], ``b_dec`` [*row]; the
    activation ``sparse`` (with the ``threshold`` buffer under BatchTopK). A subclass names its
    ``architecture`` (the spec's key, under which :meth:`from_spec` and :meth:`load` find it) and
    implements :meth:`inputs`; it overrides :meth:`encoder_input`, :meth:`sparsity` and
    ``unit_norm_decoder`` where it differs from the defaults.
    """

    #: the spec's name of each architecture, filled as subclasses are defined
    registry: ClassVar[dict[str, type[Dictionary]]] = {}
    #: this architecture's name in :class:`DictionarySpec` (set by each subclass)
    architecture: ClassVar[str]
    #: whether decoder rows are kept at unit norm (so that an L1 penalty on f cannot be dodged by
    #: shrinking f and growing the decoder); :meth:`normalise` and :meth:`project_decoder_grad` act on it
    unit_norm_decoder: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "architecture" in cls.__dict__:
            Dictionary.registry[cls.architecture] = cls

    def __init__(self, d: int, n_latents: int, activation: str, k: int, row_shape: tuple[int, ...],
                 init_norm: float = 1.0, generator: torch.Generator | None = None):
        """Decoder rows of shape ``row_shape`` drawn from ``generator`` at norm ``init_norm``; the
        encoder starts as the decoder's transpose, both biases at zero."""
        super().__init__()
        self.sparse = SparseActivation(activation, n_latents, k)
        self.d, self.activation, self.k = d, activation, k
        w = torch.randn(n_latents, *row_shape, generator=generator)
        w = w / w.flatten(1).norm(dim=-1).view(-1, *(1,) * len(row_shape))
        if init_norm != 1.0:
            w = w * init_norm
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.flatten(1).t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(row_shape))

    # --- building and describing ---------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: DictionarySpec, seed: int = 0) -> Dictionary:
        """A fresh dictionary of ``spec``'s architecture, its weights drawn from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        if spec.architecture not in Dictionary.registry:
            raise ValueError(f"architecture={spec.architecture!r} must be one of {tuple(sorted(Dictionary.registry))}")
        return Dictionary.registry[spec.architecture](spec.d, spec.n_latents, spec.activation, spec.k, generator=gen)

    @property
    def spec(self) -> DictionarySpec:
        """What rebuilds this dictionary (what :meth:`save` writes)."""
        return DictionarySpec(self.architecture, d=self.d, n_latents=self.n_latents, activation=self.activation,
                              k=self.k)

    @property
    def n_latents(self) -> int:
        """m, the number of latents (the code's width)."""
        return self.b_enc.shape[0]

    @staticmethod
    @abstractmethod
    def inputs(a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
        """What this dictionary reads, [B, *row], from the base and fine-tuned activations [B, d]."""
    # --- the forward pass ----------------------------------------------------------------------

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies, [B, row size]: the input flattened."""
        return x.flatten(1)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[B, m]: the code before σ."""
        return self.encoder_input(x) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """σ: the sparse code of the pre-activations (BatchTopK: batch-wide in training, thresholded in eval)."""
        return self.sparse(pre)

    @property
    def threshold(self) -> torch.Tensor:
        """The BatchTopK inference threshold (``batchtopk`` only)."""
        return self.sparse.threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, m]: the sparse code of ``x``."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[B, *row]: the reconstruction from the code ``f``."""
        return (f @ self.W_dec.flatten(1)).view(-1, *self.W_dec.shape[1:]) + self.b_dec  # one matmul, not a bmm

    def decode_entries(self, values: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
        """[n, *row]: :meth:`decode` of the code of n inputs given by its nonzero entries (``values``
        at ``indices`` ascending into the flattened [n, m] code). A sum of the selected decoder rows
        (an embedding bag), whose backward reaches only those rows: for a code of k latents out of
        m, about m/k times fewer products than the dense matmul, the same sums in another order."""
        m = self.n_latents
        w = self.W_dec.flatten(1)
        offsets = torch.searchsorted(indices, torch.arange(n, device=indices.device) * m)
        out = nn.functional.embedding_bag(indices % m, w, offsets, mode="sum", per_sample_weights=values.to(w.dtype))
        return out.view(-1, *self.W_dec.shape[1:]) + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, f, pre)``: the reconstruction, the code and the pre-activations (for dead-latent
        losses). A TopK code (k latents per input; BatchTopK's too) is decoded from its entries
        (:meth:`decode_entries`), a ReLU code (no bound on its density) densely."""
        pre = self.pre_activations(x)
        if self.activation == "relu":
            f = self.activate(pre)
            return self.decode(f), f, pre
        if self.sparse.selects:
            values, indices = self.sparse.select(pre)
            f = torch.zeros_like(pre).flatten().scatter(0, indices, values).view_as(pre)
        else:  # BatchTopK at inference: a threshold, k latents per input on average
            f = self.activate(pre)
            indices = f.flatten().nonzero().squeeze(1)
            values = f.flatten()[indices]
        return self.decode_entries(values, indices, len(pre)), f, pre

    def decoder(self) -> torch.Tensor:
        """[m, *row]: each latent's direction in the input space ([m, d] in activation-difference
        space for the Diff-SAE, [m, 2, d] in both models for the crosscoder)."""
        return self.W_dec

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        """The penalty the L1 coefficient multiplies: L1 of the code (decoder rows have unit norm)."""
        return f.abs().sum(-1).mean()

    def relative_decoder_norm(self) -> torch.Tensor | None:
        """[m]: how much of each latent's decoder lies in the fine-tuned model, where the dictionary
        reads both models; None for a dictionary of one input."""
        return None

    # --- upkeep during training ----------------------------------------------------------------

    @torch.no_grad()
    def init_decoder_bias(self, x: torch.Tensor) -> None:
        """Start the decoder bias at the mean of the (scaled) training inputs: the code then spends
        itself on the variation around it."""
        self.b_dec.copy_(x.mean(0))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Between backward and the optimizer step: remove the part of each decoder row's gradient
        that would change its norm (unit-norm architectures only; no-op without a gradient)."""
        w = self.W_dec
        if not self.unit_norm_decoder or w.grad is None:
            return
        rows = w.data.flatten(1)
        grad = w.grad.flatten(1)
        grad -= (grad * rows).sum(-1, keepdim=True) * rows / (rows ** 2).sum(-1, keepdim=True)

    @torch.no_grad()
    def normalise(self) -> None:
        """After the optimizer step: put the decoder rows back at unit norm (unit-norm
        architectures only; the projected gradient keeps them close, this removes the drift)."""
        if not self.unit_norm_decoder:
            return
        flat = self.W_dec.data.flatten(1)
        flat /= flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor, scale: torch.Tensor, seed: int) -> None:
        """BatchTopK only: set the inference threshold so that a random subsample of the training
        inputs ``x`` (raw; ``scale`` is the input scale; at most :data:`CALIBRATION_INPUTS`, drawn
        from ``seed + 1`` so as not to touch the training's draws), taken as one batch, keeps k
        latents per input on average (:meth:`SparseActivation.calibrate`). The moving average of
        training (β = 0.99) is of thresholds from earlier weights: after the few hundred steps of
        a small run most of its weight still lies on the first ones."""
        if self.activation != "batchtopk":
            return
        n = min(len(x), CALIBRATION_INPUTS)
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))[:n]
        self.sparse.calibrate(self.pre_activations(x[rows] * scale))

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path, scale: torch.Tensor, log: list[dict], metrics: dict, params: dict) -> None:
        """Write the dictionary's folder at ``path`` (atomically): weights with the input ``scale``,
        the training ``log``, and its spec with ``metrics`` and ``params``."""
        with atomic_path(path) as tmp:
            tmp.mkdir()
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()} | {"input_scale": scale},
                      str(tmp / WEIGHTS_FILE))
            (tmp / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in log))
            write_json(tmp / INFO_FILE, {"spec": asdict(self.spec), "metrics": metrics, "params": params})

    @classmethod
    def load(cls, path: str | Path) -> tuple[Dictionary, torch.Tensor, dict]:
        """``(model, scale, info)`` of a saved dictionary, in eval mode, of the architecture its spec
        names (called on a subclass, that architecture or an error)."""
        path = Path(path)
        info = json.loads((path / INFO_FILE).read_text())
        spec = DictionarySpec(**info["spec"])
        state = load_file(str(path / WEIGHTS_FILE))
        scale = state.pop("input_scale")
        model = cls.from_spec(spec)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {spec.architecture}, not a {cls.__name__}")
        model.load_state_dict(state)
        return model.eval(), scale, info

    @staticmethod
    def read_log(path: str | Path) -> list[dict]:
        """The training log of the dictionary saved at ``path``."""
        return [json.loads(line) for line in (Path(path) / LOG_FILE).read_text().splitlines()]
