"""Action-aware multi-modal prompt tuning on a frozen open_clip CLIP: torch modules only, no file or network I/O."""
from model.action_clip import ActionAwareCLIP, ImagePrefix
from model.config import PromptConfig
from model.factory import build_model
from model.knowledge import Knowledge
from model.losses import contrastive_loss, triplet_loss
from model.objective import Batch, Objective

__all__ = ["ActionAwareCLIP", "Batch", "ImagePrefix", "Knowledge", "Objective", "PromptConfig", "build_model",
           "contrastive_loss", "triplet_loss"]
