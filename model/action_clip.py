"""Action-aware multi-modal prompt tuning on a frozen open_clip CLIP (paper section 3.3; docs/model.md).

The image tower is open_clip's own VisionTransformer, run block by block: blocks before the injection layer
l see only the image (their output is the cacheable *prefix*); at l the knowledge tokens Ṽ and N learnable
visual prompts are appended; blocks in [l, depth) each get their own learnable visual prompts (VPT-deep);
the prompt tokens are dropped again before open_clip's pooling, ln_post and projection.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.config import PromptConfig
from model.knowledge import Knowledge
from model.prompt_modules import AdaptiveInteraction, PromptAdapter, TripletEncoder

STAGES = (1, 2)


@dataclass(frozen=True)
class ImagePrefix:
    """What does not depend on the caption: tokens after the blocks before l, and the patch embeddings E_0."""

    tokens: torch.Tensor   # (B, 1 + M, W)
    patches: torch.Tensor  # (B, M, W)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def index(self, rows: torch.Tensor) -> ImagePrefix:
        """Rows of the prefix, e.g. each image repeated for its candidate captions."""
        return ImagePrefix(self.tokens[rows], self.patches[rows])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ImagePrefix:
        return ImagePrefix(self.tokens.to(device, dtype), self.patches.to(device, dtype))


def masked_block(block: nn.Module, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """An open_clip residual attention block whose keys at `padding` (B, L) are not attended to.

    open_clip's blocks take only a dense additive mask, (B·heads, L, L) per batch: 0.5 GB at 256 pairs on
    ViT-B/16. The padding mask here costs O(B·L): nn.MultiheadAttention takes it as key_padding_mask (the rest is
    ResidualAttentionBlock.forward), and open_clip's own Attention (custom blocks) broadcasts a (B, 1, 1, L) one.
    """
    if not isinstance(block.attn, nn.MultiheadAttention):
        blocked = torch.zeros(padding.shape, dtype=tokens.dtype, device=tokens.device).masked_fill(padding, float("-inf"))
        return block(tokens, attn_mask=blocked[:, None, None, :])
    normed = block.ln_1(tokens)
    tokens = tokens + block.ls_1(block.attn(normed, normed, normed, need_weights=False, key_padding_mask=padding)[0])
    return tokens + block.ls_2(block.mlp(block.ln_2(tokens)))


def _token_embedding(clip: nn.Module) -> nn.Embedding | None:
    if hasattr(clip, "token_embedding"):
        return clip.token_embedding
    return getattr(getattr(clip, "text", None), "token_embedding", None)  # CustomTextCLIP: a separate text tower


class ActionAwareCLIP(nn.Module):
    def __init__(self, clip: nn.Module, config: PromptConfig):
        super().__init__()
        visual = getattr(clip, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ValueError("ActionAwareCLIP needs an open_clip CLIP with a VisionTransformer image tower")
        if not visual.transformer.batch_first:
            raise ValueError("the visual transformer must run batch-first (open_clip >= 3 default)")
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("attentional pooling towers (CoCa) are not supported: prompts are dropped before pooling")
        self.config = config
        self.clip = clip.eval()
        self.clip.requires_grad_(False)

        layers, width = visual.transformer.layers, visual.transformer.width
        self.injection_layer = layers // 2 if config.injection_layer is None else config.injection_layer
        self.depth = layers if config.depth is None else config.depth
        if not 0 <= self.injection_layer < layers:
            raise ValueError(f"prompt.injection_layer must be in [0, {layers}) for this model, got {self.injection_layer}")
        if not self.injection_layer < self.depth <= layers:
            raise ValueError(f"prompt.depth must be in ({self.injection_layer}, {layers}], got {self.depth}")
        embed_dim = visual.output_dim

        self.triplet_encoder = None
        if config.use_triplets and config.triplet_source == "encoder":
            token_embedding = _token_embedding(clip)
            if token_embedding is None:
                raise ValueError("triplet_source 'encoder' needs the CLIP text tower's token embedding; "
                                 "use triplet_source 'template' with this model")
            self.triplet_encoder = TripletEncoder(token_embedding.embedding_dim, embed_dim, config.triplet_layers,
                                                  config.triplet_heads)
        self.adapter = PromptAdapter(embed_dim, config.adapter_dim, width) if config.uses_knowledge else None
        weights = (config.mix_lambda, 1 - config.mix_lambda) if config.use_triplets and config.use_states else (1.0,)
        self.interaction = None
        if config.uses_knowledge and config.fusion == "aim":
            heads = config.interaction_heads or visual.transformer.resblocks[0].attn.num_heads
            self.interaction = AdaptiveInteraction(width, heads, weights)
        # The learned null prompt stands in for the knowledge of a caption the LLM gave nothing valid for.
        self.null_triplet = nn.Parameter(torch.randn(embed_dim) * config.init_std) if config.use_triplets else None
        self.null_state = nn.Parameter(torch.randn(embed_dim) * config.init_std) if config.use_states else None
        prompted_blocks = self.depth - self.injection_layer
        self.visual_prompts = (nn.Parameter(torch.randn(prompted_blocks, config.n_visual_prompts, width) * config.init_std)
                               if config.n_visual_prompts else None)
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone())

    # -- the frozen towers ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ActionAwareCLIP:
        super().train(mode)
        self.clip.eval()  # frozen: no dropout / patch dropout, whatever the prompt modules do
        return self

    @torch.no_grad()
    def encode_text(self, texts: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """g(t): the frozen text tower on token ids."""
        return self.clip.encode_text(texts, normalize=normalize)

    def image_prefix(self, images: torch.Tensor) -> ImagePrefix:
        """Blocks [0, l): run once per image and reuse for every candidate caption."""
        visual = self.clip.visual
        with torch.no_grad():
            tokens = visual._embeds(images)
            patches = tokens[:, 1:]
            for block in visual.transformer.resblocks[:self.injection_layer]:
                tokens = block(tokens)
        return ImagePrefix(tokens, patches)

    # -- knowledge -> prompt tokens ---------------------------------------------------------------------
    def _with_null(self, prompts: torch.Tensor, null: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        """Slot 0 of captions without knowledge becomes the learned null prompt."""
        first_slot = torch.zeros_like(prompts[..., :1], dtype=torch.bool)
        first_slot[:, 0] = True
        return torch.where(first_slot & empty[:, None, None], null.to(prompts.dtype), prompts)

    def _triplet_prompts(self, knowledge: Knowledge, mask: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        if self.config.triplet_source == "template":
            if knowledge.templates is None:
                raise ValueError("triplet_source 'template' needs knowledge.templates")
            return self._with_null(knowledge.templates.float(), self.null_triplet, empty)
        if knowledge.slot_tokens is None:
            raise ValueError("the triplet encoder needs knowledge.slot_tokens")
        token_embedding = _token_embedding(self.clip)
        with torch.no_grad():
            words = token_embedding(knowledge.slot_tokens.long())
        triplets = self.triplet_encoder.embed_slots(words, knowledge.slot_tokens)
        return self.triplet_encoder(self._with_null(triplets, self.null_triplet, empty), mask)

    def knowledge_tokens(self, knowledge: Knowledge, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, W) tokens to append at layer l and their (B, T) validity; T = K (AIM) or 2K (concat), 1 for
        the caption prompt."""
        if self.config.use_caption:
            if knowledge.caption is None:
                raise ValueError("caption prompts need knowledge.caption")
            caption = self.adapter(knowledge.caption.float()[:, None])
            mask = torch.ones(caption.shape[:2], dtype=torch.bool, device=caption.device)
            return (caption if self.interaction is None else self.interaction([caption], patches, mask)), mask
        mask = knowledge.mask.bool()
        if mask.shape[1] == 0:  # no triplet slot at all: room for the null prompt
            mask = torch.zeros(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
            knowledge = Knowledge(mask, *(None if t is None else t.new_zeros(t.shape[0], 1, *t.shape[2:])
                                          for t in (knowledge.slot_tokens, knowledge.states, knowledge.templates)))
        empty = ~mask.any(dim=1)
        mask = mask.clone()
        mask[:, 0] |= empty
        streams = []
        if self.config.use_triplets:
            streams.append(self.adapter(self._triplet_prompts(knowledge, mask, empty)))
        if self.config.use_states:
            if knowledge.states is None:
                raise ValueError("state prompts need knowledge.states")
            streams.append(self.adapter(self._with_null(knowledge.states.float(), self.null_state, empty)))
        if self.interaction is not None:
            return self.interaction(streams, patches, mask), mask
        return torch.cat(streams, dim=1), torch.cat([mask] * len(streams), dim=1)

    # -- the prompted image tower -----------------------------------------------------------------------
    def encode_from_prefix(self, prefix: ImagePrefix, knowledge: Knowledge | None = None) -> torch.Tensor:
        """f(i | t) from a cached prefix; with knowledge=None exactly open_clip's encode_image."""
        visual = self.clip.visual
        dtype = visual.conv1.weight.dtype
        tokens, patches = prefix.tokens.to(dtype), prefix.patches.to(dtype)
        blocks = visual.transformer.resblocks[self.injection_layer:]
        image_tokens = tokens.shape[1]
        if knowledge is None:
            for block in blocks:
                tokens = block(tokens)
        else:
            tokens, padding = self._append_prompts(tokens, patches, knowledge)
            for offset, block in enumerate(blocks):
                if 0 < offset < self.depth - self.injection_layer and self.visual_prompts is not None:
                    fresh = self.visual_prompts[offset].to(dtype).expand(len(tokens), -1, -1)
                    tokens = torch.cat([tokens[:, :-fresh.shape[1]], fresh], dim=1)
                tokens = block(tokens) if padding is None else masked_block(block, tokens, padding)
            tokens = tokens[:, :image_tokens]
        pooled, _ = visual._pool(tokens)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def _append_prompts(self, tokens: torch.Tensor, patches: torch.Tensor,
                        knowledge: Knowledge) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token sequence with the prompts appended, and its (B, L) padding (True: not attended to) if any."""
        batch, dtype = tokens.shape[0], tokens.dtype
        parts, valid = [tokens], [torch.ones(batch, tokens.shape[1], dtype=torch.bool, device=tokens.device)]
        if self.config.uses_knowledge:
            knowledge_tokens, knowledge_valid = self.knowledge_tokens(knowledge, patches)
            parts.append(knowledge_tokens.to(dtype))
            valid.append(knowledge_valid)
        if self.visual_prompts is not None:
            parts.append(self.visual_prompts[0].to(dtype).expand(batch, -1, -1))
            valid.append(torch.ones(batch, self.visual_prompts.shape[1], dtype=torch.bool, device=tokens.device))
        tokens, valid = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
        return tokens, None if valid.all() else ~valid

    def encode_image(self, images: torch.Tensor, knowledge: Knowledge | None = None) -> torch.Tensor:
        """f(i | t), unnormalised; with knowledge=None it equals open_clip's encode_image."""
        return self.encode_from_prefix(self.image_prefix(images), knowledge)

    def score_from_prefix(self, prefix: ImagePrefix, knowledge: Knowledge, text_features: torch.Tensor) -> torch.Tensor:
        """s(i_b, t_b) = cos(f(i_b | t_b), g(t_b)) for aligned rows b -> (B,)."""
        image_features = self.encode_from_prefix(prefix, knowledge)
        return F.cosine_similarity(image_features, text_features.to(image_features.dtype), dim=-1)

    def score(self, images: torch.Tensor, knowledge: Knowledge, text_features: torch.Tensor) -> torch.Tensor:
        return self.score_from_prefix(self.image_prefix(images), knowledge, text_features)

    # -- what each training stage updates ---------------------------------------------------------------
    def trainable_parameters(self, stage: int) -> dict[str, nn.Parameter]:
        """Stage 1: every new parameter (triplet encoder, adapter, AIM, prompts, temperature);
        stage 2: the adaptive interaction module only."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        new = {name: p for name, p in self.named_parameters() if not name.startswith("clip.")}
        if stage == 1:
            return new
        if self.interaction is None:
            raise ValueError("stage 2 trains the adaptive interaction module, and this configuration has none "
                             f"(fusion={self.config.fusion!r}, uses_knowledge={self.config.uses_knowledge})")
        return {name: p for name, p in new.items() if name.startswith("interaction.")}

    def no_weight_decay(self) -> set[str]:
        """The learned prompts and the temperature: weight decay would pull them towards zero (timm's convention)."""
        return {"null_triplet", "null_state", "visual_prompts", "logit_scale"}

    def set_trainable(self, stage: int) -> dict[str, nn.Parameter]:
        """requires_grad on exactly the stage's parameters; returns them."""
        trainable = self.trainable_parameters(stage)
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in trainable)
        return trainable
