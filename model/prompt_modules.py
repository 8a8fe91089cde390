"""The learned modules that turn action knowledge into visual prompts (paper section 3.3)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SLOTS = 3  # subject, action, object


class TripletEncoder(nn.Module):
    """Triplet prompts p_t: each slot's frozen CLIP word embeddings (mean over its tokens), the three slots
    concatenated, projected to d, then a small transformer over the K triplets of a caption (eq. 4-5)."""

    def __init__(self, token_width: int, embed_dim: int, layers: int, heads: int):
        super().__init__()
        self.projection = nn.Linear(SLOTS * token_width, embed_dim)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=4 * embed_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        # Nested tensors would make padded rows depend on the batch's padding: keep plain tensors.
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def embed_slots(self, slot_word_embeddings: torch.Tensor, slot_tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, S, w) word embeddings and their (B, K, 3, S) ids -> (B, K, d) triplet embeddings e_Δ."""
        present = (slot_tokens != 0).unsqueeze(-1).to(slot_word_embeddings.dtype)
        pooled = (slot_word_embeddings * present).sum(3) / present.sum(3).clamp(min=1.0)
        return self.projection(pooled.flatten(2))

    def forward(self, triplets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, K, d) triplet embeddings, (B, K) validity -> (B, K, d) contextualised triplet prompts."""
        return self.transformer(triplets, src_key_padding_mask=~mask)


class PromptAdapter(nn.Module):
    """p_0 = ReLU(LN(p) · W_down) · W_up: from the text space d to the visual transformer's width (eq. 6)."""

    def __init__(self, embed_dim: int, bottleneck: int, visual_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.down = nn.Linear(embed_dim, bottleneck)
        self.up = nn.Linear(bottleneck, visual_width)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(self.norm(prompts))))


class AdaptiveInteraction(nn.Module):
    """Action-aware adaptive interaction module (AIM, eq. 7-8).

    Each prompt stream (triplets, states) attends to the patch embeddings E_0 (cross-attention), then to
    itself (self-attention, keeping its attention matrix A). V = MLP of the streams' outputs concatenated;
    Ṽ = (Σ_s w_s·A_s)·V with weights (λ, 1-λ) for (triplets, states), or 1 for a single stream.
    """

    def __init__(self, width: int, heads: int, stream_weights: tuple[float, ...]):
        super().__init__()
        self.stream_weights = stream_weights
        self.query_norm = nn.LayerNorm(width)
        self.patch_norm = nn.LayerNorm(width)
        self.cross_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(len(stream_weights) * width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, streams: list[torch.Tensor], patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """streams: (B, K, W) each; patches: (B, M, W); mask: (B, K) -> Ṽ (B, K, W)."""
        if len(streams) != len(self.stream_weights):
            raise ValueError(f"expected {len(self.stream_weights)} prompt streams, got {len(streams)}")
        keys = self.patch_norm(patches)
        values, mixed_attention = [], 0.0
        for stream, weight in zip(streams, self.stream_weights):
            attended = stream + self.cross_attention(self.query_norm(stream), keys, keys, need_weights=False)[0]
            normed = self.self_norm(attended)
            output, attention = self.self_attention(normed, normed, normed, key_padding_mask=~mask,
                                                    need_weights=True, average_attn_weights=True)
            values.append(attended + output)
            mixed_attention = mixed_attention + weight * attention
        return mixed_attention @ self.mlp(torch.cat(values, dim=-1))
