"""The CLIP family's classifier: CLIP's image embedding, scaled to unit RMS, under a linear head.

Vision tower -> pooled [CLS] -> ``visual_projection`` (when the checkpoint has one) ->
L2-normalised and scaled to unit RMS -> linear head. The head therefore lives in CLIP's image-text
space, which is what makes the zero-shot head (and ``head_init="text"``) an exact fold of CLIP's
text embeddings into the head weights. Its module names equal those of
``CLIPVisionModelWithProjection``, so a saved adapter loads onto that plain transformers class
(see ``wrapper.plain_peft_snippet``). ``families.CLIPClassifierLoader`` loads it.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel


class EmoSetCLIPForImageClassification(CLIPVisionModelWithProjection):
    """CLIP vision tower + ``visual_projection`` + a linear head on the unit-RMS image embedding.

    ``features = normalize(visual_projection(pooled CLS)) * sqrt(dim)``: the image embedding scaled
    to unit root-mean-square, so a randomly initialised head trains at the same pace as on ViT's
    layer-normed [CLS], and the zero-shot head is the text embeddings times
    ``logit_scale / sqrt(dim)``. ``config.emoset_use_projection=False`` (vision-only checkpoints
    without a projection) makes ``visual_projection`` the identity.
    """

    def __init__(self, config: CLIPVisionConfig):
        CLIPPreTrainedModel.__init__(self, config)
        self.vision_model = CLIPVisionModel._from_config(config)
        if getattr(config, "emoset_use_projection", True):
            self.visual_projection = nn.Linear(
                config.hidden_size, config.projection_dim, bias=False
            )
            feature_dim = config.projection_dim
        else:
            self.visual_projection = nn.Identity()
            feature_dim = config.hidden_size
        self.classifier = nn.Linear(feature_dim, config.num_labels)
        self.post_init()

    def image_features(self, pixel_values, interpolate_pos_encoding=False, **kwargs):
        """The unit-RMS image embedding the head reads, and the vision tower's outputs."""
        outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        embeds = self.visual_projection(outputs.pooler_output)
        return F.normalize(embeds, dim=-1) * math.sqrt(embeds.shape[-1]), outputs

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False, **kwargs):
        features, outputs = self.image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def clip_vision_config(config: PretrainedConfig, projection: bool) -> CLIPVisionConfig:
    """The classifier's config from a CLIPModel, CLIPVisionModel[WithProjection] config."""
    if isinstance(config, CLIPConfig):
        vision = CLIPVisionConfig(**config.vision_config.to_dict())
        # The projection width lives on the top-level config of a full CLIP checkpoint.
        vision.projection_dim = config.projection_dim
    else:
        vision = CLIPVisionConfig(**config.to_dict())
    vision.emoset_use_projection = projection
    vision.architectures = [EmoSetCLIPForImageClassification.__name__]
    return vision
