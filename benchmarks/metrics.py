"""Image-quality metrics of ``benchmarks/paper_tables.py``: FID and Inception Score (DiT), CLIP score (SD).

FID and IS go through torchmetrics' ``FrechetInceptionDistance`` / ``InceptionScore`` with an explicit
feature module (both accept an ``nn.Module``):

- ``"inception"``: the standard FID network, torch-fidelity's ``inception-v3-compat`` (TF-ported
  InceptionV3 weights ``weights-inception-2015-12-05-6726825d.pth``) through torchmetrics'
  ``NoTrainInceptionV3``: the 2048-d pool features for FID, the 1008 ``logits_unbiased`` for IS. It
  needs the ``metrics`` extra (torchmetrics, torch-fidelity, and therefore torchvision) and, on an
  offline node, the local weights file (``inception_weights``). Images are resized to 299 with
  TensorFlow-1.x-compatible bilinear interpolation (``antialias=False``), the resize the original
  FID / ADM evaluation used, rather than torchmetrics' antialiased default.
- ``"tiny-random"``: a small random conv net (seeded), a smoke-test stand-in with no torchvision and
  no weights; its FID / IS are meaningless and are labelled so (``FeatureExtractors.meaningless``).
- ``"patches"``: ``benchmarks.quality.PatchFeatures``, the fixed whitened pixel + high-pass PCA space of
  the ``patches`` model's 32x32 crops (offline, no weights to fetch): the FID column is then that
  model's Fréchet distance (``benchmarks/quality.py``); it has no classifier, so no Inception Score.

CLIP score is computed here with transformers' ``CLIPModel`` (torchmetrics' ``CLIPScore`` crashes with
transformers 5.x: "'BaseModelOutputWithPooling' object has no attribute 'norm'"). The definition is
torchmetrics' / Hessel et al.'s: per image ``100 * max(cos(image_embedding, text_embedding), 0)``,
averaged over images. Images are preprocessed as ``CLIPImageProcessor`` does (shortest side resized
to the model's input size, bicubic, then a centre crop and OpenAI CLIP's mean/std), in torch.
``clip_model="tiny"`` builds a tiny random ``CLIPModel`` from a config (meaningless, labelled so).

Reference images for FID (``load_reference``): a folder of images (png/jpg/jpeg/webp/bmp, searched
recursively), an ``.npz`` holding ``arr_0`` uint8 ``(N, H, W, 3)`` (the ADM / DiT sample and
reference-batch format); if the npz also holds ``mu`` and ``sigma`` of the feature extractor's
dimension (ADM's reference batches: statistics of the whole training set) those statistics are used
instead of the images; ``"patch-crops"``: ``PATCH_REFERENCE_COUNT`` real 32x32 crops of the ``patches``
model's photos (``benchmarks.quality``'s real reference seed); or ``"random"``: seeded uniform-noise
images, a smoke-test stand-in (meaningless).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
from torch import nn

if TYPE_CHECKING:
    from benchmarks.quality import PatchFeatures

__all__ = ["CLIPScorer", "FeatureExtractors", "ImageQuality", "ReferenceStats", "TinyRandomFeatures",
           "build_feature_extractors", "load_reference", "pil_to_uint8"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_REFERENCE_COUNT = 16
PATCH_REFERENCE_COUNT = 2000  # real crops of the "patch-crops" reference
PATCH_SIZE = 32  # the patches model's image side


def pil_to_uint8(images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """PIL images of one size to a uint8 ``(N, 3, H, W)`` tensor (RGB)."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class TinyRandomFeatures(nn.Module):
    """A small seeded random conv net on uint8 images: a stand-in feature extractor for smoke tests.

    Its outputs carry no information about image quality; FID / IS computed with it are meaningless.

    Args:
        num_outputs: output width (FID features, or IS logits).
        seed: weight seed (same seed, same network).
    """

    def __init__(self, num_outputs: int, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_outputs))
        self.num_features = num_outputs
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` -> float ``(N, num_outputs)``."""
        return self.net(images.float() / 127.5 - 1)


class PatchFeatureModule(nn.Module):
    """``benchmarks.quality.PatchFeatures`` as a feature module of uint8 ``(N, 3, H, W)`` images.

    The features are ``PatchFeatures``' own (computed on the CPU in float64). Images of another size
    are area-resized to the crops' 32x32 first (torchmetrics probes a module with one 299x299 image).
    """

    def __init__(self, features: "PatchFeatures"):
        super().__init__()
        self.features = features
        # load_reference and torchmetrics find a module's device from its parameters: an empty one says it
        self.device_marker = nn.Parameter(torch.zeros(0, dtype=torch.float64), requires_grad=False)
        self.num_features = int(features.pixel_projection.shape[1] + features.detail_projection.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.double() / 127.5 - 1.0
        if x.shape[-1] != PATCH_SIZE or x.shape[-2] != PATCH_SIZE:
            x = nn.functional.adaptive_avg_pool2d(x, PATCH_SIZE)
        return torch.from_numpy(self.features(x)).to(images.device)


@dataclass
class FeatureExtractors:
    """The FID and IS feature modules of one run.

    Attributes:
        name: ``"inception"``, ``"patches"`` or ``"tiny-random"``.
        fid: module mapping uint8 ``(N, 3, H, W)`` to ``(N, D)`` features.
        isc: module mapping uint8 ``(N, 3, H, W)`` to ``(N, C)`` class logits; None: no Inception Score.
        meaningless: True for the random stand-in.
    """

    name: str
    fid: nn.Module
    isc: nn.Module | None
    meaningless: bool

    @property
    def num_features(self) -> int:
        """D, the FID feature width."""
        return int(self.fid.num_features) if hasattr(self.fid, "num_features") else 2048


def build_feature_extractors(name: str, inception_weights: str | None = None,
                             device: torch.device | str = "cpu") -> FeatureExtractors:
    """Build the FID / IS feature modules.

    Args:
        name: ``"inception"`` (torch-fidelity's InceptionV3 via torchmetrics), ``"patches"`` (the patches
            model's fixed PCA space, FID only) or ``"tiny-random"``.
        inception_weights: local path of ``weights-inception-2015-12-05-6726825d.pth`` (needed
            offline; None lets torch-fidelity download it).
        device: where the modules run.

    Raises:
        ValueError: an unknown name, or a weights path that does not exist.
        ModuleNotFoundError: ``"inception"`` without torch-fidelity installed (the ``metrics`` extra).
    """
    if name == "tiny-random":
        return FeatureExtractors(name, TinyRandomFeatures(16, seed=0).to(device),
                                 TinyRandomFeatures(10, seed=1).to(device), meaningless=True)
    if name == "patches":
        from benchmarks.quality import PatchFeatures

        return FeatureExtractors(name, PatchFeatureModule(PatchFeatures.default()).to(device), None, meaningless=False)
    if name != "inception":
        raise ValueError(f"feature extractor: expected 'inception', 'patches' or 'tiny-random', got {name!r}")
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise ValueError(f"--inception_weights: no file at {inception_weights}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    def inception(feature: str) -> nn.Module:
        module = NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature],
                                    feature_extractor_weights_path=inception_weights, antialias=False)
        module.num_features = 2048 if feature == "2048" else 1008
        return module.to(device)

    return FeatureExtractors(name, inception("2048"), inception("logits_unbiased"), meaningless=False)


@dataclass
class ReferenceStats:
    """Sufficient statistics of the real images' features, as torchmetrics' FID state holds them.

    Attributes:
        features_sum: float64 ``(D,)``, sum of features.
        features_cov_sum: float64 ``(D, D)``, sum of outer products.
        num_samples: N.
        source: where they came from (for the report).
        meaningless: True for the ``"random"`` stand-in reference.
    """

    features_sum: torch.Tensor
    features_cov_sum: torch.Tensor
    num_samples: int
    source: str
    meaningless: bool = False

    @classmethod
    def from_moments(cls, mu: np.ndarray, sigma: np.ndarray, source: str, num_samples: int = 50_000) -> "ReferenceStats":
        """From a mean and covariance (e.g. ADM's reference ``mu`` / ``sigma``); ``num_samples`` only sets the weights."""
        mu_t, sigma_t = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
        n = num_samples
        return cls(mu_t * n, sigma_t * (n - 1) + n * torch.outer(mu_t, mu_t), n, source)


def _folder_batches(folder: Path, batch_size: int) -> Iterator[torch.Tensor]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--reference_images: no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    pending: list[PIL.Image.Image] = []
    for path in paths:
        with PIL.Image.open(path) as image:
            image = image.convert("RGB")
        if pending and (image.size != pending[0].size or len(pending) == batch_size):
            yield pil_to_uint8(pending)
            pending = []
        pending.append(image)
    yield pil_to_uint8(pending)


def load_reference(spec: str, extractors: FeatureExtractors, batch_size: int = 64,
                   image_size: int = 64) -> ReferenceStats:
    """Features statistics of the reference (real) images for FID.

    Args:
        spec: an image folder, an ``.npz`` (``arr_0`` uint8 NHWC; or ``mu`` / ``sigma`` of the
            extractor's width, preferred when present), ``"patch-crops"`` (real crops of the patches
            model's photos), or ``"random"`` (seeded noise images of ``image_size``, a meaningless
            smoke-test stand-in).
        extractors: the run's feature modules (their ``fid`` module is used).
        batch_size: images per feature pass.
        image_size: side of the ``"random"`` images.
    """
    fid = extractors.fid
    device = next(fid.parameters()).device
    width = extractors.num_features
    total = torch.zeros(width, dtype=torch.float64)
    cov = torch.zeros(width, width, dtype=torch.float64)
    count = 0

    def add(images: torch.Tensor) -> None:
        nonlocal total, cov, count
        with torch.no_grad():
            f = fid(images.to(device)).double().cpu().reshape(images.shape[0], -1)
        total += f.sum(0)
        cov += f.t() @ f
        count += images.shape[0]

    if spec == "random":
        generator = torch.Generator().manual_seed(1234)
        images = torch.randint(0, 256, (RANDOM_REFERENCE_COUNT, 3, image_size, image_size), generator=generator,
                               dtype=torch.uint8)
        for start in range(0, len(images), batch_size):
            add(images[start:start + batch_size])
        return ReferenceStats(total, cov, count, "random (uniform noise images: meaningless)", meaningless=True)
    if spec == "patch-crops":
        from benchmarks.quality import REAL_SEED
        from training.train_patches import real_crops

        crops = ((real_crops(PATCH_REFERENCE_COUNT, REAL_SEED) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for start in range(0, len(crops), batch_size):
            add(crops[start:start + batch_size])
        return ReferenceStats(total, cov, count, f"{count} real 32x32 crops of the patches photos (seed {REAL_SEED})")
    path = Path(spec)
    if path.is_dir():
        for images in _folder_batches(path, batch_size):
            add(images)
    elif path.is_file() and path.suffix == ".npz":
        with np.load(path) as data:
            if "mu" in data and "sigma" in data and data["mu"].shape == (width,):
                return ReferenceStats.from_moments(data["mu"], data["sigma"], f"{path} (mu/sigma)")
            if "arr_0" not in data:
                raise ValueError(f"--reference_images: {path} holds neither arr_0 nor mu/sigma of width {width}")
            array = data["arr_0"]
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"--reference_images: arr_0 must be uint8 (N, H, W, 3), got {array.dtype} {array.shape}")
        for start in range(0, len(array), batch_size):
            add(torch.from_numpy(array[start:start + batch_size]).permute(0, 3, 1, 2).contiguous())
    else:
        raise ValueError(f"--reference_images: {spec} is neither a folder, an .npz nor 'random'")
    if count < 2:
        raise ValueError("--reference_images: FID needs at least 2 reference images")
    return ReferenceStats(total, cov, count, str(path))


class ImageQuality:
    """FID (against fixed reference statistics) and Inception Score of one method's generated images.

    Args:
        extractors: the run's feature modules.
        reference: the real images' statistics, or None (FID then reported as None).
    """

    def __init__(self, extractors: FeatureExtractors, reference: ReferenceStats | None):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        warnings.filterwarnings("ignore", message="Metric `InceptionScore` will save all extracted features")

        self.fid = None
        if reference is not None:
            self.fid = FrechetInceptionDistance(feature=extractors.fid, reset_real_features=False)
            self.fid.real_features_sum = reference.features_sum.clone().to(self.fid.real_features_sum.device)
            self.fid.real_features_cov_sum = reference.features_cov_sum.clone().to(self.fid.real_features_sum.device)
            self.fid.real_features_num_samples = torch.tensor(reference.num_samples, dtype=torch.long,
                                                              device=self.fid.real_features_sum.device)
        self.isc = None if extractors.isc is None else InceptionScore(feature=extractors.isc)
        self.device = next(extractors.fid.parameters()).device
        self.count = 0

    def update(self, images: torch.Tensor) -> None:
        """Add generated images, uint8 ``(N, 3, H, W)``."""
        images = images.to(self.device)
        with torch.no_grad():
            if self.fid is not None:
                self.fid.update(images, real=False)
            if self.isc is not None:
                self.isc.update(images)
        self.count += images.shape[0]

    def compute(self, seed: int = 0) -> dict[str, float | None]:
        """``fid`` (None without a reference or with fewer than 2 images), ``is_mean``, ``is_std`` (None
        without a classifier).

        IS uses ``min(10, N)`` splits (10 is the standard) and a seeded shuffle.
        """
        out: dict[str, float | None] = dict(fid=None, is_mean=None, is_std=None)
        if self.fid is not None and self.count >= 2:
            out["fid"] = float(self.fid.compute())
        if self.count >= 1 and self.isc is not None:
            self.isc.splits = max(1, min(10, self.count))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                mean, std = self.isc.compute()
            out["is_mean"] = float(mean)
            out["is_std"] = float(std) if self.count >= 2 else 0.0
        return out


class CLIPScorer:
    """CLIP score ``100 * max(cos(image_emb, text_emb), 0)`` per image with transformers' ``CLIPModel``.

    Args:
        spec: a local directory or hub id of a CLIP model (with its tokenizer), or ``"tiny"``: a
            tiny random ``CLIPModel`` built from a config with the tiny SD pipeline's tokenizer
            (meaningless scores).
        device: where the model runs.
    """

    def __init__(self, spec: str, device: torch.device | str = "cpu"):
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        self.name = spec
        self.meaningless = spec == "tiny"
        if self.meaningless:
            from paratAA.pipelines.tiny import tiny_pipeline

            self.tokenizer = tiny_pipeline("sd").tokenizer
            config = CLIPConfig(
                text_config=dict(vocab_size=len(self.tokenizer.get_vocab()), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=self.tokenizer.model_max_length,
                                 bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                 pad_token_id=self.tokenizer.pad_token_id),
                vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2),
                projection_dim=8)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = CLIPModel(config)
        else:
            self.tokenizer = CLIPTokenizer.from_pretrained(spec)
            self.model = CLIPModel.from_pretrained(spec)
        self.model = self.model.to(device).eval()
        self.device = torch.device(device)
        self.image_size = int(self.model.config.vision_config.image_size)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, S, S)`` (resize shortest side, centre crop)."""
        x = images.to(self.device, torch.float32) / 255
        height, width = x.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def scores(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Per-image CLIP scores, float ``(N,)`` on the CPU.

        Args:
            images: uint8 ``(N, 3, H, W)``.
            texts: one caption per image (truncated to the tokenizer's maximum length).
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f"CLIP score: {images.shape[0]} images but {len(texts)} texts")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        image_emb = self.model.get_image_features(pixel_values=self._pixels(images))
        text_emb = self.model.get_text_features(**tokens)
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cosine = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
        return (100 * cosine.clamp(min=0)).cpu()


def mean_or_none(values: Sequence[float]) -> float | None:
    """Mean of a non-empty sequence, None if empty or not finite."""
    if not values:
        return None
    value = float(np.mean(values))
    return value if math.isfinite(value) else None
