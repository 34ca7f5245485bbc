"""Running the network: batched logits over decoded photos, with the precision each device does best."""

from contextlib import AbstractContextManager

import torch

from catsdogs.model import CatsDogsCNN
from catsdogs.preprocess import normalize


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 (fp16 on GPUs without bf16) mixed precision on CUDA; plain fp32 on the CPU, where it is fastest."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def predict_logits(model: CatsDogsCNN, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 photos (N, 3, S, S), on any device -> float32 logits (N, classes) on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    with autocast(device):
        for batch in images.split(batch_size):
            outputs.append(model(normalize(batch.to(device, non_blocking=True), model.mean, model.std)).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty((0, len(model.class_names)), device=device)
