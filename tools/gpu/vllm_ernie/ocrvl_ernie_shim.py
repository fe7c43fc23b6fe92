"""The config and processor classes vLLM 0.26's ERNIE-4.5-VL model asks for, written for ocrvl's
side-by-side runs on a GPU host without network.

vLLM's `ernie45_vl` reads Baidu's hub config (flat: `moe_num_experts` as a list,
`spatial_conv_size`, `vision_config.embed_dim`, ...) and calls Baidu's hub processor, both
remote code that ships with `baidu/ERNIE-4.5-VL-28B-A3B-PT` (transformers' native classes use
other names). A synthetic directory has neither, so `prepare_vllm_ernie_dir.py` copies this
file beside the config and points `auto_map` at these classes; vLLM then loads them with
`trust_remote_code=True` as it would load Baidu's. What vLLM uses of them:
- the config: every key of the flat file as an attribute, `vision_config` with attribute
  access, `rope_parameters` with the `mrope_section` vLLM keys its 3D positions on
  ([h, w, t] = [22, 22, 20] for head_dim 128 and freq_allocation 20), `image_token_id`;
- the processor: `spatial_conv_size`, `temporal_conv_size`, `image_processor` (`size` with
  `min_pixels` / `max_pixels`, `image_mean`, `image_std`, `rescale_factor`), and a call on
  (text, images) returning `input_ids` with each `<|image@placeholder|>` expanded to the
  image's `<|IMAGE_PLACEHOLDER|>` tokens, `images` (raw 0-255 patch rows: vLLM rescales and
  normalises them itself) and `grid_thw`.

Pixels follow docs/ERNIE_4_5_VL_SPEC.md section 5: vLLM's own smart_resize (factor 28), a
bicubic resize, 14x14 patches flattened (c, ky, kx), rows in 2x2 merge-block order.
"""
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PretrainedConfig
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_MARK = "<|image@placeholder|>"
IMAGE_TOKEN = "<|IMAGE_PLACEHOLDER|>"


def _set_all(obj, values):
    for key, value in values.items():
        try:
            setattr(obj, key, value)
        except (AttributeError, TypeError):
            pass


class ErnieVLShimVisionConfig(PretrainedConfig):
    model_type = "ernie_vl_shim_vision"

    def __init__(self, depth=32, embed_dim=1280, hidden_size=1280, num_heads=16, mlp_ratio=4,
                 hidden_act="quick_gelu", in_channels=3, patch_size=14, spatial_merge_size=2, **kwargs):
        own = dict(depth=depth, embed_dim=embed_dim, hidden_size=hidden_size, num_heads=num_heads,
                   mlp_ratio=mlp_ratio, hidden_act=hidden_act, in_channels=in_channels,
                   patch_size=patch_size, spatial_merge_size=spatial_merge_size)
        try:
            super().__init__(**kwargs)
        except TypeError:
            super().__init__()
        _set_all(self, kwargs)
        _set_all(self, own)


class ErnieVLShimConfig(PretrainedConfig):
    model_type = "ernie4_5_moe_vl"
    ignore_keys_at_rope_validation = {"mrope_section"}

    def __init__(self, vision_config=None, **kwargs):
        flat = dict(kwargs)
        try:
            super().__init__(**kwargs)
        except TypeError:
            super().__init__()
        _set_all(self, flat)
        if isinstance(vision_config, ErnieVLShimVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = ErnieVLShimVisionConfig(**(vision_config or {}))
        head_dim = flat.get("head_dim") or flat.get("hidden_size", 2560) // flat.get("num_attention_heads", 20)
        t_rope = flat.get("freq_allocation", 20)
        hw_rope = (head_dim // 2 - t_rope) // 2
        if not isinstance(getattr(self, "rope_parameters", None), dict) or "mrope_section" not in self.rope_parameters:
            self.rope_parameters = {"rope_type": "default", "rope_theta": float(flat.get("rope_theta", 500000.0)),
                                    "mrope_section": [hw_rope, hw_rope, t_rope]}
        if "im_patch_id" in flat:
            self.image_token_id = flat["im_patch_id"]
        dtype = getattr(self, "dtype", None) or flat.get("torch_dtype")
        if isinstance(dtype, str):
            self.dtype = getattr(torch, dtype)

    def to_dict(self):
        out = super().to_dict()
        if isinstance(out.get("vision_config"), PretrainedConfig):
            out["vision_config"] = out["vision_config"].to_dict()
        return out


class ErnieVLShimImageProcessor:
    """What vLLM reads of an image processor, and the pixels of section 5."""

    def __init__(self, cfg):
        self.size = {"min_pixels": int(cfg["min_pixels"]), "max_pixels": int(cfg["max_pixels"])}
        self.image_mean = list(cfg["image_mean"])
        self.image_std = list(cfg["image_std"])
        self.rescale_factor = float(cfg["rescale_factor"])
        self.patch_size = int(cfg.get("patch_size", 14))
        self.merge_size = int(cfg.get("merge_size", 2))

    def patches(self, image):
        """Raw patch rows `[h/14 * w/14, 3*14*14]` (float32, 0-255) and the grid (1, h/14, w/14)."""
        from vllm.model_executor.models.ernie45_vl import smart_resize

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        p, m = self.patch_size, self.merge_size
        h, w = smart_resize(image.height, image.width, factor=p * m,
                            min_pixels=self.size["min_pixels"], max_pixels=self.size["max_pixels"])
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.BICUBIC)
        px = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)  # [3, h, w]
        gh, gw = h // p, w // p
        # [3, gh/m, m, p, gw/m, m, p] -> [gh/m, gw/m, m, m, 3, p, p]: merge blocks, then (c, ky, kx).
        x = px.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        return np.ascontiguousarray(x.reshape(gh * gw, 3 * p * p)), (1, gh, gw)


class ErnieVLShimProcessor(ProcessorMixin):
    attributes = []

    def __init__(self, tokenizer, image_processor, spatial_conv_size=2, temporal_conv_size=2):
        # ProcessorMixin's own constructor checks its attribute list against transformers'
        # processor classes; this one holds plain attributes instead.
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spatial_conv_size = spatial_conv_size
        self.temporal_conv_size = temporal_conv_size
        self.chat_template = None

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        import json
        import os

        tokenizer = AutoTokenizer.from_pretrained(path)
        with open(os.path.join(path, "preprocessor_config.json")) as f:
            pre = json.load(f)
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        return cls(tokenizer, ErnieVLShimImageProcessor(pre), cfg.get("spatial_conv_size", 2),
                   cfg.get("temporal_conv_size", 2))

    def __call__(self, text=None, images=None, videos=None, return_tensors="pt", **kwargs):
        if videos:
            raise ValueError("ocrvl's vLLM shim takes images only")
        texts = [text] if isinstance(text, str) else list(text or [""])
        images = list(images or [])
        rows, grids = [], []
        for image in images:
            r, g = self.image_processor.patches(image)
            rows.append(r)
            grids.append(g)
        merge = self.spatial_conv_size ** 2
        ids = []
        k = 0
        for t in texts:
            pieces = t.split(IMAGE_MARK)
            out = pieces[0]
            for piece in pieces[1:]:
                if k >= len(grids):
                    raise ValueError(f"more {IMAGE_MARK} marks than images ({len(grids)})")
                out += IMAGE_TOKEN * (int(np.prod(grids[k])) // merge) + piece
                k += 1
            ids.append(self.tokenizer(out, add_special_tokens=False)["input_ids"])
        if k != len(grids):
            raise ValueError(f"{len(grids)} images for {k} {IMAGE_MARK} marks")
        if len({len(i) for i in ids}) > 1:
            raise ValueError("the shim takes one text per call, or texts of one length")
        data = {"input_ids": torch.tensor(ids, dtype=torch.long)}
        if rows:
            data["images"] = torch.from_numpy(np.concatenate(rows))
            data["grid_thw"] = torch.tensor(grids, dtype=torch.long)
        else:
            data["images"] = None
            data["grid_thw"] = None
        return BatchFeature(data)
