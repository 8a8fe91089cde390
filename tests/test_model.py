"""The action-aware model on CPU: tiny open_clip configs with random weights (and real ViT shapes, untrained)."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from torch.nn import functional as F

from model import ActionAwareCLIP, Knowledge, PromptConfig, build_model, contrastive_loss, triplet_loss
from model.action_clip import masked_block
from model.optim import decay_groups
from tasks.config import InputDataError, from_params
from tasks.train.model_files import prompt_model
from tests.conftest import PARAMS, params_with

EMBED = 32


def prompt_settings(**changes) -> dict:
    """params.yaml's prompt section, injecting half-way (null) unless told: the case with a prefix to cache."""
    return {**PARAMS["prompt"], "injection_layer": None, **changes}


def tiny_clip_config(**vision) -> dict:
    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 4, "head_width": 16} | vision
    return {"embed_dim": EMBED, "vision_cfg": vision_cfg,
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def tiny_model(seed: int = 0, clip_config: dict | None = None, **prompt) -> ActionAwareCLIP:
    torch.manual_seed(seed)
    return build_model({"clip": {"model": clip_config or tiny_clip_config()}, "prompt": prompt_settings(**prompt)})


def random_knowledge(counts: list[int], max_triplets: int = 4, embed: int = EMBED, seed: int = 1) -> Knowledge:
    """Captions with counts[b] triplets each; padding slots hold garbage that must be ignored."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(counts)
    mask = torch.arange(max_triplets)[None, :] < torch.tensor(counts)[:, None]
    slot_tokens = torch.randint(1, 49000, (batch, max_triplets, 3, 6), generator=generator)
    slot_tokens[..., 4:] = 0  # slots of different lengths
    return Knowledge(mask=mask, slot_tokens=slot_tokens,
                     states=F.normalize(torch.randn(batch, max_triplets, embed, generator=generator), dim=-1),
                     templates=F.normalize(torch.randn(batch, max_triplets, embed, generator=generator), dim=-1),
                     caption=F.normalize(torch.randn(batch, embed, generator=generator), dim=-1))


def images(batch: int, size: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("vision", [{}, {"pool_type": "avg"}, {"final_ln_after_pool": True}, {"patch_size": 16},
                                    {"no_ln_pre": True, "layers": 3}])
def test_without_knowledge_it_is_open_clips_encode_image(vision):
    model = tiny_model(clip_config=tiny_clip_config(**vision))
    batch = images(3)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(batch), model.clip.encode_image(batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("prompt", [{}, {"injection_layer": 0}, {"injection_layer": 3, "depth": 4},
                                    {"n_visual_prompts": 0}, {"use_states": False}, {"use_triplets": False},
                                    {"use_triplets": False, "use_states": False}, {"triplet_source": "template"},
                                    {"fusion": "concat"}])
def test_shapes_dtypes_and_conditioning(prompt):
    model = tiny_model(**prompt)
    knowledge = random_knowledge([2, 0, 4])
    features = model.encode_image(images(3), knowledge)
    assert features.shape == (3, EMBED) and features.dtype == torch.float32 and torch.isfinite(features).all()
    # The prompts change the image feature, and (when knowledge is used) a caption's knowledge changes it again.
    plain = model.encode_image(images(3))
    assert not torch.allclose(features, plain, atol=1e-4)
    other = model.encode_image(images(3), random_knowledge([2, 0, 4], seed=7))
    knowledge_matters = model.config.uses_knowledge
    assert torch.allclose(features[1], other[1], atol=1e-5)  # no knowledge either way: the null prompt
    assert torch.allclose(features[0], other[0], atol=1e-5) is not knowledge_matters


@pytest.mark.slow
def test_real_vit_configs_build_and_run():
    for name, size in (("ViT-B-32", 224), ("ViT-L-14-336", 336)):
        torch.manual_seed(0)
        model = build_model({"prompt": prompt_settings()}, open_clip.CLIP(**open_clip.get_model_config(name)))
        embed = model.clip.visual.output_dim
        layers = model.clip.visual.transformer.layers
        assert (model.injection_layer, model.depth) == (layers // 2, layers)
        with torch.no_grad():
            features = model.encode_image(images(1, size), random_knowledge([3], embed=embed))
        assert features.shape == (1, embed) and torch.isfinite(features).all()


def test_cached_prefix_equals_the_uncached_path():
    model = tiny_model(injection_layer=2)
    pictures = images(2)
    knowledge = random_knowledge([1, 3, 4, 0, 2, 2])
    candidates_of = torch.tensor([0, 0, 0, 1, 1, 1])  # three candidate captions per image
    with torch.no_grad():
        prefix = model.image_prefix(pictures)
        cached = model.encode_from_prefix(prefix.index(candidates_of), knowledge)
        uncached = model.encode_image(pictures[candidates_of], knowledge)
        text = F.normalize(torch.randn(6, EMBED), dim=-1)
        scores = model.score_from_prefix(prefix.index(candidates_of), knowledge, text)
    assert torch.allclose(cached, uncached, atol=1e-6, rtol=0)
    assert torch.allclose(scores, F.cosine_similarity(uncached, text), atol=1e-6)
    assert torch.allclose(model.score(pictures[candidates_of], knowledge, text), scores, atol=1e-6)


def test_padding_slots_and_k_from_0_to_max_do_not_change_a_caption():
    model = tiny_model()
    picture = images(1)
    knowledge = random_knowledge([2], max_triplets=4)
    with torch.no_grad():
        padded = model.encode_image(picture, knowledge)
        for k in range(2, 5):  # the same two triplets with 0..2 padding slots
            trimmed = Knowledge(knowledge.mask[:, :k], knowledge.slot_tokens[:, :k], knowledge.states[:, :k])
            assert torch.allclose(model.encode_image(picture, trimmed), padded, atol=1e-5)
        # No knowledge: K = 0 and an all-False mask of any K are the same null prompt.
        null = [model.encode_image(picture, random_knowledge([0], max_triplets=k, seed=k)) for k in range(0, 5)]
        for features in null[1:]:
            assert torch.allclose(features, null[0], atol=1e-5)
        assert not torch.allclose(null[0], padded, atol=1e-4)


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("grad", [False, True])  # nn.MultiheadAttention takes a fast path without gradients
def test_the_key_padding_mask_gives_the_dense_masks_results(block_type, grad):
    block = tiny_model(clip_config=tiny_clip_config(block_type=block_type)).clip.visual.transformer.resblocks[0]
    tokens = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    padding = torch.tensor([[False] * 5 + [True] * 2, [False] * 7, [False] * 4 + [True, False, True]])
    heads = 64 // 16
    # The form open_clip's blocks take: an additive (B·heads, L, L) mask, as this model built it before.
    dense = torch.zeros(padding.shape).masked_fill(padding, float("-inf"))[:, None, None, :].expand(-1, heads, 7, -1)
    with torch.set_grad_enabled(grad):
        expected = block(tokens, attn_mask=dense.reshape(3 * heads, 7, 7))
        assert torch.allclose(masked_block(block, tokens, padding), expected, atol=1e-5)
        assert not torch.allclose(block(tokens), expected, atol=1e-3)  # the mask matters


def test_batch_composition_does_not_leak_between_rows():
    model = tiny_model()
    knowledge = random_knowledge([1, 4, 0, 3])
    with torch.no_grad():
        together = model.encode_image(images(4), knowledge)
        alone = torch.cat([model.encode_image(images(4)[b:b + 1], knowledge.index(torch.tensor([b]))) for b in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def in_batch_loss(model: ActionAwareCLIP, pictures: torch.Tensor, knowledge: Knowledge, text: torch.Tensor) -> torch.Tensor:
    scores = F.normalize(model.encode_image(pictures, knowledge), dim=-1) @ text.T
    targets, valid = torch.arange(len(pictures)), torch.ones_like(scores, dtype=torch.bool)
    return (contrastive_loss(scores, targets, valid, model.logit_scale)
            + contrastive_loss(scores.T, targets, valid, model.logit_scale)) / 2


@pytest.mark.parametrize("stage", [1, 2])
def test_gradients_reach_exactly_the_stage_parameters(stage):
    model = tiny_model()
    trainable = model.set_trainable(stage)
    assert trainable and all(not name.startswith("clip.") for name in trainable)
    if stage == 2:
        assert set(trainable) == {n for n, _ in model.named_parameters() if n.startswith("interaction.")}
    else:
        assert set(trainable) == {n for n, _ in model.named_parameters() if not n.startswith("clip.")}
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    model.train()
    assert not model.clip.training  # the frozen backbone stays in eval mode
    # One caption without knowledge, so the null prompts take part too.
    loss = in_batch_loss(model, images(4), random_knowledge([0, 2, 3, 4]), F.normalize(torch.randn(4, EMBED), dim=-1))
    loss.backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    optimizer.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(trainable)


def test_stage_two_needs_an_interaction_module():
    with pytest.raises(ValueError, match="interaction module"):
        tiny_model(fusion="concat").trainable_parameters(2)
    with pytest.raises(ValueError, match="stage must be one of"):
        tiny_model().trainable_parameters(3)


def test_weight_decay_skips_gains_biases_prompts_and_the_temperature():
    model = tiny_model()
    trainable = model.set_trainable(1)
    plain, decayed = decay_groups(trainable.items(), 0.1, model.no_weight_decay())
    name_of = {id(parameter): name for name, parameter in trainable.items()}
    plain_names = {name_of[id(p)] for p in plain["params"]}
    decayed_names = {name_of[id(p)] for p in decayed["params"]}
    assert (plain["weight_decay"], decayed["weight_decay"]) == (0.0, 0.1)
    assert plain_names | decayed_names == set(trainable) and not plain_names & decayed_names
    assert {"null_triplet", "null_state", "visual_prompts", "logit_scale"} <= plain_names
    assert all(name.endswith("bias") or trainable[name].ndim < 2 or name in model.no_weight_decay()
               for name in plain_names)
    assert decayed_names and all(trainable[name].ndim == 2 and "bias" not in name for name in decayed_names)


@pytest.mark.parametrize("prompt, message", [
    ({"fusion": "sum"}, r"^params\.yaml: prompt\.fusion: 'sum' is not one of aim, concat$"),
    ({"mix_lambda": 1.5}, r"^params\.yaml: prompt\.mix_lambda: must be <= 1\.0, got 1\.5$"),
    ({"adapter_dims": 8}, r"^params\.yaml: prompt: unknown keys \['adapter_dims'\]"),
    ({"use_states": "yes"}, r"^params\.yaml: prompt\.use_states: must be true or false, got 'yes' \(str\)$")])
def test_bad_prompt_settings_are_named_where_params_are_read(prompt, message):
    with pytest.raises(InputDataError, match=message):
        from_params(PromptConfig, params_with(prompt=prompt))


@pytest.mark.parametrize("prompt, message", [
    ({"injection_layer": 4}, r"^params\.yaml: prompt\.injection_layer must be in \[0, 4\) for this model, got 4$"),
    ({"injection_layer": 2, "depth": 2}, r"^params\.yaml: prompt\.depth must be in \(2, 4\], got 2$")])
def test_prompt_settings_that_do_not_fit_the_backbone_are_one_line(prompt, message):
    clip = open_clip.CLIP(**tiny_clip_config())
    with pytest.raises(ValueError, match="prompt"):
        ActionAwareCLIP(clip, PromptConfig(**prompt_settings(**prompt)))
    with pytest.raises(InputDataError, match=message):
        prompt_model(clip, from_params(PromptConfig, params_with(prompt=prompt)))


@pytest.mark.parametrize("fusion", ["aim", "concat"])
def test_caption_prompts_condition_the_image_on_the_captions_text_feature_only(fusion):
    """TOMML's text-guided baseline: one prompt from g(t), whatever the triplets and states say."""
    model = tiny_model(use_triplets=False, use_states=False, use_caption=True, fusion=fusion)
    knowledge = random_knowledge([2, 0, 4])
    other_knowledge = random_knowledge([1, 3, 0], seed=7)
    same_caption = Knowledge(other_knowledge.mask, other_knowledge.slot_tokens, other_knowledge.states,
                             other_knowledge.templates, knowledge.caption)
    features = model.encode_image(images(3), knowledge)
    assert torch.allclose(features, model.encode_image(images(3), same_caption), atol=1e-6)
    assert not torch.allclose(features, model.encode_image(images(3), other_knowledge), atol=1e-4)
    assert model.triplet_encoder is None and model.null_triplet is None and model.null_state is None
    with pytest.raises(ValueError, match="knowledge.caption"):
        model.encode_image(images(1), Knowledge(knowledge.mask[:1], states=knowledge.states[:1]))


def test_caption_prompts_replace_the_knowledge_prompts():
    with pytest.raises(InputDataError, match=r"^params\.yaml: prompt: use_caption replaces the knowledge prompts"):
        from_params(PromptConfig, params_with(prompt={"use_caption": True}))


def test_missing_knowledge_parts_are_named():
    model = tiny_model(triplet_source="template")
    knowledge = random_knowledge([2])
    with pytest.raises(ValueError, match="templates"):
        model.encode_image(images(1), Knowledge(knowledge.mask, knowledge.slot_tokens, knowledge.states))
    with pytest.raises(ValueError, match=r"knowledge.states has shape"):
        Knowledge(knowledge.mask, states=torch.zeros(1, 3, EMBED))


def test_a_tiny_model_overfits_a_handful_of_triples():
    """Four identical images told apart only through their captions' knowledge: stage 1 must learn to use it."""
    model = tiny_model()
    trainable = model.set_trainable(1)
    pictures = images(1).expand(4, -1, -1, -1)
    knowledge = random_knowledge([1, 2, 3, 4])
    text = F.normalize(torch.randn(4, EMBED, generator=torch.Generator().manual_seed(3)), dim=-1)
    optimizer = torch.optim.AdamW(trainable.values(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(80):
        optimizer.zero_grad()
        loss = in_batch_loss(model, pictures, knowledge, text)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        similarity = F.normalize(model.encode_image(pictures, knowledge), dim=-1) @ text.T
    assert losses[-1] < 0.1 * losses[0]
    assert torch.equal(similarity.argmax(dim=1), torch.arange(4))


def test_losses_against_hand_computed_values():
    scores = torch.tensor([[0.9, 0.2, 0.8], [0.1, 0.5, 0.4]])
    target = torch.tensor([0, 1])
    valid = torch.tensor([[True, True, False], [True, True, True]])  # row 0: column 2 is not a negative
    scale = torch.tensor(0.0)  # exp(0) = 1
    expected = (-(torch.log_softmax(torch.tensor([0.9, 0.2]), 0)[0])
                - torch.log_softmax(torch.tensor([0.1, 0.5, 0.4]), 0)[1]) / 2
    assert torch.isclose(contrastive_loss(scores, target, valid, scale), expected)
    # Hardest valid negative: row 0 -> 0.2 (0.8 is excluded), row 1 -> 0.4; margin 0.2.
    expected_triplet = (max(0.2 - 0.9 + 0.2, 0) + max(0.4 - 0.5 + 0.2, 0)) / 2
    assert triplet_loss(scores, target, valid, 0.2).item() == pytest.approx(expected_triplet)
    only_positive = torch.tensor([[True, False, False], [True, True, True]])
    assert triplet_loss(scores, target, only_positive, 0.2).item() == pytest.approx(max(0.4 - 0.5 + 0.2, 0) / 2)
    with pytest.raises(ValueError, match="do not fit"):
        triplet_loss(scores, target[:1], valid, 0.2)
