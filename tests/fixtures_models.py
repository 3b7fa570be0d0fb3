"""Model fixtures: tiny ViT and CLIP backbones saved to a temporary folder."""
