"""UCA (Deng et al., Visual Intelligence 2025): uncertainty-aware coarse-to-fine alignment.

Every image and caption becomes a diagonal Gaussian N(mu, diag(sigma^2)) (METHODS.md section 4),
aligned at three granularities:

* DCL, distributions (coarse): IRRA's SDM loss on logits -d(N_text, N_image) / tau_d, with d the
  squared 2-Wasserstein distance (default) or CSD, for the whole batch by matrix products;
* PCL, sampled points (finer): K reparameterised samples per item, multi-positive InfoNCE across
  modalities and within each modality;
* REC, attribute words (fine): attribute tokens of the caption are masked and predicted by a
  cross-modal decoder whose queries are the masked text tokens plus the text's sample points and
  whose keys/values are the image patch tokens plus the image's sample points.

plus a small KL(N || N(0, I)) and an optional ID loss. At test time the mean embeddings rank the
gallery (cosine by default, -W2 or -CSD on request) and the variances give each query and image an
uncertainty, reported against retrieval errors in `extra_report`.

Choices the paper leaves open (each is a config key):

* `var_head`: the variance head reads the projected global feature (`mlp`) or attention-pools the
  projected tokens (`attn_pool`). Its last layer starts near log sigma^2 = `logvar_init` (-9: with
  D = 512, sigma * sqrt(D) ~ 0.25, i.e. samples stay close to the mean at first).
* PCL is the "supervised contrastive" form: per anchor, the mean over its positives of
  -log softmax; anchors without a positive are skipped. Intra-modal terms drop every pair of
  samples that come from the same item (the anchor's own K samples): they share the mean, so
  as positives they would only reward sigma -> 0, and they carry no identity information.
  Positives are the samples of *other* items of the same identity, which the identity-balanced
  sampler (`data.instances_per_id`) guarantees.
* Both directions of DCL and PCL-inter, and both modalities of PCL-intra and KL, are summed
  (the convention of IRRA's SDM).
* Attribute tokens are masked with probability `attr_mask_prob` = 0.4 (CADA's rate on the same
  detector; on our captions it masks about as many tokens as IRRA's 15% of all tokens, so
  enough context is left for a masked word to be recoverable from the image), 80/10/10 rule, at
  least one per caption; captions without any attribute get random 15% masking (`mlm_prob`).
* The text sample points fed to the decoder come from the *masked* caption's distribution: the
  unmasked caption's embedding would carry the very words to be predicted.
* `rec_points`: `samples` (K fresh samples of each modality), `mean` (one deterministic mean
  token each: the "deterministic tokens" ablation) or `none` (plain IRRA-style decoder).
* Calibration: p(match) = sigmoid(-a d + b) with d the `distance` between a query and its top-1
  image, fitted by logistic regression on the validation split's (d of the top-1, correct?) pairs
  (`calibration: top1`, the population whose confidence we report) or on all query-image pairs
  (`calibration: all`, subsampled to at most `calib_max_pairs`). a and b are buffers, so they
  are saved with the weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import uncertainty as unc
from ..data.attributes import attribute_char_mask, find_attribute_words, token_attribute_flags
from ..models import Backbone
from ..models.fusion import CrossModalEncoder, MLMHead
from ..models.layers import MultiheadAttention
from . import register
from .base import Capabilities, Method, Ranking, cosine, shard_of
from .distributions import (DISTANCES, fp32, kl_to_standard_normal, paired_distance, pairwise_distance,
                            sample_points, uncertainty)
from .losses import gather, id_loss, masked_token_loss, sdm_from_logits
from .masking import mask_tokens

DEFAULTS: dict[str, Any] = {
    "num_samples": 7,          # K samples per item for PCL and the decoder
    "tau_d": 0.04,             # DCL temperature on distances (matches cosine / 0.02)
    "tau_p": 0.02,             # PCL temperature on cosine of samples
    "distance": "w2",          # w2 | csd: DCL distance, also used for calibration
    "var_head": "mlp",         # mlp | attn_pool
    "logvar_init": -9.0,
    "logvar_range": [-15.0, 2.0],
    "attr_mask_prob": 0.4,     # masking probability of each attribute token
    "mlm_prob": 0.15,          # fallback random masking for captions without attributes
    "rec_points": "samples",   # samples | mean | none
    "cross_layers": 4,         # self-attention layers after the decoder's cross-attention
    "score": "cosine",         # cosine | w2 | csd: the default ranking ("t2i")
    "eval_scores": ["cosine", "w2", "csd"],  # also reported, as "t2i-<name>" (t2i-w2, t2i-csd)
    "score_chunk": 1024,       # queries per chunk for -W2 / -CSD over a gallery
    "uncertainty": "mean_var",  # mean_var (mean sigma^2) | trace (tr S)
    "calibration": "top1",     # top1 | all
    "calib_max_pairs": 2_000_000,
    "uncertainty_bins": 10,
    "ece_bins": 15,
    "terse_max_attributes": 2,  # captions with at most this many attribute words count as terse
    "loss_weights": {"dcl": 1.0, "pcl_inter": 1.0, "pcl_intra": 0.5, "rec": 1.0, "kl": 1e-4, "id": 0.0},
}

SCORES = ("cosine",) + DISTANCES


class VarianceHead(nn.Module):
    """log sigma^2 per dimension from the global feature (`mlp`) or attention-pooled tokens.

    LayerNorm -> Linear -> GELU -> Linear; the last layer starts small with its bias at
    `init`, so every item starts with log sigma^2 close to `init`. Output clamped to `bounds`.
    """

    def __init__(self, dim: int, kind: str = "mlp", init: float = -9.0,
                 bounds: tuple[float, float] = (-15.0, 2.0)) -> None:
        super().__init__()
        if kind not in ("mlp", "attn_pool"):
            raise ValueError(f"unknown var_head {kind!r}; use mlp or attn_pool")
        self.kind = kind
        self.bounds = (float(bounds[0]), float(bounds[1]))
        if kind == "attn_pool":
            self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
            self.ln_tokens = nn.LayerNorm(dim)
            self.pool = MultiheadAttention(dim, max(1, dim // 64))
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        nn.init.normal_(self.fc2.weight, std=0.02)
        nn.init.constant_(self.fc2.bias, init)

    def forward(self, global_feat: torch.Tensor, tokens: torch.Tensor | None = None,
                padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "attn_pool":
            if tokens is None:
                raise ValueError("var_head attn_pool needs the projected tokens")
            q = self.query.expand(tokens.shape[0], 1, -1).to(tokens.dtype)
            x = self.pool(q, self.ln_tokens(tokens), key_padding=padding)[:, 0]
        else:
            x = global_feat
        return self.fc2(self.act(self.fc1(self.ln(x)))).clamp(*self.bounds)


def multi_positive_nce(anchors: torch.Tensor, candidates: torch.Tensor, anchor_labels: torch.Tensor,
                       cand_labels: torch.Tensor, tau: float, anchor_items: torch.Tensor | None = None,
                       cand_items: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE: mean over anchors of -mean_{p in P(a)} log softmax_c(a.c / tau)[p].

    Positives share the anchor's label. With item ids, a pair from the same item is removed
    entirely (neither positive nor in the denominator): intra-modal terms use this to exclude the
    anchor's own samples. Anchors with no positive are skipped; with none at all the loss is 0.
    """
    logits = (anchors.float() @ candidates.float().t()) / tau
    pos = anchor_labels[:, None] == cand_labels[None, :]
    if anchor_items is not None:
        same = anchor_items[:, None] == cand_items[None, :]
        logits = logits.masked_fill(same, -1e9)  # finite: a fully excluded row stays NaN-free
        pos = pos & ~same
    logp = logits.log_softmax(1)
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return anchors.sum() * 0.0
    per_anchor = logp.masked_fill(~pos, 0.0).sum(1)[valid] / n_pos[valid]
    return -per_anchor.mean()


def attribute_flags(captions: list[str], tokens: Any, length: int | None = None) -> torch.Tensor:
    """[B, L] True where a token overlaps an attribute word of its caption (detector of 3.3)."""
    length = int(tokens.attention_mask.sum(1).max()) if length is None else length
    flags = torch.zeros(len(captions), length, dtype=torch.bool)
    for i, (caption, offsets) in enumerate(zip(captions, tokens.offsets)):
        spans = attribute_char_mask(caption)
        if spans:
            flags[i] = torch.tensor(token_attribute_flags(offsets[:length], spans), dtype=torch.bool)
    return flags


@register("uca")
class UCA(Method):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg, "loss_weights": {**DEFAULTS["loss_weights"], **cfg.get("loss_weights", {})}}
        for key, allowed in (("distance", DISTANCES), ("score", SCORES), ("rec_points", ("samples", "mean", "none")),
                             ("uncertainty", ("mean_var", "trace")), ("calibration", ("top1", "all"))):
            if cfg[key] not in allowed:
                raise ValueError(f"uca: {key}={cfg[key]!r}; use one of {allowed}")
        for s in cfg["eval_scores"]:
            if s not in SCORES:
                raise ValueError(f"uca: eval_scores entry {s!r}; use any of {SCORES}")
        unknown = set(cfg["loss_weights"]) - set(DEFAULTS["loss_weights"])
        if unknown:
            raise ValueError(f"uca: unknown loss_weights {sorted(unknown)}; known: {sorted(DEFAULTS['loss_weights'])}")
        super().__init__(cfg, backbone, num_classes, tokenizer)
        d = backbone.cfg.embed_dim
        w = cfg["loss_weights"]
        bounds = tuple(cfg["logvar_range"])
        self.image_var = VarianceHead(d, cfg["var_head"], cfg["logvar_init"], bounds)
        self.text_var = VarianceHead(d, cfg["var_head"], cfg["logvar_init"], bounds)
        if w["rec"]:  # modules without a loss would get no gradient: build only what is trained
            self.cross_modal = CrossModalEncoder(d, max(1, d // 64), cfg["cross_layers"])
            self.mlm_head = MLMHead(d, tokenizer.vocab_size)
        if w["id"]:
            self.classifier = nn.Linear(d, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        # calibration p = sigmoid(-a d + b), fitted in on_validation; buffers travel with the weights
        self.register_buffer("calib_a", torch.tensor(1.0 / cfg["tau_d"]))
        self.register_buffer("calib_b", torch.tensor(0.0))
        self.register_buffer("calib_fitted", torch.tensor(0.0))

    def capabilities(self) -> Capabilities:
        """Calibrated match probabilities and uncertainties, from the images' stored log-variances."""
        return Capabilities(uncertainty=True, index_features=("emb", "logvar"), caption_extras=True)

    # ------------------------------------------------------------------ distributions
    def _distribution(self, head: VarianceHead, emb: torch.Tensor, tokens: torch.Tensor | None = None,
                      padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) in fp32; mu is the L2-normalised projected global feature."""
        with fp32(emb.device):
            mu = F.normalize(emb.float(), dim=-1)
            logvar = head(emb.float(), None if tokens is None else tokens.float(), padding)
        return mu, logvar

    def _image(self, images: torch.Tensor, need_tokens: bool) -> tuple[torch.Tensor, ...]:
        """-> (mu, logvar, projected image tokens or None, projected global feature)."""
        bb = self.backbone
        emb, tokens = bb.encode_image(images)
        proj = bb.image_proj(tokens) if need_tokens or self.cfg["var_head"] == "attn_pool" else None
        mu, logvar = self._distribution(self.image_var, emb, proj)
        return mu, logvar, proj, emb

    def _text(self, ids: torch.Tensor, mask: torch.Tensor, eot: torch.Tensor | None,
              need_tokens: bool) -> tuple[torch.Tensor, ...]:
        """-> (mu, logvar, projected text tokens or None, projected global feature)."""
        bb = self.backbone
        emb, tokens = bb.encode_text(ids, mask, eot)
        proj = bb.text_proj(tokens) if need_tokens or self.cfg["var_head"] == "attn_pool" else None
        mu, logvar = self._distribution(self.text_var, emb, proj, mask)
        return mu, logvar, proj, emb

    def _points(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator, offset: int = 0,
                total: int | None = None) -> torch.Tensor:
        """The extra decoder tokens of one modality: [B, K | 1 | 0, D] per `rec_points`.

        `offset` / `total`: these B items are rows offset.. of a global batch of `total` (multi-process)."""
        mode = self.cfg["rec_points"]
        if mode == "samples":
            return sample_points(mu, logvar, int(self.cfg["num_samples"]), generator, offset=offset, total=total)
        if mode == "mean":
            return mu[:, None, :]
        return mu.new_zeros(mu.shape[0], 0, mu.shape[1])

    # ------------------------------------------------------------------ training
    def collate_extras(self, captions: list[str], tokens: Any) -> dict[str, torch.Tensor]:
        """Attribute-token flags, trimmed like the token batch (to its longest caption)."""
        return {"attr_flags": attribute_flags(captions, tokens)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        w, cfg = self.cfg["loss_weights"], self.cfg
        tok, pids, g = batch["tokens"], batch["pids"], batch["mask_generator"]
        mu_v, lv_v, image_tokens, emb_v = self._image(batch["images"], need_tokens=bool(w["rec"]))
        mu_t, lv_t, _, emb_t = self._text(tok["ids"], tok["attention_mask"], tok.get("eot_index"), need_tokens=False)
        glob, rows = shard_of(batch)  # multi-process: the global batch and this rank's rows
        # batch-level terms use the global batch's distributions (gathered with gradient)
        g_mu_v, g_lv_v, g_mu_t, g_lv_t = gather(mu_v), gather(lv_v), gather(mu_t), gather(lv_t)
        g_pids = glob["pids"]
        losses: dict[str, torch.Tensor] = {}
        with fp32(mu_v.device):
            if w["dcl"]:
                d = pairwise_distance(cfg["distance"], g_mu_t, g_lv_t, g_mu_v, g_lv_v)  # [text, image]
                losses["dcl"] = sdm_from_logits(-d / cfg["tau_d"], g_pids)
            if w["pcl_inter"] or w["pcl_intra"]:
                k = int(cfg["num_samples"])
                z_v = sample_points(g_mu_v, g_lv_v, k, g).flatten(0, 1)  # [B*K, D], item-major
                z_t = sample_points(g_mu_t, g_lv_t, k, g).flatten(0, 1)
                labels = g_pids.repeat_interleave(k)
                items = torch.arange(len(g_pids), device=g_pids.device).repeat_interleave(k)
                tau = cfg["tau_p"]
                if w["pcl_inter"]:
                    losses["pcl_inter"] = (multi_positive_nce(z_t, z_v, labels, labels, tau)
                                           + multi_positive_nce(z_v, z_t, labels, labels, tau))
                if w["pcl_intra"]:
                    losses["pcl_intra"] = (multi_positive_nce(z_v, z_v, labels, labels, tau, items, items)
                                           + multi_positive_nce(z_t, z_t, labels, labels, tau, items, items))
            if w["kl"]:
                losses["kl"] = kl_to_standard_normal(g_mu_v, g_lv_v) + kl_to_standard_normal(g_mu_t, g_lv_t)
            if w["id"]:
                losses["id"] = id_loss(self.classifier, emb_v.float(), emb_t.float(), pids)
        if w["rec"]:
            losses["rec"] = self._rec_loss(tok, image_tokens, mu_v, lv_v, glob.get("attr_flags"), g,
                                           glob["tokens"], rows)
        losses["loss"] = sum(w[k] * v for k, v in losses.items())
        return losses

    def mask_caption(self, ids: torch.Tensor, attention_mask: torch.Tensor, flags: torch.Tensor | None,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute masking (80/10/10) where a caption has attribute tokens, random 15% elsewhere."""
        t = self.tokenizer
        ids, attention_mask = ids.cpu(), attention_mask.cpu()
        out, labels = mask_tokens(ids, attention_mask, t.special_ids, t.mask_id, t.vocab_size, generator,
                                  self.cfg["mlm_prob"])
        if flags is None:
            return out, labels
        flags = flags.cpu().bool()
        L = ids.shape[1]
        if flags.shape[1] < L:  # flags are trimmed like the tokens; be lenient anyway
            flags = torch.cat([flags, flags.new_zeros(flags.shape[0], L - flags.shape[1])], 1)
        flags = flags[:, :L] & attention_mask.bool()
        for s in t.special_ids:
            flags &= ids != s
        has_attr = flags.any(1)
        if bool(has_attr.any()):
            a_ids, a_labels = mask_tokens(ids, attention_mask, t.special_ids, t.mask_id, t.vocab_size, generator,
                                          self.cfg["attr_mask_prob"], candidates=flags)
            out = torch.where(has_attr[:, None], a_ids, out)
            labels = torch.where(has_attr[:, None], a_labels, labels)
        return out, labels

    def _rec_loss(self, tok: dict[str, torch.Tensor], image_tokens: torch.Tensor, mu_v: torch.Tensor,
                  lv_v: torch.Tensor, flags: torch.Tensor | None, generator: torch.Generator,
                  global_tok: dict[str, torch.Tensor] | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """`flags` and `global_tok` cover the global batch (= `tok` with one process); masks and
        sample noise are drawn for the global batch and this process keeps its `rows`."""
        device = tok["ids"].device
        g_tok = tok if global_tok is None else global_tok
        ids, labels = self.mask_caption(g_tok["ids"], g_tok["attention_mask"], flags, generator)
        ids, labels = ids[rows].to(device), labels[rows].to(device)
        mask = tok["attention_mask"]
        mu_m, lv_m, text_tokens, _ = self._text(ids, mask, tok.get("eot_index"), need_tokens=True)
        offset, total = rows.start or 0, g_tok["ids"].shape[0]
        pts_t = self._points(mu_m, lv_m, generator, offset, total).to(text_tokens.dtype)  # fresh samples every step
        pts_v = self._points(mu_v, lv_v, generator, offset, total).to(image_tokens.dtype)
        queries = torch.cat([text_tokens, pts_t], 1)
        query_padding = torch.cat([mask.bool(), mask.new_ones(mask.shape[0], pts_t.shape[1], dtype=torch.bool)], 1)
        memory = torch.cat([image_tokens, pts_v], 1)
        fused = self.cross_modal(queries, memory, text_padding=query_padding)[:, :ids.shape[1]]
        masked = labels != -100
        logits = self.mlm_head(fused[masked])  # vocabulary head on masked positions only
        return masked_token_loss(logits.float(), labels[masked])

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar, _, _ = self._image(images, need_tokens=False)
        return {"emb": mu, "logvar": logvar}

    @torch.no_grad()
    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, logvar, _, _ = self._text(tokens["ids"], tokens["attention_mask"], tokens.get("eot_index"),
                                      need_tokens=False)
        return {"emb": mu, "logvar": logvar}

    def similarity(self, name: str, text_feats: Mapping[str, torch.Tensor],
                   image_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[Q, G] similarity for one ranking: cosine of the means, -W2 or -CSD."""
        t, v = text_feats, image_feats
        if name == "cosine":
            return cosine(t, v)
        return -pairwise_distance(name, t["emb"], t["logvar"], v["emb"], v["logvar"], int(self.cfg["score_chunk"]))

    @torch.no_grad()
    def score(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor],
              **kwargs: Any) -> dict[str, torch.Tensor]:
        """Task "t2i" ranks by the configured `score`; every other `eval_scores` entry adds "t2i-<name>"."""
        default = self.cfg["score"]
        out = {"t2i": self.similarity(default, text_feats, image_feats)}
        for name in self.cfg["eval_scores"]:
            if name != default:
                out[f"t2i-{name}"] = self.similarity(name, text_feats, image_feats)
        return out

    def search_candidates(self, k: int, rerank: int, total: int, exact_index: bool) -> int:
        """Cosine ranking: the top k by cosine. -W2 / -CSD: every image of an exact index, else the
        top max(10 k, 256) by cosine (the distances re-order them)."""
        if self.cfg["score"] == "cosine":
            return max(k, rerank)
        return total if exact_index else max(10 * k, 256)

    @torch.no_grad()
    def rank(self, query: dict[str, torch.Tensor], candidates: Mapping[str, torch.Tensor],
             first_stage: torch.Tensor, rerank: int = 0) -> Ranking:
        """The configured ranking (as `score`'s "t2i"), each candidate's calibrated match probability
        at its `distance` from the query and its uncertainty, and the query's uncertainty."""
        kind = self.cfg["uncertainty"]
        g_mu, g_lv = candidates["emb"].float(), candidates["logvar"].float()
        n = len(g_mu)
        d = paired_distance(self.cfg["distance"], query["emb"].expand(n, -1), query["logvar"].expand(n, -1),
                            g_mu, g_lv)
        return Ranking(self.similarity(self.cfg["score"], query, candidates)[0].float(),
                       match_probability=self.match_probability(d), image_uncertainty=uncertainty(g_lv, kind),
                       query_uncertainty=float(uncertainty(query["logvar"], kind)[0]),
                       calibrated=bool(float(self.calib_fitted) > 0))

    # ------------------------------------------------------------------ uncertainty
    def _top1(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor], split: Any,
              sim: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (top-1 gallery index, its distance `distance`, correct?) per query, default ranking."""
        sim = self.similarity(self.cfg["score"], text_feats, image_feats) if sim is None else sim
        top1 = sim.argmax(1).cpu()
        qp, gp = torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
        correct = (gp[top1] == qp).float()
        t, v = text_feats, image_feats
        d = paired_distance(self.cfg["distance"], t["emb"].cpu(), t["logvar"].cpu(), v["emb"].cpu()[top1],
                            v["logvar"].cpu()[top1])
        return top1, d, correct

    @torch.no_grad()
    def on_validation(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor],
                      split: Any) -> None:
        """Fit the match-probability calibration sigmoid(-a d + b) on the validation split."""
        if self.cfg["calibration"] == "top1":
            _, d, y = self._top1(text_feats, image_feats, split)
        else:
            t, v = text_feats, image_feats
            d = pairwise_distance(self.cfg["distance"], t["emb"].cpu(), t["logvar"].cpu(), v["emb"].cpu(),
                                  v["logvar"].cpu(), int(self.cfg["score_chunk"])).flatten()
            y = (torch.tensor(split.caption_pids)[:, None] == torch.tensor(split.image_pids)[None, :]).float().flatten()
            stride = max(1, -(-d.numel() // int(self.cfg["calib_max_pairs"])))
            d, y = d[::stride], y[::stride]
        slope, intercept = unc.fit_logistic(d.numpy(), y.numpy())
        self.calib_a.fill_(-slope)
        self.calib_b.fill_(intercept)
        self.calib_fitted.fill_(1.0)

    def match_probability(self, d: torch.Tensor) -> torch.Tensor:
        """Calibrated probability that a (query, image) pair at distance d is a match."""
        return torch.sigmoid(-self.calib_a.cpu() * d + self.calib_b.cpu())

    @torch.no_grad()
    def extra_report(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor], split: Any,
                     scores: dict[str, torch.Tensor], out_dir: str | Path | None) -> dict[str, Any]:
        """Does uncertainty predict errors? Rank-1 by uncertainty bin, risk-coverage, ECE, terse captions."""
        cfg = self.cfg
        _, d, correct = self._top1(text_feats, image_feats, split, scores.get("t2i"))
        u_q = uncertainty(text_feats["logvar"].cpu(), cfg["uncertainty"]).numpy()
        u_g = uncertainty(image_feats["logvar"].cpu(), cfg["uncertainty"]).numpy()
        c = correct.numpy()
        bins = unc.binned_accuracy(u_q, c, int(cfg["uncertainty_bins"]))
        coverage, accuracy = unc.risk_coverage(u_q, c)
        levels = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
        at = {f"{x:.1f}": float(accuracy[max(0, int(round(x * len(c))) - 1)] * 100) for x in levels} if len(c) else {}
        prob = self.match_probability(d).numpy()
        ece = unc.expected_calibration_error(prob, c, int(cfg["ece_bins"]))
        n_attr = torch.tensor([len(find_attribute_words(s)) for s in split.captions])
        terse = (n_attr <= int(cfg["terse_max_attributes"])).numpy()

        def group(sel) -> dict[str, Any]:
            n = int(sel.sum())
            return {"count": n, "mean_uncertainty": float(u_q[sel].mean()) if n else None,
                    "rank1": float(c[sel].mean() * 100) if n else None,
                    "mean_attribute_words": float(n_attr.numpy()[sel].mean()) if n else None}

        report = {
            "uncertainty": cfg["uncertainty"],
            "ranking": cfg["score"],
            "query_uncertainty": {"mean": float(u_q.mean()), "std": float(u_q.std()),
                                  "min": float(u_q.min()), "max": float(u_q.max())},
            "gallery_uncertainty": {"mean": float(u_g.mean()), "std": float(u_g.std()),
                                    "min": float(u_g.min()), "max": float(u_g.max())},
            "rank1_by_uncertainty_bin": bins,
            "risk_coverage": {**unc.aurc(u_q, c), "rank1_at_coverage": at},
            "calibration": {"distance": cfg["distance"], "pairs": cfg["calibration"],
                            "a": float(self.calib_a), "b": float(self.calib_b),
                            "fitted_on_val": bool(self.calib_fitted), "ece": ece["ece"],
                            "mean_top1_probability": float(prob.mean()), "top1_accuracy": float(c.mean())},
            "terse_vs_detailed": {"terse_max_attributes": int(cfg["terse_max_attributes"]),
                                  "terse": group(terse), "detailed": group(~terse)},
        }
        report = _json_safe(report)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            note = f"AURC {report['risk_coverage']['aurc']:.3f}" if report["risk_coverage"]["aurc"] is not None else ""
            unc.plot_risk_coverage(coverage, accuracy, out / "uca_risk_coverage.png",
                                   title=f"UCA risk-coverage ({cfg['uncertainty']})", note=note)
            unc.plot_binned_accuracy(bins["accuracy"], out / "uca_rank1_by_uncertainty.png")
            step = max(1, len(coverage) // 1000)
            curve = {"coverage": coverage[::step].tolist(), "accuracy": accuracy[::step].tolist()}
            ece_bins = {k: ece[k] for k in ("count", "accuracy", "confidence")}
            (out / "uca_uncertainty.json").write_text(json.dumps(_json_safe(
                {**report, "risk_coverage_curve": curve, "ece_per_bin": ece_bins}), indent=2))
            report["files"] = [str(out / n) for n in ("uca_risk_coverage.png", "uca_rank1_by_uncertainty.png",
                                                      "uca_uncertainty.json")]
        return report


def _json_safe(x: Any) -> Any:
    """NaN / inf -> None, recursively (strict JSON has no NaN)."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x
