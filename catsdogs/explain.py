"""Where the network looked: a Grad-CAM heatmap (Captum's LayerGradCam) over a photo, for one class.

Grad-CAM weighs a convolution's feature maps by how much each one raises the class's score, and keeps the
positive part: the regions that made the network say that class. It is taken at the fourth block's convolution
(a 24×24 grid over the 224×224 input); the last convolution's 10×10 grid marked one or two blobs on our photos,
the fourth block's outlines eyes, ears and fur.
"""

import copy
import threading

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

from catsdogs.model import CatsDogsCNN, network_input
from catsdogs.preprocess import PhotoSource, open_rgb, photo_to_uint8, upright_rgb

HEATMAP_SIDE = 512  # the longest side of the picture the heatmap is drawn over
# The colour's opacity is HEATMAP_OPACITY * sqrt(heat): strong where the network looked hardest, fading out where it
# did not look, so the photo stays readable (a uniform 50% blend hid it; a linear fade hid all but the peaks).
HEATMAP_OPACITY = 0.75
COLOURS = matplotlib.colormaps["jet"]  # blue (a little) to red (most): how Grad-CAM heatmaps are usually drawn


class Explainer:
    """Grad-CAM on its own float32 copy of the model, so its hooks never touch the model that serves predictions,
    one photo at a time (the hooks and the saved activations are per model)."""

    def __init__(self, model: CatsDogsCNN) -> None:
        self.model = copy.deepcopy(model).float().eval()
        self.device = next(self.model.parameters()).device
        self.gradcam = LayerGradCam(self.model, self.model.blocks[3][0])
        self.lock = threading.Lock()

    def heatmap(self, image: torch.Tensor, class_name: str, size: tuple[int, int]) -> np.ndarray:
        """A (3, S, S) uint8 photo -> where the network looked for `class_name`, (height, width) in 0..1; zero
        outside the centred crop it sees (config.json's crop_pct)."""
        batch = network_input(self.model, image[None].to(self.device)).requires_grad_()
        with self.lock:
            attribution = self.gradcam.attribute(batch, target=self.model.class_names.index(class_name),
                                                 relu_attributions=True)
        width, height = size
        seen = (round(height * self.model.crop_pct), round(width * self.model.crop_pct))
        heat = LayerAttribution.interpolate(attribution.detach().float(), seen, interpolate_mode="bilinear")
        top, left = (height - seen[0]) // 2, (width - seen[1]) // 2
        heat = torch.nn.functional.pad(heat, (left, width - seen[1] - left, top, height - seen[0] - top))
        heat = heat[0, 0].clamp_(min=0).cpu().numpy()
        return heat / heat.max() if heat.max() > 0 else heat  # all zero: nothing in the photo spoke for the class

    def overlay(self, photo: PhotoSource, class_name: str) -> Image.Image:
        """The photo (longest side HEATMAP_SIDE) with the heatmap for `class_name` drawn over it."""
        if isinstance(photo, Image.Image):
            picture = upright_rgb(photo, at_least=HEATMAP_SIDE, keep_aspect=True)
        else:
            picture = open_rgb(photo, draft_size=HEATMAP_SIDE, keep_aspect=True)
        picture.thumbnail((HEATMAP_SIDE, HEATMAP_SIDE))
        heat = self.heatmap(photo_to_uint8(picture, self.model.image_size), class_name, picture.size)
        colour = Image.fromarray((COLOURS(heat)[..., :3] * 255).astype(np.uint8))
        mask = Image.fromarray((np.sqrt(heat) * HEATMAP_OPACITY * 255).astype(np.uint8))
        return Image.composite(colour, picture, mask)

