"""CADA (Lin, Peng, Meng, Zheng, IEEE TMM 2024): Cross-Modal Adaptive Dual Association.

Three objectives on the BLIP layout (METHODS.md section 3):
  glb  identity-aware contrastive loss ("NDF") on the projected global features;
  atp  association of text tokens to image patches: image-text matching with hard negatives on
       the [ENC] output of the image-grounded text encoder, plus matched/unmatched classification
       of G mean-pooled groups of text positions (the "adaptive" part);
  ara  association of image regions to text attributes: attribute tokens are masked and a causal
       text decoder reading the image predicts them at their own positions.
Inference is two-stage: cosine of the globals, then the top-k images of every text re-scored by
the matching head (`itm logit of "matched" + cosine`).

The loss functions below take plain tensors, so that under multi-GPU training a gather of the
features (with gradient) can be inserted in front of them without touching the losses.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.attributes import attribute_char_mask, find_attribute_phrases, token_attribute_flags, token_phrase_ids
from ..models import Backbone
from ..models.heads import LMHead, MatchHead
from ..models.text import BertTextModel
from . import register
from .base import Capabilities, Method, Ranking, cosine, shard_of
from .losses import gather, global_mean, identity_targets, masked_token_loss
from .maps import Associations, collect_maps, token_maps
from .masking import pad_tokens as _pad_to

DEFAULTS: dict[str, Any] = {
    "logit_scale": 50.0,             # fixed NDF logit scale (1 / 0.02)
    "hard_negative_sim": "cosine",   # cosine | dot (official: unnormalised projections)
    "hard_negative": "argmax",       # argmax (official) | sample: drawn from softmax(scale * sim), as BLIP
    "hard_negative_scale": 50.0,     # the sampling softmax's inverse temperature
    "groups": 2,                     # G groups of text positions for group matching
    "group_weight": 1.0,             # ATP = ITM + group_weight * group matching (0: ITM only, for ablations)
    "group_pooling": "padding_aware",  # padding_aware | official (fixed chunks of 1..len-1, padding included)
    "official_group_len": 73,        # the official tokenizer's padded length (official pooling only)
    "ara_masking": "token",          # token | phrase
    "ara_prob": 0.4,                 # per attribute token (token mode)
    "ara_phrase_prob": 0.8,          # per attribute phrase (phrase mode)
    "attribute_include_person": False,  # also mask person nouns (man, woman ...) like POS tagging would
    "decoder_layers": None,          # text decoder depth; null = the backbone's text depth
    "ara_start_token": "dec",        # the decoder's first input in ARA: dec ([DEC], BLIP's captioning) | cls (official)
    "tie_lm_head": False,            # true: the LM head's matrix is the decoder's word embeddings (official)
    "rerank_k": [32],                # top-k images re-scored per query; one reported task per k
    "rerank_batch": 512,             # (text, image) pairs per matching forward pass at inference
    "loss_weights": {"glb": 1.0, "atp": 1.0, "ara": 0.1},  # official code; the paper: glb 0.1, ara 1
}


# ----------------------------------------------------------------------------- losses (plain tensors)

def ndf_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, image_pids: torch.Tensor,
             text_pids: torch.Tensor | None = None, logit_scale: float = 50.0, eps: float = 1e-8) -> torch.Tensor:
    """Identity-aware soft cross-entropy plus (1/N) x symmetric KL, both directions, averaged.

    With p = softmax_j(s * v_i . t_j) and q the identity-normalised targets:
    L = -mean_i sum_j q_ij log p_ij + (1/N) mean_i [KL(p_i || q_i) + KL(q_i || p_i)], N = columns.
    The (1/N) is what the official code gets by averaging the KL terms over all N x N elements.
    """
    text_pids = image_pids if text_pids is None else text_pids
    with torch.autocast(image_emb.device.type, enabled=False):  # logits at scale 50 need fp32
        v = F.normalize(image_emb.float(), dim=-1)
        t = F.normalize(text_emb.float(), dim=-1)
        logits_i2t = logit_scale * v @ t.t()
        loss_i2t = _ndf_direction(logits_i2t, identity_targets(image_pids, text_pids), eps)
        loss_t2i = _ndf_direction(logits_i2t.t(), identity_targets(text_pids, image_pids), eps)
        return (loss_i2t + loss_t2i) / 2


def _ndf_direction(logits: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    logq = torch.log(q + eps)
    ce = -(q * logp).sum(1).mean()
    sym_kl = (p * (logp - logq)).sum(1) + (q * (logq - logp)).sum(1)
    return ce + sym_kl.mean() / logits.shape[1]


@torch.no_grad()
def mine_hard_negatives(text_emb: torch.Tensor, image_emb: torch.Tensor, text_pids: torch.Tensor,
                        image_pids: torch.Tensor, normalize: bool = True, sample_scale: float | None = None,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hardest negative image per text and hardest negative text per image.

    Every candidate with the anchor's identity is excluded (not only the paired item). The official
    code takes the argmax of softmax(sim) with same-identity weights set to 0; softmax is monotonic,
    so this is the argmax of the similarity over the allowed candidates, which we compute directly
    (no underflow of tiny softmax weights can then pick an excluded candidate).
    With `sample_scale`, each negative is instead drawn from softmax(sample_scale * sim) over the
    allowed candidates (BLIP's sampling; not CADA's official choice): harder negatives stay more
    likely, but the hardest is no longer always the one, so "most similar" stops predicting
    "not a match" (README, "Ablations"). A (CPU) `generator` makes the draws a function of it
    alone (the trainer's per-step generator: exact resume), not of the global random state.
    Returns (image index per text, text index per image, has-negative flags for both); a row whose
    candidates all share its identity has no negative and must be left out of the loss.
    """
    if normalize:
        text_emb, image_emb = F.normalize(text_emb.float(), dim=-1), F.normalize(image_emb.float(), dim=-1)
    with torch.autocast(text_emb.device.type, enabled=False):
        sim_t2i = text_emb.float() @ image_emb.float().t()
    same = text_pids[:, None] == image_pids[None, :]
    t2i = sim_t2i.masked_fill(same, float("-inf"))
    i2t = sim_t2i.t().masked_fill(same.t(), float("-inf"))
    ok_t, ok_i = (~same).any(1), (~same).any(0)
    if sample_scale is None:
        return t2i.argmax(1), i2t.argmax(1), ok_t, ok_i

    def draw(sim: torch.Tensor, excluded: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        logits = (sim * sample_scale).masked_fill(excluded, float("-inf"))
        probs = logits.masked_fill(~ok[:, None], 0.0).softmax(1)  # a row without negatives: any (left out later)
        if generator is not None:
            return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
        return torch.multinomial(probs, 1).squeeze(1)

    return draw(sim_t2i, same, ok_t), draw(sim_t2i.t(), same.t(), ok_i), ok_t, ok_i


def group_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, groups: int = 2, mode: str = "padding_aware",
               official_len: int = 73) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool the text positions after [ENC] into `groups` contiguous groups -> ([N, G, W], valid [N, G]).

    padding_aware: each caption's real positions 1..n-1 ([SEP] included, padding excluded) are split
      into G near-equal runs (position 1 + r goes to group floor(r * G / (n - 1))); a group is
      invalid only when the caption has fewer than G positions after [ENC].
    official: positions 1..official_len-1 of every row, padding included, split into G fixed runs
      (G = 2, length 73: positions 1-36 and 37-72, as in the official code). `hidden` must span
      those positions: the caller pads the text to `official_len` before encoding, so the padding
      hidden states are the real ones the official code averages (not zeros).
    """
    N, L, _ = hidden.shape
    rel = torch.arange(L, device=hidden.device)[None, :] - 1  # position index after [ENC]
    if mode == "padding_aware":
        span = attention_mask.long().sum(1, keepdim=True) - 1  # positions after [ENC], per row
    elif mode == "official":
        if L < official_len:
            raise ValueError(f"official group pooling needs {official_len} positions, got {L}; pad the text first")
        span = torch.full((N, 1), official_len - 1, device=hidden.device, dtype=torch.long)
    else:
        raise ValueError(f"unknown group_pooling {mode!r}; use 'padding_aware' or 'official'")
    inside = (rel >= 0) & (rel < span)
    gid = torch.div(rel.clamp(min=0) * groups, span.clamp(min=1), rounding_mode="floor")
    onehot = (gid[..., None] == torch.arange(groups, device=hidden.device)) & inside[..., None]  # [N, L, G]
    w = onehot.to(hidden.dtype)
    count = w.sum(1)  # [N, G]
    pooled = torch.einsum("nlg,nlw->ngw", w, hidden) / count.clamp(min=1)[..., None]
    return pooled, count > 0


def ara_mask(ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: set[int], mask_id: int,
             generator: torch.Generator, flags: torch.Tensor | None = None, phrase_ids: torch.Tensor | None = None,
             mode: str = "token", prob: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask attribute tokens (always with [MASK]) -> (masked ids, labels with -100 off the masked positions).

    token: each flagged attribute token independently with `prob` (official 0.4);
    phrase: each attribute phrase (all its tokens together) with `prob` (official 0.8).
    Special tokens ([CLS]/[ENC]/[SEP]/...) and padding are never masked (the official code masks
    [SEP] by accident). No "at least one" rule: a caption without attributes is left intact.
    """
    real = attention_mask.bool().clone()
    for s in special_ids:
        real &= ids != s
    if mode == "token":
        if flags is None:
            raise ValueError("token-level ARA masking needs attribute flags")
        draw = torch.rand(ids.shape, generator=generator) < prob
        chosen = draw & flags.bool() & real
    elif mode == "phrase":
        if phrase_ids is None:
            raise ValueError("phrase-level ARA masking needs attribute phrase ids")
        n_phrases = max(1, int(phrase_ids.max()) + 1)
        draw = torch.rand((ids.shape[0], n_phrases), generator=generator) < prob
        picked = draw.gather(1, phrase_ids.clamp(min=0).long())
        chosen = picked & (phrase_ids >= 0) & real
    else:
        raise ValueError(f"unknown ara_masking {mode!r}; use 'token' or 'phrase'")
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return ids.masked_fill(chosen, mask_id), labels


# ----------------------------------------------------------------------------- the method

@register("cada")
class CADA(Method):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg, "loss_weights": {**DEFAULTS["loss_weights"], **cfg.get("loss_weights", {})}}
        super().__init__(cfg, backbone, num_classes, tokenizer)
        bc = backbone.cfg
        if bc.family != "blip" or not bc.text_cross_attention:
            raise ValueError("cada needs the blip layout (a BERT text model with cross-attention), "
                             f"got family {bc.family!r} with text_cross_attention={bc.text_cross_attention}")
        try:
            self.enc_id, self.dec_id = tokenizer.token_id("[ENC]"), tokenizer.token_id("[DEC]")
        except KeyError as err:
            raise ValueError(f"cada needs [ENC] and [DEC] in the tokenizer (set data.tokenizer_extra_special: "
                             f"['[ENC]', '[DEC]']): {err}") from None
        if cfg["hard_negative"] not in ("argmax", "sample"):
            raise ValueError(f"cada: hard_negative={cfg['hard_negative']!r}; use 'argmax' (official) or 'sample'")
        if cfg["ara_start_token"] not in ("dec", "cls"):
            raise ValueError(f"cada: ara_start_token={cfg['ara_start_token']!r}; use 'dec' or 'cls' (official)")
        if cfg["group_pooling"] == "official" and cfg["official_group_len"] > bc.context_length:
            raise ValueError(f"group_pooling=official pads texts to official_group_len={cfg['official_group_len']}, "
                             f"more than the context length {bc.context_length}; lower method.official_group_len")
        self.rerank_ks = _as_list(cfg["rerank_k"])
        layers = int(cfg["decoder_layers"] or bc.text_layers)
        # BLIP's text decoder: same BERT, causal self-attention, cross-attention to every image token.
        self.text_decoder = BertTextModel(bc.vocab_size, bc.context_length, bc.text_width, layers, bc.text_heads,
                                          cross_width=bc.vision_width, grad_checkpointing=bc.grad_checkpointing,
                                          dropout=bc.text_dropout)
        self.lm_head = LMHead(bc.text_width, bc.vocab_size)
        if cfg["tie_lm_head"]:  # as the official decoder under transformers 4.x (tie_word_embeddings)
            self.lm_head.decoder.weight = self.text_decoder.embeddings.word_embeddings.weight
        self.itm_head = MatchHead(bc.text_width)
        self.group_head = MatchHead(bc.text_width)

    def capabilities(self) -> Capabilities:
        """Re-ranking of a top K by the matching head (which reads each image's tokens), and the
        image-grounded encoder's cross-attention as association maps."""
        return Capabilities(rerank=True, default_rerank=self.rerank_ks[0] if self.rerank_ks else 0,
                            association_maps=True, index_features=("emb", "tokens"), caption_extras=True)

    # ------------------------------------------------------------------ data
    def collate_extras(self, captions: list[str], tokens: Any) -> dict[str, torch.Tensor]:
        """Per-token attribute flags and phrase ids from the rule-based detector and token offsets.

        Trimmed to the batch's longest caption, like the token tensors (`tokens_to_dict`).
        """
        length = max(1, int(tokens.attention_mask.sum(1).max()))
        person = bool(self.cfg["attribute_include_person"])
        flags = torch.zeros(len(captions), length, dtype=torch.bool)
        phrase_ids = torch.full((len(captions), length), -1, dtype=torch.long)
        for row, (caption, offsets) in enumerate(zip(captions, tokens.offsets)):
            offs = offsets[:length]
            flags[row] = torch.tensor(token_attribute_flags(offs, attribute_char_mask(caption, person)))
            phrase_ids[row] = torch.tensor(token_phrase_ids(offs, find_attribute_phrases(caption, person)))
        return {"attr_flags": flags, "attr_phrase_ids": phrase_ids}

    # ------------------------------------------------------------------ training
    def _encode_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Any], slice, torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
        """(global batch, this rank's rows, global image and text embeddings, local image tokens).

        Under multi-process training the embeddings are gathered so negatives come from the global batch."""
        tok = batch["tokens"]
        image_emb, image_tokens = self.backbone.encode_image(batch["images"])
        text_emb, _ = self.backbone.encode_text(tok["ids"], tok["attention_mask"])
        glob, rows = shard_of(batch)
        return glob, rows, gather(image_emb), gather(text_emb), image_tokens

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        w = self.cfg["loss_weights"]
        glob, rows, image_emb_g, text_emb_g, image_tokens = self._encode_batch(batch)
        losses: dict[str, torch.Tensor] = {}
        total = 0.0
        if w["glb"]:
            losses["glb"] = ndf_loss(image_emb_g, text_emb_g, glob["pids"], logit_scale=self.cfg["logit_scale"])
            total = total + w["glb"] * losses["glb"]
        if w["atp"]:
            losses["itm"], losses["group"] = self._atp_losses(glob["tokens"], glob["pids"], rows, image_emb_g,
                                                              text_emb_g, image_tokens)
            losses["atp"] = losses["itm"] + float(self.cfg["group_weight"]) * losses["group"]
            total = total + w["atp"] * losses["atp"]
        if w["ara"]:
            losses["ara"] = self._ara_loss(batch, image_tokens)
            total = total + w["ara"] * losses["ara"]
        losses["loss"] = total
        return losses

    def _atp_losses(self, tokens: dict[str, torch.Tensor], pids: torch.Tensor, rows: slice, image_emb: torch.Tensor,
                    text_emb: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM on [ENC] over B positives + 2B hard negatives, and group matching on the same passes."""
        if self.cfg["group_pooling"] == "official":
            ids, mask = _pad_to(tokens["ids"], tokens["attention_mask"], int(self.cfg["official_group_len"]),
                                self.tokenizer.pad_id)
            tokens = {**tokens, "ids": ids, "attention_mask": mask}
        sampled = self.cfg["hard_negative"] == "sample"
        itm, hidden, all_mask, labels, keep = self._matching_pass(
            tokens, pids, rows, image_emb, text_emb, image_tokens, normalize=self.cfg["hard_negative_sim"] == "cosine",
            sample_scale=float(self.cfg["hard_negative_scale"]) if sampled else None)
        pooled, valid = group_pool(hidden, all_mask, int(self.cfg["groups"]), self.cfg["group_pooling"],
                                   int(self.cfg["official_group_len"]))
        G = pooled.shape[1]
        group = F.cross_entropy(self.group_head(pooled).float().flatten(0, 1), labels.repeat_interleave(G),
                                reduction="none")
        gkeep = (valid.float() * keep[:, None]).flatten()
        group = global_mean((group * gkeep).sum(), gkeep.sum(), min_count=1)
        return itm, group

    def _matching_pass(self, tokens: dict[str, torch.Tensor], pids: torch.Tensor, rows: slice,
                       image_emb: torch.Tensor, text_emb: torch.Tensor, image_tokens: torch.Tensor, normalize: bool,
                       sample_scale: float | None, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, ...]:
        """Image-text matching on [ENC]: B positives + each text with a hard negative image + each image
        with a hard negative text, in one pass of the image-grounded encoder.

        `tokens`, `pids`, `image_emb`, `text_emb` cover the global batch; `image_tokens` and `rows`
        are this process's (all of them with one process). Each local text is paired with its
        hard negative image of the global batch, whose tokens are gathered with gradient, and
        each local image with its hard negative text (re-encoded here from its token ids).
        Returns (ITM loss, hidden states, their mask, labels, kept-row weights).
        """
        ids, mask = tokens["ids"], tokens["attention_mask"]
        enc_ids = ids.clone()
        enc_ids[:, 0] = self.enc_id
        neg_img, neg_txt, ok_t, ok_i = mine_hard_negatives(
            text_emb.detach(), image_emb.detach(), pids, pids, normalize=normalize, sample_scale=sample_scale,
            generator=generator)
        neg_img, neg_txt, ok_t, ok_i = neg_img[rows], neg_txt[rows], ok_t[rows], ok_i[rows]
        pool = gather(image_tokens)  # the hard-negative image pool: the global batch's image tokens
        local_ids, local_mask = enc_ids[rows], mask[rows]
        B = local_ids.shape[0]
        # one pass over [positives; each text with its hard image; each image with its hard text]
        all_ids = torch.cat([local_ids, local_ids, enc_ids[neg_txt]])
        all_mask = torch.cat([local_mask, local_mask, mask[neg_txt]])
        all_img = torch.cat([image_tokens, pool[neg_img], image_tokens])
        hidden = self.backbone.text(all_ids, all_mask, all_img)
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(ids.device)
        keep = torch.cat([torch.ones(B, dtype=torch.bool, device=ids.device), ok_t, ok_i]).float()
        itm = F.cross_entropy(self.itm_head(hidden[:, 0]).float(), labels, reduction="none")
        itm = global_mean((itm * keep).sum(), keep.sum())
        return itm, hidden, all_mask, labels, keep

    def _ara_loss(self, batch: dict[str, Any], image_tokens: torch.Tensor) -> torch.Tensor:
        """The causal decoder reads the attribute-masked caption ([DEC] first, or [CLS] as the official
        code with ara_start_token=cls) and the image tokens; logits at position i predict the original
        token at i (CE on the masked positions only)."""
        tok = batch["tokens"]
        ids, mask = tok["ids"], tok["attention_mask"]
        if "attr_flags" not in batch:  # batches built without the training collate (e.g. by hand)
            batch = {**batch, **self._extras_for(batch["captions"], ids.shape[1])}
        glob, rows = shard_of(batch)  # masks are drawn for the global batch; this rank keeps its rows
        g_ids, g_mask = glob["tokens"]["ids"], glob["tokens"]["attention_mask"]
        t = self.tokenizer
        mode = self.cfg["ara_masking"]
        masked, labels = ara_mask(g_ids.cpu(), g_mask.cpu(), t.special_ids, t.mask_id, batch["mask_generator"],
                                  flags=glob["attr_flags"].cpu(), phrase_ids=glob["attr_phrase_ids"].cpu(),
                                  mode=mode, prob=self.cfg["ara_prob" if mode == "token" else "ara_phrase_prob"])
        masked, labels = masked[rows].to(ids.device), labels[rows].to(ids.device)
        if self.cfg["ara_start_token"] == "dec":
            masked[:, 0] = self.dec_id
        hidden = self.text_decoder(masked, mask, image_tokens, causal=True)
        chosen = labels != -100
        logits = self.lm_head(hidden[chosen])
        return masked_token_loss(logits.float(), labels[chosen])

    def _extras_for(self, captions: list[str], length: int) -> dict[str, torch.Tensor]:
        return self.collate_extras(captions, self.tokenizer.encode(captions, length))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised global embedding + all image tokens (float16: they are only re-read by the
        matching head for the re-ranked pairs, and halve the memory of a large gallery)."""
        emb, tokens = self.backbone.encode_image(images)
        return {"emb": F.normalize(emb.float(), dim=-1), "tokens": tokens.half()}

    @torch.no_grad()
    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalised global embedding + ids and mask padded to the context length, so that query
        batches of different trimmed lengths stack (re-ranking trims them again per chunk)."""
        ids, mask = tokens["ids"], tokens["attention_mask"]
        emb, _ = self.backbone.encode_text(ids, mask)
        ids, mask = _pad_to(ids, mask, self.backbone.cfg.context_length, self.tokenizer.pad_id)
        return {"emb": F.normalize(emb.float(), dim=-1), "ids": ids, "mask": mask.bool()}

    @torch.no_grad()
    def score(self, text_feats: dict[str, torch.Tensor], image_feats: Mapping[str, torch.Tensor],
              rerank_k: int | Sequence[int] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """{"t2i": cosine, "t2i-rerank@K": two-stage scores} for every K in `rerank_k` (config default)."""
        sim = cosine(text_feats, image_feats)
        out = {"t2i": sim}
        for k in (self.rerank_ks if rerank_k is None else _as_list(rerank_k)):
            out[f"t2i-rerank@{k}"] = self.rerank(sim, text_feats, image_feats, k)
        return out

    @torch.no_grad()
    def rank(self, query: dict[str, torch.Tensor], candidates: Mapping[str, torch.Tensor],
             first_stage: torch.Tensor, rerank: int = 0) -> Ranking:
        """Cosine, or with `rerank` = K the two-stage scores of `score(..., rerank_k=K)`, plus the
        matching head's probability of "matched" for each re-ranked candidate."""
        sim = cosine(query, candidates)
        if not rerank:
            return Ranking(sim[0])
        final, prob, top_idx = self._rerank(sim, query, candidates, rerank)
        n = sim.shape[1]
        reranked = torch.zeros(n, dtype=torch.bool)
        reranked[top_idx[0]] = True
        probability = torch.full((n,), float("nan"))
        probability[top_idx[0]] = prob[0]
        return Ranking(final[0], reranked=reranked, match_probability=probability)

    @torch.no_grad()
    def rerank(self, sim: torch.Tensor, text_feats: dict[str, torch.Tensor], image_feats: Mapping[str, torch.Tensor],
               k: int, batch_pairs: int | None = None) -> torch.Tensor:
        """Top-k images of each query -> itm logit("matched") + cosine; every other image -> cosine - 100."""
        return self._rerank(sim, text_feats, image_feats, k, batch_pairs)[0]

    def _rerank(self, sim: torch.Tensor, text_feats: dict[str, torch.Tensor], image_feats: Mapping[str, torch.Tensor],
                k: int, batch_pairs: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (final scores [Q, G], match probability [Q, k] and gallery index [Q, k] of the re-ranked).

        The (query, image) pairs are scored in chunks of `batch_pairs` through one forward pass each;
        queries are visited shortest first so a chunk is trimmed to little padding. Gallery tokens
        are moved to the model's device once and indexed per chunk.
        """
        Q, G = sim.shape
        k = min(int(k), G)
        batch_pairs = int(batch_pairs or self.cfg["rerank_batch"])
        top_sim, top_idx = sim.topk(k, dim=1)
        device = self.itm_head.weight.device
        dtype = self.itm_head.weight.dtype
        gallery = image_feats["tokens"].to(device)
        ids, mask = text_feats["ids"], text_feats["mask"].bool()
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        q_idx = order.repeat_interleave(k)
        slot = torch.arange(k).repeat(Q)
        g_idx = top_idx[q_idx, slot]
        match, prob = torch.empty(Q, k), torch.empty(Q, k)
        for s in range(0, Q * k, batch_pairs):
            qi, gi, si = q_idx[s:s + batch_pairs], g_idx[s:s + batch_pairs], slot[s:s + batch_pairs]
            L = max(1, int(lengths[qi].max()))
            t_ids = ids[qi, :L].to(device)
            t_ids[:, 0] = self.enc_id
            hidden = self.backbone.text(t_ids, mask[qi, :L].to(device), gallery[gi.to(device)].to(dtype))
            logits = self.itm_head(hidden[:, 0]).float()
            match[qi, si] = self.itm_head.match_logit_of(logits).cpu()
            prob[qi, si] = self.itm_head.match_probability_of(logits).cpu()
        final = sim.float() - 100.0
        final.scatter_(1, top_idx, match + top_sim.float())
        return final, prob, top_idx

    # ------------------------------------------------------------------ association maps
    @torch.no_grad()
    def association_maps(self, image: torch.Tensor, text: str, max_len: int, layers: str | int = "all"
                         ) -> Associations:
        """Cross-attention of the image-grounded encoder reading `text` ([ENC] first) on `image`
        [1, 3, H, W], with the matching head's probability and the cosine of the global features."""
        bb = self.backbone
        device = self.itm_head.weight.device
        tb = self.tokenizer.encode([text], max_len)
        n = int(tb.attention_mask[0].sum())
        ids, mask = tb.ids[:, :n].to(device), tb.attention_mask[:, :n].to(device)
        enc_ids = ids.clone()
        enc_ids[:, 0] = self.enc_id
        images = image.to(device)
        maps, hidden, _ = token_maps(bb, images, enc_ids, mask, layers)
        match_prob = float(self.itm_head.match_probability(hidden[:, 0])[0])
        img_emb, _ = bb.encode_image(images)
        txt_emb, _ = bb.encode_text(ids, mask)
        cos = float(F.cosine_similarity(img_emb.float(), txt_emb.float())[0])
        return Associations(text, tuple(bb.visual.grid), str(layers), match_prob, cos,
                            collect_maps(text, tb.offsets[0][:n], maps[0].cpu(), bool(self.cfg["attribute_include_person"])))


def _as_list(k: int | Sequence[int]) -> list[int]:
    return [int(k)] if isinstance(k, (int, float)) else [int(x) for x in k]
