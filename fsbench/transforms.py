"""Image and mask preprocessing shared by every benchmark: decoding, resizing, normalisation."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fsbench.errors import FsbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255


# Pillow's 16-bit greyscale modes. Pillow itself reads 16-bit colour PNGs (48-bit RGB, 64-bit RGBA,
# 32-bit grey+alpha) as 8-bit by keeping each value's high byte; grey gets the same rule here.
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# 32-bit integer and float pixels have no agreed 8-bit reading (their range is the file's own), so they are refused.
WIDE_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def read_image(path: Path) -> Tensor:
    """[3, H, W] uint8 RGB. A missing, corrupt or truncated file raises a one-line FsbenchError.

    16-bit images (grey, RGB, RGBA) become 8-bit by their high byte (value >> 8); 32-bit integer or
    float images are refused in one line.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in WIDE_MODES:
                raise FsbenchError(
                    f"image {path} has {WIDE_MODES[image.mode]} pixels (mode {image.mode}); save it as 8- or 16-bit RGB or grey"
                )
            if image.mode in SIXTEEN_BIT_GREY_MODES:
                # convert("RGB") would clip every value above 255 to white.
                grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
                array = np.repeat(grey[:, :, None], 3, axis=2)
            else:
                array = np.asarray(image.convert("RGB"))  # convert() forces a full decode: truncation shows here
    except FileNotFoundError:
        raise FsbenchError(f"image file is missing: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise FsbenchError(f"cannot decode image {path}: corrupt or truncated ({error})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_label(path: Path) -> Tensor:
    """[H, W] int64 from a single-channel (or palette) PNG, values as stored."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as label:
            if label.mode not in ("L", "P", "I", "I;16", "1"):
                label = label.convert("L")
            array = np.array(label)
    except FileNotFoundError:
        raise FsbenchError(f"mask file is missing: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FsbenchError(f"cannot decode mask {path}: corrupt or truncated ({error})") from None
    return torch.from_numpy(array.astype("int64"))


class SquashResize:
    """HSNet preprocessing: squash to size x size, ImageNet normalisation.

    Call with image [3, H, W] uint8 and label [H, W] int64; returns image [3, S, S] float and
    label [S, S] int64 (nearest neighbour, so class ids and 255 survive).
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        size = (self.size, self.size)
        image = image.float().unsqueeze(0) / 255.0
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return normalise(image), label


class AspectResizePad:
    """PFENet preprocessing: the longer side to ``size``, aspect kept, padded to size x size.

    As PFENet's test_Resize: the shorter side is rounded down to a multiple of 8, the image sits in
    the top-left corner, padding is black before normalisation and 255 (ignore) in the label.
    Bilinear without antialiasing for the image (cv2.INTER_LINEAR), nearest for the label.
    Call with image [3, H, W] uint8 and label [H, W] int64; returns [3, S, S] float and [S, S] int64.
    """

    def __init__(self, size: int):
        self.size = size

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(new height, new width) of the image content inside the padded square (PFENet's find_new_hw)."""
        if height >= width:
            return self.size, max(8, int(width * self.size / height) // 8 * 8)
        return max(8, int(height * self.size / width) // 8 * 8), self.size

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        new_height, new_width = self.resized_shape(*label.shape[-2:])
        content = F.interpolate(image.float().unsqueeze(0) / 255.0, size=(new_height, new_width), mode="bilinear", align_corners=False)[0]
        padded_image = torch.zeros(3, self.size, self.size, dtype=content.dtype)
        padded_image[:, :new_height, :new_width] = content
        resized_label = F.interpolate(label[None, None].float(), size=(new_height, new_width), mode="nearest")[0, 0].long()
        padded_label = torch.full((self.size, self.size), IGNORE_LABEL, dtype=torch.int64)
        padded_label[:new_height, :new_width] = resized_label
        return normalise(padded_image), padded_label

    def scoring_label(self, label: Tensor) -> Tensor:
        """The original-size target PFENet scores on: the label in the top-left corner of a square of
        side max(H, W), the rest ignore. [H, W] -> [L, L]; the padded prediction resized to L x L
        lines up with it."""
        height, width = label.shape[-2:]
        side = max(height, width)
        canvas = torch.full((side, side), IGNORE_LABEL, dtype=label.dtype)
        canvas[:height, :width] = label
        return canvas


def normalise(image: Tensor) -> Tensor:
    """[3, H, W] float in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def denormalise(image: Tensor) -> Tensor:
    """Inverse of normalise, clamped to [0, 1]; for renders."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
