"""What every method provides: losses for a batch, features + scores for evaluation, the ranking of
search candidates, declared capabilities and no-op hooks."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Backbone
from .maps import Associations


def shard_of(batch: dict[str, Any]) -> tuple[dict[str, Any], slice]:
    """(the global batch, this process's rows in it).

    Under multi-process training each rank's batch holds its B / N samples plus, under "shard",
    the token ids, pids and collate extras of the whole global batch (cheap integers), so random
    token masking and sampling are drawn for the global batch exactly as one process would and
    each rank keeps its own rows. With one process: (batch, every row).
    """
    shard = batch.get("shard")
    if shard is None:
        return batch, slice(None)
    return shard["global"], slice(shard["offset"], shard["offset"] + shard["size"])


@dataclass(frozen=True)
class Capabilities:
    """What a method offers beyond ranking by cosine. The search CLI, the service and the web page
    show their options from this declaration (never from the method's name)."""

    rerank: bool = False            # `rank(..., rerank=K)` re-scores the first-stage top K
    max_rerank: int | None = None   # the largest K the re-ranker accepts (None: any)
    default_rerank: int = 0         # the K a user interface suggests (0 = off)
    uncertainty: bool = False       # hits carry a calibrated match probability and uncertainties
    association_maps: bool = False  # `association_maps` draws per-word heat maps on an image
    index_features: tuple[str, ...] = ("emb",)  # per-image features search needs the index to store
    caption_extras: bool = False    # `collate_extras` adds tensors to training batches

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "index_features": list(self.index_features)}


@dataclass
class Ranking:
    """The final ranking of one query's candidates, in the candidates' order, with per-hit notes."""

    scores: torch.Tensor                          # [n] final score per candidate (higher ranks first)
    reranked: torch.Tensor | None = None          # [n] bool: re-scored by a second stage
    match_probability: torch.Tensor | None = None  # [n] float, NaN where the method gives none
    image_uncertainty: torch.Tensor | None = None  # [n]
    query_uncertainty: float | None = None
    calibrated: bool | None = None                # the match probability was fitted on validation data


class Method(nn.Module):
    """A composition of losses over a backbone.

    The engine calls `forward(batch)` for training (a dict with a scalar "loss" and its parts),
    `encode_images` / `encode_texts` once per gallery image and query, and `score` to turn the
    collected features into one similarity matrix per reported task (e.g. "t2i", "t2i-rerank").
    Search calls `rank` on a query's FAISS candidates; it must rank them exactly as `score` ranks
    a gallery, so methods build both from the same functions. The hooks below (`collate_extras`,
    `on_validation`, `extra_report`, `association_maps`) are no-ops or refusals here; a method
    overrides the ones it needs and says so in `capabilities`.
    """

    name: str = ""  # the registered name, set by `methods.register`

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.num_classes = num_classes
        self.tokenizer = tokenizer

    def capabilities(self) -> Capabilities:
        """Declared options beyond cosine ranking (none by default)."""
        return Capabilities()

    def new_parameter_names(self) -> set[str]:
        """Parameters outside the (possibly pretrained) backbone, which get the larger learning rate."""
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.")}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, _ = self.backbone.encode_image(images)
        return {"emb": F.normalize(emb.float(), dim=-1)}

    @torch.no_grad()
    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        emb, _ = self.backbone.encode_text(tokens["ids"], tokens["attention_mask"], tokens.get("eot_index"))
        return {"emb": F.normalize(emb.float(), dim=-1)}

    @torch.no_grad()
    def score(self, text_feats: dict[str, torch.Tensor], image_feats: Mapping[str, torch.Tensor],
              **kwargs: Any) -> dict[str, torch.Tensor]:
        """Text-to-image similarity [Q, G] per task; the default is cosine of the global embeddings."""
        return {"t2i": cosine(text_feats, image_feats)}

    # ------------------------------------------------------------------ search
    def search_candidates(self, k: int, rerank: int, total: int, exact_index: bool) -> int:
        """How many first-stage (FAISS, cosine) candidates `rank` needs to return the top `k` of a
        gallery of `total` (capped at `total` by the caller); by default the top max(k, rerank)."""
        return max(k, rerank)

    @torch.no_grad()
    def rank(self, query: dict[str, torch.Tensor], candidates: Mapping[str, torch.Tensor],
             first_stage: torch.Tensor, rerank: int = 0) -> Ranking:
        """Final scores of one query's candidates.

        `query`: the query's `encode_texts` features (one row); `candidates`: what the index stored
        for each candidate (the `encode_images` features, read on first access), in first-stage
        order; `first_stage`: their FAISS scores (cosine); `rerank`: K > 0 asks a re-ranking method
        to re-score the top K. The default ranks by `score`'s "t2i" on the candidates, so search
        and evaluation rank the same way.
        """
        return Ranking(self.score(query, candidates)["t2i"][0].float())

    # ------------------------------------------------------------------ hooks (no-op defaults)
    def collate_extras(self, captions: list[str], tokens: Any) -> dict[str, torch.Tensor]:
        """Extra per-caption tensors added to every training batch (e.g. attribute-token flags from
        tbps.data.attributes, computed from the tokenizer's character offsets). Declare
        `caption_extras` in `capabilities` so the trainer computes them once per dataset first."""
        return {}

    def on_validation(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor],
                      split: Any) -> None:
        """Called with the validation features before scoring, each time the trainer validates and
        before the best checkpoint is written (e.g. fitting a calibration stored in buffers)."""

    def extra_report(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor], split: Any,
                     scores: dict[str, torch.Tensor], out_dir: str | Path | None) -> dict[str, Any] | None:
        """Extra evaluation results (JSON-ready) and files under `out_dir` (may be None), reported by
        `tbps eval` beside the ranking metrics; None = nothing to add."""
        return None

    def association_maps(self, image: torch.Tensor, text: str, max_len: int, layers: str | int = "all"
                         ) -> Associations:
        """Per-word and per-attribute-phrase heat maps of `text` on one preprocessed image [1, 3, H, W].
        Methods that declare `association_maps` implement it."""
        raise ValueError(f"association maps need a method that declares them; {self.name or type(self).__name__} "
                         "does not (its text encoder does not read the image)")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def cosine(text_feats: Mapping[str, torch.Tensor], image_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[Q, G] cosine of the normalised global embeddings ("emb")."""
    return text_feats["emb"].float() @ image_feats["emb"].float().t()
