"""MultimodalSum (Im et al., ACL 2021): BART with multi-entity cross-attention, a rating-deviation vector, an image
encoder, a table encoder and per-layer modality gates (spec ``multimodalsum.md`` §2, §3.2, §3.3, §7).

Read against the official code nc-ai/MultimodalSum @ cff6211 (``src/transformer/modeling_multimodalsum.py`` = MMS
below, ``src/img_encoder.py``, ``src/table_encoder.py``, ``src/multimodal_train.py``, ``src/text_pretrain.py``,
``src/img_pretrain.py``, ``src/table_pretrain.py``, ``src/data_utils.py``, ``src/utils.py``,
``multimodal_preprocessing/table_modality_preprocessing.py``, ``cfg/bart-large.json``); nothing is copied from it.
Built on transformers' BART (``BartForConditionalGeneration``): its modules and weights are used as they are, the
decoder's forward pass is re-written here (the multi-entity cross-attention does not fit ``BartAttention``).

Architecture
------------
* **Text** [official code, multimodal_train.py:174-180]: the reviews ``[B, R, L]`` are encoded independently by the
  stock BART encoder in ONE call on the non-empty reviews (gathered into ``[n_valid, L]``, scattered back into
  ``[B, R, L, d]``; an all-padding review gets zero states and an all-False mask, and never reaches the encoder, so no
  fully-masked softmax row exists). The official code encodes every row (it has no empty reviews).
* **Parallel mean** [official code, MMS:852-869, 877-886]: every decoder cross-attention attends each entity (a
  review, a photo, the table) separately with the same q/k/v/out projections; the per-head context vectors are
  averaged over the NON-EMPTY entities (an entity whose keys are all padding is excluded; an example with no
  non-empty entity gets context 0), and only then ``out_proj`` is applied; dropout, residual and
  ``encoder_attn_layer_norm`` follow as in stock BART (MMS:464-477). **Batching**: the entities of an example lie
  side by side on one key axis, ``K, V: [N, H, E*S, d_h]`` (contiguous, made once per forward / generate), so the
  scores of all entities are one matmul ``[N, H, T, E*S]``, the softmax runs within each entity's ``S`` keys, and one
  more matmul with ``V`` pre-scaled per entity by the mean's weights (1 / number of non-empty entities, 0 for an
  empty one) gives the mean of the per-entity contexts directly; no Python loop over entities. Padding
  keys are masked with ``masked_fill(finfo.min)`` [reconstruction: the official code adds -2**16 (MMS:844); both
  give padding exactly zero weight in fp32].
* **Rating deviation** [official code, MMS:514-515, 588-597]: a learned ``r in R^d`` (init N(0, init_std)) is added
  to every decoder input: ``x_t = embed_scale * tok_t + pos_t + delta * r``, i.e. AFTER the embedding scale and the
  positions and BEFORE ``layernorm_embedding`` and the embedding dropout. ``delta`` is one float per example
  (training: rating(target) - mean rating(inputs), multimodal_train.py:154-156; steps 2a/2b and test: 0,
  img_pretrain.py:117, table_pretrain.py:105, test.py:155). ``delta=None`` skips the addition (same values as 0).
* **Gates** [official code, MMS:701-704, 722-745]: ``h_text, h_tab, h_img`` = parallel-mean cross-attention (after
  ``out_proj``) on each modality with the SAME projections; ``alpha = ReLU(tanh(W_alpha [h_text; h_tab]))``,
  ``beta = ReLU(tanh(W_beta [h_text; h_img]))``, ``W: Linear(2d, d)`` WITH bias, one pair per decoder layer (init
  N(0, init_std), bias 0, like the official ``_init_weights``); ``alpha`` is set to exactly 0 for an example whose
  table entity is all padding, ``beta`` for an example whose images are all padding (``masked_fill``, MMS:732-741);
  ``out = h_text + alpha * h_tab + beta * h_img``, then dropout / residual / LayerNorm. A modality passed as ``None``
  is skipped (its gate is 0). Without text, exactly one modality may be given and is attended without gates: the
  unimodal ``BartForEncConditionalGeneration`` of the pretraining steps 2a / 2b (img_pretrain.py:118,
  table_pretrain.py:106). ``gate_stats`` holds the per-layer means of the last forward (diagnostic "gates open").
* **Image encoder** [official code, img_encoder.py:21-40]: torchvision ResNet stages conv1..layer3 (stride 16), the
  output of layer2 ``.detach()``-ed (conv1..layer2 get no gradient; their BatchNorm running statistics still update in
  train mode, as in the official code), 224x224 -> 14x14xC -> 196 tokens -> ``Linear(C, d, bias=False)`` (C = 1024
  for ResNet-50/101, 256 for ResNet-18/34, the small test backbone). ``weights_path`` loads a local torchvision
  ImageNet state dict; random init otherwise (the official code downloads ``pretrained=True``). layer4 / fc are not
  kept [reconstruction: the official module registers the whole ResNet, unused parts included]. Padding photos are run
  through the CNN by default (``encode_padding_images=True``, as the official code does with its zero images: they
  enter train-mode BatchNorm batch statistics); ``False`` encodes only the real photos.
* **Table encoder** [official code, table_encoder.py]: one token per field, ``Linear(d, d, bias=False)(ReLU(
  Linear(2d, d)([emb(name); emb(value)])))``; names and string values embedded with the BART token embedding WITHOUT
  gradient (the official ``torch.no_grad()``; here the weight is ``.detach()``-ed) and WITHOUT ``embed_scale`` (the
  official ``nn.Embedding``), summed over sub-tokens; category lists: mean over the non-empty strings (Amazon: mean
  over levels, then over paths), denominators ``+ 1e-6`` as official; numeric fields: binary codes through
  ``Linear(bits, d, bias=False)`` shared by the fields of one kind (Yelp stars 4-bit, 7 opening-hours fields one
  4-dim cluster one-hot; Amazon price 11-bit, rating 4-bit). Field masks follow the official rules (table_encoder.py
  :75-82, 160-166): a string field is present iff its first sub-token is not padding, a numeric field iff its code is
  non-zero, and Yelp name / stars and Amazon rating / category are always present. The encoder consumes a
  :class:`TableBatch`; :func:`build_table_batch` makes one from metadata dicts (keys as in ``data/review_schema.py``)
  with any ``tokenizer(text) -> ids`` callable. **Missing table** [reconstruction]: all fields masked, so alpha = 0.
  The official Yelp masks mark name and stars present even for a business without metadata (table_encoder.py:76,80),
  so there alpha was never zeroed on Yelp.
* **Opening hours** [official code, table_modality_preprocessing.py:186-210]: ``fit_hours_clusters`` maps
  "HH:MM-HH:MM" to (start, end) hours (end + 24 when it does not exceed start), keeps the most frequent strings
  covering 90% of the occurrences (the official threshold loop), clusters the distinct strings with K-means and picks K
  by the mean silhouette among {3, 4, 5, 7, 10}; the official data gave K = 4 (``np.eye(4)``, data_utils.py:80).
  [reconstruction] plain numpy K-means (k-means++ seeding, ``n_init`` restarts, Lloyd iterations) and silhouette:
  the official sklearn ``KMeans(random_state=0)`` draws differ, so cluster ids and, at near-ties, K may differ.
* **Binary codes** [official code, table_modality_preprocessing.py:45-52]: ``to_binary`` = bits of the integer part
  followed by one half bit (ceil of the fraction), left-padded; price and Amazon rating rounded to 0.5 first, Yelp
  stars not. [reconstruction] a value too large for the width is clamped to all ones (the official string grows and
  the batch collation would fail).

Training and loss
-----------------
* Decoder inputs from labels [official code, MMS:225-246]: ``<s>`` then the labels with their last non-pad token
  (the ``</s>``) replaced by pad, shifted right; the self-attention masks pad keys of the decoder input (MMS:160-181).
  [reconstruction] the official code tests only row 0 for a leading ``<s>``; here the test is per row.
* Loss [official code, utils.py:24-38]: label smoothing puts ``1 - eps`` on the target and ``eps / (V - 1)`` on
  every other token, averaged over ALL positions, padding included (and the plain cross-entropy of text pretraining
  also keeps pads, text_pretrain.py:97): ``pad_in_loss="faithful"``; ``"fixed"`` averages over non-pad label
  positions only (spec §7.1). ``leave_one_out_loss`` is the official rotation (multimodal_train.py:150-163): encode
  the R reviews once, each review in turn is the target of the other R - 1 with ``delta = r_i - mean(r_others)``, mean
  of the R losses.
* Dropouts [official code, cfg/bart-large.json]: attention_dropout = activation_dropout = 0.0, dropout = 0.1; applied
  when loading a checkpoint (``official_dropouts=True``).
* ``trainable_parameters(step)`` (spec §3.2): ``"1"`` BART + rating vector (text_pretrain.py:255); ``"2a"`` image
  encoder layer3 + projection (img_pretrain.py:284; conv1..layer2 are in the official optimizer but never get a
  gradient); ``"2b"`` table encoder without the BART embedding (table_pretrain.py:359); ``"3"`` everything but
  conv1..layer2 (multimodal_train.py:463). In step 3 the BART token embedding trains through the text path; inside
  the table encoder it stays gradient-free. ``param_groups``: AdamW weight decay 0.01 except biases, LayerNorm and
  BatchNorm weights (by module type); ``rule="official"`` reproduces the official name-substring lists, which decay
  the ResNet downsample BatchNorm weights (``downsample.1.weight``) and the rating vector.

Generation
----------
[official code, MMS:2295-3067 + generation_utils.py of transformers 3.0.2, cfg/bart-large.json] written here, not
through ``GenerationMixin`` (whose beam search normalises lengths and stops differently, and whose cache has no place
for multi-entity cross-attention K/V), with the 3.0.2 semantics: decoding starts from ``decoder_start_token_id``
(2 = ``</s>``), ``<s>`` is forced at the first step and ``</s>`` at step ``max_length - 1``; beam search keeps the top
``2 * num_beams`` candidates, finished hypotheses scored ``sum_logprobs / len(hyp) ** length_penalty`` (len counts the
start tokens), ``early_stopping=True`` stops an example once it has ``num_beams`` finished hypotheses;
``no_repeat_ngram_size`` bans every n-gram already in the sequence (start tokens included); ``num_beams=1`` is greedy
argmax (the official no-beam path). ``decoder_start="bos"`` [reconstruction] starts from ``<s>`` as training does (the
official start is one position off from training: trained on ``<s> x..``, decoded as ``</s> <s> x..``). Caching: the
cross-attention K/V of every modality and layer are computed once for ``B * num_beams`` rows and never reordered (the
beams of one example share them); the self-attention K/V are concatenated per step and reordered with the beams.
Returned ids include the start tokens (as the official output, decoded with ``skip_special_tokens``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration

MODALITIES: tuple[str, ...] = ("text", "table", "image")
STEPS: dict[str, str] = {"1": "1", "text": "1", "2a": "2a", "image": "2a", "2b": "2b", "table": "2b", "3": "3",
                         "multimodal": "3"}
# layer3 output channels of the torchvision ResNets
RESNET_LAYER3_CHANNELS: dict[str, int] = {"resnet18": 256, "resnet34": 256, "resnet50": 1024, "resnet101": 1024,
                                          "resnet152": 1024}


def tiny_bart_config(vocab_size: int = 96, d_model: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                     max_positions: int = 128, **overrides) -> BartConfig:
    """A small random BART configuration for tests and smoke runs (pad 1, bos 0, eos 2, decoder start 2)."""
    kw = dict(vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
              encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
              max_position_embeddings=max_positions, pad_token_id=1, bos_token_id=0, eos_token_id=2,
              decoder_start_token_id=2, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0)
    kw.update(overrides)
    return BartConfig(**kw)


# ----------------------------------------------------------------------------------------------------- memories
@dataclass
class EntityMemory:
    """Encoder states of one modality: ``states [B, E, S, d]`` for E entities of S tokens, ``mask [B, E, S]`` (True =
    a real token). An entity whose mask is all False is empty and does not count in the parallel mean."""

    states: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.states.dim() != 4 or self.mask.shape != self.states.shape[:3]:
            raise ValueError(f"EntityMemory wants states [B, E, S, d] and mask [B, E, S], got "
                             f"{tuple(self.states.shape)} / {tuple(self.mask.shape)}")
        self.mask = self.mask.bool()

    @property
    def present(self) -> torch.Tensor:
        """[B] bool: the example has at least one non-empty entity."""
        return self.mask.flatten(1).any(-1)

    def index_batch(self, index: torch.Tensor) -> EntityMemory:
        return EntityMemory(self.states.index_select(0, index), self.mask.index_select(0, index))

    def select_entities(self, index: Sequence[int] | torch.Tensor) -> EntityMemory:
        index = torch.as_tensor(index, dtype=torch.long, device=self.states.device)
        return EntityMemory(self.states.index_select(1, index), self.mask.index_select(1, index))


@dataclass
class Memory:
    """What the decoder attends: one :class:`EntityMemory` per modality, None where the modality is absent."""

    text: EntityMemory | None = None
    table: EntityMemory | None = None
    image: EntityMemory | None = None

    def items(self) -> list[tuple[str, EntityMemory]]:
        return [(m, getattr(self, m)) for m in MODALITIES if getattr(self, m) is not None]

    @property
    def batch_size(self) -> int:
        items = self.items()
        if not items:
            raise ValueError("the memory is empty: give reviews, images or a table")
        return items[0][1].states.size(0)

    def index_batch(self, index: torch.Tensor) -> Memory:
        return Memory(**{m: e.index_batch(index) for m, e in self.items()})

    def select_text(self, index: Sequence[int] | torch.Tensor) -> Memory:
        """The same memory with only the reviews ``index`` (the leave-one-out input of one rotation)."""
        if self.text is None:
            raise ValueError("the memory has no text")
        return replace(self, text=self.text.select_entities(index))


@dataclass
class MultimodalSumOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    gate_stats: dict[str, torch.Tensor] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- binary codes, hours
def to_binary(x: float, bits: int, rounding: bool = True) -> list[int]:
    """The official code of a non-negative number: bits of the integer part, then one half bit (ceil of the
    fraction); ``rounding`` first rounds to the nearest 0.5 (Python's round, half to even). 4.5 -> 1001 (4 bits),
    5.0 -> 1010. Clamped to all ones when it does not fit [reconstruction]."""
    x = float(x)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"to_binary needs a finite non-negative number, got {x}")
    if rounding:
        x = round(x * 2.0) / 2.0
    frac, integer = math.modf(x)
    code = bin(int(integer))[2:] + bin(math.ceil(frac))[2:]
    if len(code) > bits:
        return [1] * bits
    return [int(c) for c in code.rjust(bits, "0")]


def hours_to_coordinate(hours: str) -> tuple[float, float]:
    """"HH:MM-HH:MM" -> (start, end) in hours; an end not after the start is on the next day (+24)."""
    start, end = hours.split("-")
    sh, sm = (int(v) for v in start.split(":"))
    eh, em = (int(v) for v in end.split(":"))
    s, e = sh + sm / 60.0, eh + em / 60.0
    if s >= e:
        e += 24.0
    return s, e


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, float]:
    """Plain K-means (k-means++ seeding, Lloyd iterations, best inertia of ``n_init`` runs): (labels, centers,
    inertia). An emptied cluster is re-seeded with the point farthest from its center."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} needs 1 <= k <= n = {n}")
    rng = np.random.RandomState(seed)
    best = None
    for _ in range(n_init):
        centers = [x[rng.randint(n)]]
        for _j in range(1, k):
            d2 = _sq_dists(x, np.asarray(centers)).min(1)
            total = d2.sum()
            centers.append(x[rng.randint(n)] if total <= 0 else x[rng.choice(n, p=d2 / total)])
        centers = np.asarray(centers)
        labels = None
        for _it in range(max_iter):
            d2 = _sq_dists(x, centers)
            new_labels = d2.argmin(1)
            new_centers = centers.copy()
            for j in range(k):
                members = x[new_labels == j]
                if len(members):
                    new_centers[j] = members.mean(0)
                else:
                    far = d2[np.arange(n), new_labels].argmax()
                    new_centers[j] = x[far]
                    new_labels[far] = j
            shift = ((new_centers - centers) ** 2).sum()
            centers = new_centers
            if labels is not None and np.array_equal(labels, new_labels) and shift <= tol:
                labels = new_labels
                break
            labels = new_labels
        labels = _sq_dists(x, centers).argmin(1)
        inertia = float(_sq_dists(x, centers)[np.arange(n), labels].sum())
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia)
    return best


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient, Euclidean distances (sklearn's definition: a point alone in its cluster scores
    0). Needs 2 <= number of clusters <= n - 1."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    ids = np.unique(labels)
    if not 2 <= len(ids) <= len(x) - 1:
        raise ValueError(f"silhouette needs 2..n-1 clusters, got {len(ids)} for n = {len(x)}")
    d = np.sqrt(_sq_dists(x, x))
    onehot = (labels[:, None] == ids[None, :]).astype(np.float64)  # [n, K]
    sums = d @ onehot  # [n, K]: summed distance to each cluster
    sizes = onehot.sum(0)
    own = onehot.argmax(1)
    own_size = sizes[own]
    a = np.where(own_size > 1, sums[np.arange(len(x)), own] / np.maximum(own_size - 1, 1), 0.0)
    mean_other = sums / sizes[None, :]
    mean_other[np.arange(len(x)), own] = np.inf
    b = mean_other.min(1)
    s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


@dataclass
class HoursClusters:
    """The fitted opening-hours clustering: K centers in (start, end) hours, and the silhouette of every K tried."""

    centers: np.ndarray
    scores: dict[int, float]

    @property
    def k(self) -> int:
        return len(self.centers)

    def predict(self, hours: Sequence[str]) -> np.ndarray:
        x = np.asarray([hours_to_coordinate(h) for h in hours], dtype=np.float64).reshape(-1, 2)
        return _sq_dists(x, self.centers).argmin(1)


def fit_hours_clusters(strings: Sequence[str], ks: Sequence[int] = (3, 4, 5, 7, 10), seed: int = 0,
                       coverage: float | None = 0.9, n_init: int = 10) -> HoursClusters:
    """Cluster opening-hours strings (all days, all businesses; empty strings ignored) as the official preprocessing.

    1. ``coverage`` (official 0.9): with c(s) the count of string s, the smallest threshold t = 0, 1, .. at which the
       strings with c(s) >= t cover less than ``coverage`` of all occurrences; the distinct strings with c(s) >= t are
       clustered (each once, unweighted). None: every distinct string.
    2. For each K in ``ks``: K-means on (start, end), mean silhouette; the K of the best silhouette wins (first on
       ties); its clustering is returned. K values with K > n - 1 distinct points are skipped.
    """
    occurrences = [s for s in strings if s]
    if not occurrences:
        raise ValueError("no opening-hours strings to cluster")
    uniq, counts = np.unique(np.asarray(occurrences, dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    uniq, counts = uniq[order], counts[order]
    if coverage is not None:
        total = counts.sum()
        threshold = 0
        for threshold in range(len(counts)):
            if counts[counts >= threshold].sum() / total < coverage:
                break
        keep = counts >= threshold
        uniq = uniq[keep]
    x = np.asarray([hours_to_coordinate(s) for s in uniq], dtype=np.float64)
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in ks:
        if not 2 <= k <= len(x) - 1:
            continue
        labels, centers, _ = kmeans(x, k, seed=seed, n_init=n_init)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = silhouette(x, labels)
        fits[k] = centers
    if not scores:
        raise ValueError(f"too few distinct opening-hours strings ({len(x)}) for any K in {tuple(ks)}")
    best = max(scores, key=lambda k: (scores[k], -list(ks).index(k)))
    return HoursClusters(centers=fits[best], scores=scores)


# --------------------------------------------------------------------------------------------------- table data
@dataclass(frozen=True)
class FieldSpec:
    """One metadata field (or, kind "tokens", ``max_tokens`` fields: one per sub-token, all with this name).

    kinds: "text" (sub-tokens summed), "text_list" (a list of strings: sum, then mean over the strings),
    "text_paths" (a list of category paths: sum, mean over levels, mean over paths), "tokens" (each sub-token its own
    field), "binary" (``to_binary`` code of ``bits``), "hours" (a cluster one-hot of ``bits``).
    ``numeric`` names the Linear shared by the numeric fields of one kind."""

    key: str
    name: str
    kind: str
    max_tokens: int = 1
    max_items: int = 1
    max_paths: int = 1
    bits: int = 0
    numeric: str = ""
    rounding: bool = True
    always_present: bool = False
    value_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.kind not in ("text", "text_list", "text_paths", "tokens", "binary", "hours"):
            raise ValueError(f"unknown field kind {self.kind!r}")
        if self.kind in ("binary", "hours") and (self.bits <= 0 or not self.numeric):
            raise ValueError(f"numeric field {self.key!r} needs bits and a numeric kind name")

    @property
    def width(self) -> int:
        return self.max_tokens if self.kind == "tokens" else 1


@dataclass(frozen=True)
class TableSchema:
    name: str
    fields: tuple[FieldSpec, ...]

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields for _ in range(f.width)]

    @property
    def num_fields(self) -> int:
        return sum(f.width for f in self.fields)

    @property
    def numeric_dims(self) -> dict[str, int]:
        dims: dict[str, int] = {}
        for f in self.fields:
            if f.kind in ("binary", "hours"):
                if dims.setdefault(f.numeric, f.bits) != f.bits:
                    raise ValueError(f"numeric kind {f.numeric!r} used with two widths")
        return dims


_BOOL_MAP = (("True", "true"), ("False", "false"), ("1", "true"), ("0", "false"), ("1.0", "true"), ("0.0", "false"))
_YELP_BOOLEAN = (  # (metadata key, official readable name), official YELP_BIN_COLS / YELP_FIELDS order
    ("BikeParking", "bike parking"), ("BusinessAcceptsCreditCards", "accept credit cards"),
    ("ByAppointmentOnly", "by appointment only"), ("Caters", "cater"), ("GoodForKids", "good for kids"),
    ("HasTV", "has tv"), ("OutdoorSeating", "outdoor seating"), ("RestaurantsDelivery", "restaurants delivery"),
    ("RestaurantsGoodForGroups", "restaurants good for group"), ("RestaurantsReservations", "restaurants reservations"),
    ("RestaurantsTakeOut", "restaurants take out"), ("WheelchairAccessible", "wheelchair accessible"),
    ("Ambience_casual", "ambience casual"), ("Ambience_classy", "ambience classy"),
    ("Ambience_divey", "ambience divey"), ("Ambience_hipster", "ambience hipster"),
    ("Ambience_intimate", "ambience intimate"), ("Ambience_romantic", "ambience romantic"),
    ("Ambience_touristy", "ambience touristy"), ("Ambience_trendy", "ambience trendy"),
    ("Ambience_upscale", "ambience upscale"), ("BusinessParking_garage", "parking garage"),
    ("BusinessParking_lot", "parking lot"), ("BusinessParking_street", "parking street"),
    ("BusinessParking_valet", "parking valet"), ("BusinessParking_validated", "parking validated"),
    ("GoodForMeal_breakfast", "good for meal breakfast"), ("GoodForMeal_brunch", "good for meal brunch"),
    ("GoodForMeal_dessert", "good for meal dessert"), ("GoodForMeal_dinner", "good for meal dinner"),
    ("GoodForMeal_latenight", "good for meal latenight"), ("GoodForMeal_lunch", "good for meal lunch"),
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# official Yelp table, F = 47 (table_encoder.py:14-27, data_utils.py:67-88, YELP_FIELDS)
YELP_SCHEMA = TableSchema("yelp", (
    FieldSpec("name", "name", "text", max_tokens=24, always_present=True),
    FieldSpec("categories", "category", "text_list", max_tokens=12, max_items=6),
    FieldSpec("NoiseLevel", "noise level", "text", max_tokens=3),
    FieldSpec("Alcohol", "alcohol", "text", max_tokens=3),
    FieldSpec("RestaurantsAttire", "restaurants attire", "text", max_tokens=3),
    FieldSpec("WiFi", "wifi", "text", max_tokens=3),
    FieldSpec("RestaurantsPriceRange2", "restaurants price range", "text", max_tokens=3,
              value_map=(("1", "cheap"), ("2", "average"), ("3", "expensive"), ("4", "very expensive"))),
    *(FieldSpec(k, n, "text", max_tokens=1, value_map=_BOOL_MAP) for k, n in _YELP_BOOLEAN),
    FieldSpec("avg_rating", "ratings", "binary", bits=4, numeric="rating", rounding=False, always_present=True),
    *(FieldSpec(f"hours_{d}", f"hours {d.lower()}", "hours", bits=4, numeric="hours") for d in _WEEKDAYS),
))

# official Amazon table, F = 5 + 128 (table_encoder.py:95-108, data_utils.py:90-117)
AMAZON_SCHEMA = TableSchema("amazon", (
    FieldSpec("price", "price", "binary", bits=11, numeric="price", rounding=True),
    FieldSpec("avg_rating", "ratings", "binary", bits=4, numeric="rating", rounding=True, always_present=True),
    FieldSpec("brand", "brand", "text", max_tokens=12),
    FieldSpec("name", "name", "text", max_tokens=32),
    FieldSpec("category_paths", "category", "text_paths", max_tokens=12, max_items=8, max_paths=3,
              always_present=True),
    FieldSpec("description", "description", "tokens", max_tokens=128),
))
SCHEMAS: dict[str, TableSchema] = {"yelp": YELP_SCHEMA, "amazon": AMAZON_SCHEMA}


@dataclass
class TextFieldGroup:
    """String fields of one shape: ``ids [B, n, P, M, L]`` sub-token ids (P paths x M strings x L sub-tokens; pad =
    the table's pad id, so the sub-token mask is ``ids != pad``) for the fields at ``field_index [n]``."""

    kind: str
    field_index: torch.Tensor
    ids: torch.Tensor


@dataclass
class NumericFieldGroup:
    """Numeric fields of one kind: ``codes [B, n, bits]`` (binary code / one-hot) for the fields at ``field_index``;
    ``kind`` names the shared Linear."""

    kind: str
    field_index: torch.Tensor
    codes: torch.Tensor


@dataclass
class TableBatch:
    """A tokenised table batch: field-name ids ``[F, Ln]`` (shared by the examples), the value groups, and the field
    mask ``[B, F]`` (True = the field is present; a missing table is all False)."""

    name_ids: torch.Tensor
    text_groups: list[TextFieldGroup]
    numeric_groups: list[NumericFieldGroup]
    field_mask: torch.Tensor
    pad_id: int = 1

    @property
    def num_fields(self) -> int:
        return self.name_ids.size(0)

    @property
    def batch_size(self) -> int:
        return self.field_mask.size(0)

    @property
    def has_table(self) -> torch.Tensor:
        return self.field_mask.any(-1)

    def to(self, device) -> TableBatch:
        return TableBatch(self.name_ids.to(device),
                          [TextFieldGroup(g.kind, g.field_index.to(device), g.ids.to(device))
                           for g in self.text_groups],
                          [NumericFieldGroup(g.kind, g.field_index.to(device), g.codes.to(device))
                           for g in self.numeric_groups],
                          self.field_mask.to(device), self.pad_id)


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value == "":
        return True
    return False


def _value_string(spec: FieldSpec, value) -> str:
    if _is_empty(value):
        return ""
    if isinstance(value, bool):
        value = "True" if value else "False"
    value = str(value)
    return dict(spec.value_map).get(value, value)


def _pad(ids: list[int], length: int, pad_id: int) -> list[int]:
    ids = list(ids)[:length]
    return ids + [pad_id] * (length - len(ids))


def build_table_batch(records: Sequence[Mapping | None], schema: TableSchema | str,
                      tokenizer: Callable[[str], Sequence[int]], pad_id: int = 1,
                      hours_clusters: HoursClusters | None = None) -> TableBatch:
    """Tokenise metadata dicts (None = the entity has no table) into a :class:`TableBatch`.

    ``tokenizer(text)`` returns sub-token ids without special tokens (for BART: ``lambda s: tok(s,
    add_special_tokens=False, add_prefix_space=True)["input_ids"]``, as the official code). Values: strings as they
    are (``value_map`` applied: booleans -> "true"/"false", Yelp price range 1..4 -> words); Yelp ``categories`` a
    list or a ", "-joined string; Amazon ``category_paths`` a list of lists or "a|b||c" (official join); numbers or
    bit lists for "binary"; "HH:MM-HH:MM" (needs ``hours_clusters``) or a cluster index for "hours". Empty values
    (None, "", NaN) give pad ids / zero codes.
    """
    if isinstance(schema, str):
        schema = SCHEMAS[schema]
    b = len(records)
    names = [list(tokenizer(n)) for n in schema.field_names]
    ln = max(1, max(len(n) for n in names))
    name_ids = torch.tensor([_pad(n, ln, pad_id) for n in names], dtype=torch.long)
    field_mask = torch.zeros(b, schema.num_fields, dtype=torch.bool)
    text_parts: dict[tuple, list] = {}
    numeric_parts: dict[str, list] = {}
    offset = 0
    for spec in schema.fields:
        idx = list(range(offset, offset + spec.width))
        offset += spec.width
        if spec.kind in ("binary", "hours"):
            codes = []
            for r, rec in enumerate(records):
                value = None if rec is None else rec.get(spec.key)
                if spec.kind == "binary":
                    if _is_empty(value):
                        code = [0] * spec.bits
                    elif isinstance(value, (list, tuple, str)):
                        code = [int(c) for c in value]
                    else:
                        code = to_binary(float(value), spec.bits, spec.rounding)
                else:
                    code = [0] * spec.bits
                    if not _is_empty(value):
                        if isinstance(value, str):
                            if hours_clusters is None:
                                raise ValueError(f"field {spec.key!r}: an hours string needs hours_clusters")
                            value = int(hours_clusters.predict([value])[0])
                        code[int(value)] = 1
                if len(code) != spec.bits:
                    raise ValueError(f"field {spec.key!r}: code {code} is not {spec.bits} bits")
                codes.append(code)
                if rec is not None:
                    field_mask[r, idx[0]] = spec.always_present or any(code)
            entry = numeric_parts.setdefault(spec.numeric, [[], []])
            entry[0].extend(idx)
            entry[1].append(torch.tensor(codes, dtype=torch.float32).view(b, 1, spec.bits))
            continue
        # string kinds -> ids [B, width, P, M, L]
        p, m, l_ = spec.max_paths, spec.max_items, spec.max_tokens
        if spec.kind == "tokens":
            p = m = l_ = 1
        rows = []
        for r, rec in enumerate(records):
            value = None if rec is None else rec.get(spec.key)
            if spec.kind == "text":
                ids = [[_pad(tokenizer(s) if (s := _value_string(spec, value)) else [], l_, pad_id)]]
                present = ids[0][0][0] != pad_id
            elif spec.kind == "tokens":
                toks = _pad(tokenizer(s) if (s := _value_string(spec, value)) else [], spec.max_tokens, pad_id)
                ids = [[[t]] for t in toks]
                if rec is not None:
                    field_mask[r, idx[0]:idx[-1] + 1] = torch.tensor([t != pad_id for t in toks])
                rows.append(ids)
                continue
            elif spec.kind == "text_list":
                items = [] if _is_empty(value) else (value.split(", ") if isinstance(value, str) else list(value))
                items = [_pad(tokenizer(str(s)), l_, pad_id) for s in items[:m] if str(s)]
                items += [[pad_id] * l_] * (m - len(items))
                ids = [items]
                present = ids[0][0][0] != pad_id
            else:  # text_paths
                paths = [] if _is_empty(value) else (
                    [q.split("|") for q in value.split("||")] if isinstance(value, str) else [list(q) for q in value])
                grid = []
                for path in paths[:p]:
                    lv = [_pad(tokenizer(str(s)), l_, pad_id) for s in path[:m] if str(s)]
                    grid.append(lv + [[pad_id] * l_] * (m - len(lv)))
                grid += [[[pad_id] * l_] * m] * (p - len(grid))
                ids = grid
                present = ids[0][0][0] != pad_id
            rows.append([ids])
            if rec is not None:
                field_mask[r, idx[0]] = spec.always_present or present
        tensor = torch.tensor(rows, dtype=torch.long).view(b, spec.width, p, m, l_)
        kind = "text" if spec.kind == "tokens" else spec.kind
        entry = text_parts.setdefault((kind, p, m, l_), [[], []])
        entry[0].extend(idx)
        entry[1].append(tensor)
    text_groups = [TextFieldGroup(key[0], torch.tensor(v[0]), torch.cat(v[1], 1)) for key, v in text_parts.items()]
    numeric_groups = [NumericFieldGroup(k, torch.tensor(v[0]), torch.cat(v[1], 1)) for k, v in numeric_parts.items()]
    return TableBatch(name_ids, text_groups, numeric_groups, field_mask, pad_id)


# ------------------------------------------------------------------------------------------------------ encoders
class TableEncoder(nn.Module):
    """Field tokens ``Linear(d, d, no bias)(ReLU(Linear(2d, d)([emb(name); emb(value)])))``; the token embedding is
    passed in (the BART one) and used without gradient and without ``embed_scale``."""

    def __init__(self, d_model: int, numeric_dims: Mapping[str, int]):
        super().__init__()
        self.d_model = d_model
        self.numeric = nn.ModuleDict({k: nn.Linear(bits, d_model, bias=False) for k, bits in numeric_dims.items()})
        self.fc = nn.Linear(2 * d_model, d_model)
        self.linear = nn.Linear(d_model, d_model, bias=False)

    @staticmethod
    def _embed_sum(ids: torch.Tensor, weight: torch.Tensor, pad_id: int) -> torch.Tensor:
        mask = ids.ne(pad_id).unsqueeze(-1).to(weight.dtype)
        return (F.embedding(ids, weight) * mask).sum(-2)

    def forward(self, batch: TableBatch, embedding_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (states [B, F, d], field mask [B, F])."""
        weight = embedding_weight.detach()
        pad = batch.pad_id
        b = batch.batch_size
        names = self._embed_sum(batch.name_ids, weight, pad)  # [F, d]
        parts, index = [], []
        for g in batch.text_groups:
            e = self._embed_sum(g.ids, weight, pad)  # [B, n, P, M, d]
            if g.kind == "text":
                e = e[:, :, 0, 0]
            else:
                item = g.ids.ne(pad).any(-1).unsqueeze(-1).to(e.dtype)  # [B, n, P, M, 1]
                e = (e * item).sum(3) / (item.sum(3) + 1e-6)  # [B, n, P, d]
                if g.kind == "text_paths":
                    path = g.ids.ne(pad).any(-1).any(-1).unsqueeze(-1).to(e.dtype)  # [B, n, P, 1]
                    e = (e * path).sum(2) / (path.sum(2) + 1e-6)
                else:
                    e = e[:, :, 0]
            parts.append(e)
            index.append(g.field_index)
        for g in batch.numeric_groups:
            parts.append(self.numeric[g.kind](g.codes.to(weight.dtype)))
            index.append(g.field_index)
        index = torch.cat(index).to(weight.device)
        values = torch.cat(parts, 1)
        inverse = torch.empty_like(index)
        inverse[index] = torch.arange(len(index), device=index.device)
        values = values.index_select(1, inverse)  # [B, F, d] in field order
        x = torch.cat([names.unsqueeze(0).expand(b, -1, -1), values], -1)
        return self.linear(torch.relu(self.fc(x))), batch.field_mask.to(weight.device)


class ImageEncoder(nn.Module):
    """torchvision ResNet conv1..layer3 (layer2 output detached) -> tokens -> ``Linear(C, d, bias=False)``."""

    def __init__(self, d_model: int, backbone: str = "resnet101", weights_path: str | None = None):
        super().__init__()
        import torchvision

        if backbone not in RESNET_LAYER3_CHANNELS:
            raise ValueError(f"backbone must be one of {sorted(RESNET_LAYER3_CHANNELS)}, got {backbone!r}")
        net = getattr(torchvision.models, backbone)(weights=None)
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        self.backbone = backbone
        self.stage1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.stage2 = net.layer2
        self.stage3 = net.layer3
        self.proj = nn.Linear(RESNET_LAYER3_CHANNELS[backbone], d_model, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, (H/16)(W/16), d]."""
        x = self.stage2(self.stage1(images)).detach()
        x = self.stage3(x)
        return self.proj(x.flatten(2).transpose(1, 2))

    def frozen_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith(("stage1.", "stage2."))]


class ModalityGates(nn.Module):
    def __init__(self, d_model: int, init_std: float):
        super().__init__()
        self.alpha_proj = nn.Linear(2 * d_model, d_model)
        self.beta_proj = nn.Linear(2 * d_model, d_model)
        for lin in (self.alpha_proj, self.beta_proj):
            nn.init.normal_(lin.weight, 0.0, init_std)
            nn.init.zeros_(lin.bias)


# ------------------------------------------------------------------------------------------------------- losses
def official_shift_tokens_right(labels: torch.Tensor, pad_id: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """Decoder inputs of the official code: ``<s>`` (``</s>`` when the labels start with ``<s>``), then the labels with
    their last non-pad token replaced by pad, shifted right by one."""
    out = labels.clone()
    last = (labels.ne(pad_id).sum(1) - 1).clamp(min=0)
    body = labels.clone()
    body[torch.arange(labels.size(0), device=labels.device), last] = pad_id
    out[:, 1:] = body[:, :-1]
    out[:, 0] = torch.where(labels[:, 0] == bos_id, torch.full_like(labels[:, 0], eos_id),
                            torch.full_like(labels[:, 0], bos_id))
    return out


def label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0, pad_id: int = 1,
                        pad_in_loss: str = "faithful") -> torch.Tensor:
    """The official ``LabelSmoothingLoss`` (target 1 - eps, every other token eps / (V - 1); eps = 0 is the
    cross-entropy). ``"faithful"``: mean over all positions, padding included; ``"fixed"``: over non-pad labels."""
    if pad_in_loss not in ("faithful", "fixed"):
        raise ValueError(f"pad_in_loss must be 'faithful' or 'fixed', got {pad_in_loss!r}")
    logp = F.log_softmax(logits.float(), dim=-1)
    target = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    per_token = -target * (1.0 - smoothing)
    if smoothing:
        v = logp.size(-1)
        per_token = per_token - (logp.sum(-1) - target) * (smoothing / (v - 1))
    if pad_in_loss == "faithful":
        return per_token.mean()
    keep = labels.ne(pad_id).to(per_token.dtype)
    return (per_token * keep).sum() / keep.sum().clamp(min=1.0)


# --------------------------------------------------------------------------------------------------- generation
class _Hypotheses:
    """Finished hypotheses of one example (transformers 3.0.2 semantics)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool):
        self.num_beams, self.length_penalty, self.early_stopping = num_beams, length_penalty, early_stopping
        self.beams: list[tuple[float, list[int]]] = []
        self.worst = 1e9

    def add(self, tokens: list[int], sum_logprobs: float):
        score = sum_logprobs / len(tokens) ** self.length_penalty
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping:
            return True
        return self.worst >= best_sum_logprobs / cur_len ** self.length_penalty


def banned_ngram_tokens(sequences: list[list[int]], n: int) -> list[list[int]]:
    """For each sequence, the tokens that would complete an n-gram already in it (fairseq / transformers 3.0.2)."""
    out = []
    for seq in sequences:
        if len(seq) + 1 < n:
            out.append([])
            continue
        seen: dict[tuple, list[int]] = {}
        for i in range(len(seq) - n + 1):
            seen.setdefault(tuple(seq[i:i + n - 1]), []).append(seq[i + n - 1])
        out.append(seen.get(tuple(seq[len(seq) - n + 1:]), []))
    return out


# ---------------------------------------------------------------------------------------------------------- model
class MultimodalSum(nn.Module):
    """BART + rating vector + gates (+ image encoder, + table encoder).

    ``bart``: a local path / hub id (``facebook/bart-large``: ``from_pretrained``, with the official dropouts when
    ``official_dropouts``), a ``BartConfig`` (random init), a ``BartForConditionalGeneration``, or None (a tiny random
    config). ``table_schema``: "yelp" / "amazon" / a :class:`TableSchema` / None (no table encoder).
    ``image_backbone``: a torchvision ResNet name or None (no image encoder).
    """

    def __init__(self, bart: str | BartConfig | BartForConditionalGeneration | None = None, *,
                 table_schema: str | TableSchema | None = "yelp", image_backbone: str | None = "resnet101",
                 image_weights_path: str | None = None, official_dropouts: bool = True,
                 encode_padding_images: bool = True):
        super().__init__()
        if isinstance(bart, BartForConditionalGeneration):
            self.bart = bart
        elif isinstance(bart, BartConfig):
            self.bart = BartForConditionalGeneration(bart)
        elif isinstance(bart, str):
            kw = dict(attention_dropout=0.0, activation_dropout=0.0, dropout=0.1) if official_dropouts else {}
            self.bart = BartForConditionalGeneration.from_pretrained(bart, **kw)
        elif bart is None:
            self.bart = BartForConditionalGeneration(tiny_bart_config())
        else:
            raise TypeError("bart must be a path / hub id, a BartConfig or a BartForConditionalGeneration, "
                            f"got {bart!r}")
        cfg = self.bart.config
        self.config = cfg
        d = cfg.d_model
        self.rating_embedding = nn.Parameter(torch.empty(d).normal_(0.0, cfg.init_std))
        self.gates = nn.ModuleList([ModalityGates(d, cfg.init_std) for _ in range(cfg.decoder_layers)])
        if isinstance(table_schema, str):
            table_schema = SCHEMAS[table_schema]
        self.table_schema = table_schema
        self.table_encoder = TableEncoder(d, table_schema.numeric_dims) if table_schema is not None else None
        self.image_encoder = (ImageEncoder(d, image_backbone, image_weights_path)
                              if image_backbone is not None else None)
        self.encode_padding_images = encode_padding_images
        # beam search keeps one memory row per example (its beams are the queries of that row); False = the
        # official / Hugging Face layout, the memory repeated per beam (same ids; a benchmark reference)
        self.share_memory_across_beams = True
        self.gate_stats: dict[str, torch.Tensor] = {}

    # ---- encoding
    @property
    def pad_id(self) -> int:
        return self.config.pad_token_id

    def encode_text(self, review_ids: torch.Tensor, review_mask: torch.Tensor | None = None) -> EntityMemory:
        """[B, R, L] ids (+ mask) -> states [B, R, L, d]; one encoder call on the non-empty reviews."""
        if review_ids.dim() != 3:
            raise ValueError(f"review_ids must be [B, R, L], got {tuple(review_ids.shape)}")
        if review_mask is None:
            review_mask = review_ids.ne(self.pad_id)
        review_mask = review_mask.bool()
        b, r, length = review_ids.shape
        flat_ids, flat_mask = review_ids.reshape(b * r, length), review_mask.reshape(b * r, length)
        valid = flat_mask.any(-1).nonzero(as_tuple=True)[0]
        states = self.bart.model.shared.weight.new_zeros(b * r, length, self.config.d_model)
        if len(valid):
            enc = self.bart.model.encoder(input_ids=flat_ids.index_select(0, valid),
                                          attention_mask=flat_mask.index_select(0, valid).long())
            states = states.index_copy(0, valid, enc.last_hidden_state.to(states.dtype))
        return EntityMemory(states.view(b, r, length, -1), review_mask)

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> EntityMemory:
        """[B, P, 3, H, W] photos (+ [B, P] mask, True = a real photo) -> one entity of (H/16)(W/16) tokens each."""
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder (image_backbone=None)")
        b, p = images.shape[:2]
        if image_mask is None:
            image_mask = torch.ones(b, p, dtype=torch.bool, device=images.device)
        image_mask = image_mask.bool()
        flat = images.reshape(b * p, *images.shape[2:])
        valid = image_mask.reshape(-1).nonzero(as_tuple=True)[0]
        if self.encode_padding_images or len(valid) == 0:
            tokens = self.image_encoder(flat)
        else:
            enc = self.image_encoder(flat.index_select(0, valid))
            tokens = enc.new_zeros(b * p, enc.size(1), enc.size(2)).index_copy(0, valid, enc)
        tokens = tokens.view(b, p, tokens.size(1), -1)
        mask = image_mask.unsqueeze(-1).expand(b, p, tokens.size(2))
        return EntityMemory(tokens, mask)

    def encode_table(self, table: TableBatch) -> EntityMemory:
        if self.table_encoder is None:
            raise ValueError("this model has no table encoder (table_schema=None)")
        states, mask = self.table_encoder(table.to(self.rating_embedding.device), self.bart.model.shared.weight)
        return EntityMemory(states.unsqueeze(1), mask.unsqueeze(1))

    def encode(self, review_ids: torch.Tensor | None = None, review_mask: torch.Tensor | None = None,
               images: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
               table: TableBatch | None = None) -> Memory:
        return Memory(text=self.encode_text(review_ids, review_mask) if review_ids is not None else None,
                      table=self.encode_table(table) if table is not None else None,
                      image=self.encode_images(images, image_mask) if images is not None else None)

    # ---- attention pieces
    def _cross_kv(self, memory: Memory) -> list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Per decoder layer, per modality: (K [N, H, E*S, dh], V, key mask [N, E, S]); see :meth:`entity_kv`."""
        items = memory.items()
        if not items:
            raise ValueError("the memory is empty: give reviews, images or a table")
        if memory.text is None and len(items) > 1:
            raise ValueError("without text, give exactly one of images / table (the unimodal pretraining steps)")
        return [{name: (*self.entity_kv(layer.encoder_attn, ent.states, ent.mask), ent.mask) for name, ent in items}
                for layer in self.bart.model.decoder.layers]

    @staticmethod
    def entity_weights(mask: torch.Tensor) -> torch.Tensor:
        """[N, E, S] key mask -> [N, E]: 1 / (number of non-empty entities) for a non-empty entity, 0 otherwise."""
        entity = mask.any(-1).float()
        return entity / entity.sum(1, keepdim=True).clamp(min=1.0)

    @staticmethod
    def entity_kv(attn: nn.Module, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and entity-weighted V of every entity of every example: states [N, E, S, d], mask [N, E, S] ->
        K, V' [N, H, E*S, dh], contiguous, with V'_e = w_e V_e (:meth:`entity_weights`).

        The entities of a head lie side by side on one key axis (entity j = keys j*S .. j*S+S-1), so the parallel
        mean is one matmul per head over all E*S keys (:meth:`entity_mean_attention`); the mean's weights are folded
        into V once here (per forward / ``generate``; beam search reuses it at every step) rather than into the
        [T, E*S] probabilities at every call."""
        n, e, s, _ = states.shape
        h, dh = attn.num_heads, attn.head_dim

        def heads(y: torch.Tensor) -> torch.Tensor:
            # .contiguous() before merging E and S: reshape alone returns a strided VIEW here (E and S merge
            # without a copy), which torch.matmul would then copy on every call
            return y.view(n, e, s, h, dh).permute(0, 3, 1, 2, 4).contiguous()
        w = MultimodalSum.entity_weights(mask).to(states.dtype)[:, None, :, None, None]  # [N, 1, E, 1, 1]
        return (heads(attn.k_proj(states)).view(n, h, e * s, dh),
                (heads(attn.v_proj(states)) * w).view(n, h, e * s, dh))

    @staticmethod
    def entity_mean_attention(attn: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
        """Parallel-mean cross-attention: x [N, T, d], K and weighted V' [N, H, E*S, dh] (:meth:`entity_kv`), mask
        [N, E, S] -> [N, T, d].

        The mean over the non-empty entities e of softmax_S(q K_e^T) V_e, each entity's softmax over its own keys
        (the paper's parallel encoding), computed as ONE matmul pair: the scores over all E*S keys (q pre-scaled),
        a softmax within each entity's S keys, then the probabilities @ V' over the E*S keys = sum_e w_e
        softmax_e V_e, the weighted mean of the per-entity contexts (an empty entity has w_e = 0)."""
        n, t, d = x.shape
        _, e, s = mask.shape
        h = attn.num_heads
        q = (attn.q_proj(x) * attn.scaling).view(n, t, h, attn.head_dim).transpose(1, 2)  # [N, H, T, dh]
        scores = torch.matmul(q, k.transpose(-1, -2)).view(n, h, t, e, s)  # [N, H, T, E, S], a fresh tensor
        scores.masked_fill_(~mask[:, None, None], torch.finfo(scores.dtype).min)
        probs = F.dropout(F.softmax(scores, dim=-1), p=attn.dropout, training=attn.training)
        ctx = torch.matmul(probs.view(n, h, t, e * s), v)  # [N, H, T, dh]
        return attn.out_proj(ctx.transpose(1, 2).reshape(n, t, d))

    @staticmethod
    def _self_attention(attn: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                        key_valid: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n, t, d = x.shape
        shape = (n, t, attn.num_heads, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        s = k.size(2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # [N, H, T, S]
        qpos = torch.arange(s - t, s, device=x.device)
        allowed = torch.arange(s, device=x.device)[None, :] <= qpos[:, None]  # [T, S]
        allowed = allowed[None, None]
        if key_valid is not None:
            allowed = allowed & key_valid.bool()[:, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = F.dropout(F.softmax(scores, dim=-1), p=attn.dropout, training=attn.training)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(n, t, d)
        return attn.out_proj(out), (k, v)

    def _fused_cross_attention(self, i: int, attn: nn.Module, x: torch.Tensor,
                               kv: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                               stats: dict[str, list]) -> torch.Tensor:
        n, t, d = x.shape
        n_kv = next(iter(kv.values()))[2].size(0)
        if n == n_kv:
            outs = {m: self.entity_mean_attention(attn, x, *kv[m]) for m in kv}
        else:
            # beam search: the memory holds one row per example and x one row per beam (rows ex * beams + j). Cross-
            # attention has no mask between queries, so the beams of an example are its queries: x [B*beams, T, d]
            # -> [B, beams*T, d] against the example's K/V, read once instead of once per beam.
            if n % n_kv:
                raise ValueError(f"decoder rows {n} are not a multiple of the memory's {n_kv} examples")
            folded = x.reshape(n_kv, (n // n_kv) * t, d)
            outs = {m: self.entity_mean_attention(attn, folded, *kv[m]).view(n, t, d) for m in kv}
            kv = {m: (k, v, mask.repeat_interleave(n // n_kv, 0)) for m, (k, v, mask) in kv.items()}
        if "text" not in outs:
            (only,) = outs.values()
            return only
        h = outs["text"]
        zeros = x.new_zeros(x.size(0))
        for modality, proj, key in (("table", self.gates[i].alpha_proj, "alpha"),
                                    ("image", self.gates[i].beta_proj, "beta")):
            if modality not in outs:
                stats[key].append(zeros)
                stats[key + "_present"].append(x.new_full((), float("nan")))
                continue
            other = outs[modality]
            present = kv[modality][2].flatten(1).any(-1)  # [N]
            gate = torch.relu(torch.tanh(proj(torch.cat([h, other], -1))))
            gate = gate.masked_fill(~present[:, None, None], 0.0)
            per_example = gate.detach().mean((1, 2))
            stats[key].append(per_example)
            stats[key + "_present"].append(per_example[present].mean() if present.any()
                                           else x.new_full((), float("nan")))
            h = h + gate * other
        return h

    # ---- decoder
    def decode(self, decoder_input_ids: torch.Tensor, cross_kv: list, delta: torch.Tensor | float | None = None,
               decoder_key_valid: torch.Tensor | None = None, self_cache: list | None = None
               ) -> tuple[torch.Tensor, list]:
        """Decoder logits [N, T, V] for ``decoder_input_ids [N, T]`` after ``self_cache`` (per-layer K/V of the
        previous positions, or None); returns (logits, new cache)."""
        dec = self.bart.model.decoder
        cache_length = 0 if self_cache is None else self_cache[0][0].size(2)
        x = dec.embed_tokens(decoder_input_ids) + dec.embed_positions(decoder_input_ids, cache_length).to(
            self.rating_embedding.dtype)
        if delta is not None:
            delta = torch.as_tensor(delta, dtype=x.dtype, device=x.device).reshape(-1)
            if delta.numel() == 1:
                delta = delta.expand(x.size(0))
            x = x + delta.view(-1, 1, 1) * self.rating_embedding
        x = dec.layernorm_embedding(x)
        x = F.dropout(x, p=dec.dropout, training=self.training)
        stats: dict[str, list] = {"alpha": [], "beta": [], "alpha_present": [], "beta_present": []}
        new_cache = []
        for i, layer in enumerate(dec.layers):
            if self.training and dec.layerdrop > 0.0 and self_cache is None and torch.rand([]) < dec.layerdrop:
                new_cache.append(None)
                continue
            residual = x
            h, kv = self._self_attention(layer.self_attn, x, None if self_cache is None else self_cache[i],
                                         decoder_key_valid)
            x = layer.self_attn_layer_norm(residual + F.dropout(h, p=layer.dropout, training=self.training))
            residual = x
            h = self._fused_cross_attention(i, layer.encoder_attn, x, cross_kv[i], stats)
            x = layer.encoder_attn_layer_norm(residual + F.dropout(h, p=layer.dropout, training=self.training))
            residual = x
            h = layer.activation_fn(layer.fc1(x))
            h = F.dropout(h, p=layer.activation_dropout, training=self.training)
            h = F.dropout(layer.fc2(h), p=layer.dropout, training=self.training)
            x = layer.final_layer_norm(residual + h)
            new_cache.append(kv)
        if stats["alpha"]:
            self.gate_stats = {
                "alpha": torch.stack([s.mean() for s in stats["alpha"]]),
                "beta": torch.stack([s.mean() for s in stats["beta"]]),
                "alpha_present": torch.stack(stats["alpha_present"]),
                "beta_present": torch.stack(stats["beta_present"]),
                "alpha_per_example": torch.stack(stats["alpha"]),  # [layers, N]
                "beta_per_example": torch.stack(stats["beta"]),
            }
        else:
            self.gate_stats = {}
        logits = self.bart.lm_head(x) + self.bart.final_logits_bias.to(x.dtype)
        return logits, new_cache

    def forward(self, review_ids: torch.Tensor | None = None, review_mask: torch.Tensor | None = None, *,
                images: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                table: TableBatch | None = None, memory: Memory | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, delta: torch.Tensor | float | None = None,
                label_smoothing: float = 0.0, pad_in_loss: str = "faithful") -> MultimodalSumOutput:
        """Teacher-forced logits (and the loss when ``labels`` are given). ``decoder_input_ids`` default to the
        official shift of ``labels``; ``decoder_attention_mask`` (1 = a real decoder input) defaults to
        ``decoder_input_ids != pad`` (the official decoder padding mask)."""
        if memory is None:
            memory = self.encode(review_ids, review_mask, images, image_mask, table)
        cfg = self.config
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = official_shift_tokens_right(labels, cfg.pad_token_id, cfg.bos_token_id,
                                                            cfg.eos_token_id)
        if decoder_attention_mask is None:
            decoder_attention_mask = decoder_input_ids.ne(cfg.pad_token_id)
        logits, _ = self.decode(decoder_input_ids, self._cross_kv(memory), delta, decoder_attention_mask)
        loss = None
        if labels is not None:
            loss = label_smoothed_loss(logits, labels, label_smoothing, cfg.pad_token_id, pad_in_loss)
        return MultimodalSumOutput(logits=logits, loss=loss, gate_stats=self.gate_stats)

    def leave_one_out_loss(self, review_ids: torch.Tensor, review_mask: torch.Tensor | None, ratings: torch.Tensor, *,
                           images: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                           table: TableBatch | None = None, label_smoothing: float = 0.0,
                           pad_in_loss: str = "faithful") -> torch.Tensor:
        """The official pseudo-summary objective: the R reviews encoded once, review i the target of the other R - 1
        (delta = rating_i - their mean rating), mean over the R rotations. Every review must be non-empty."""
        memory = self.encode(review_ids, review_mask, images, image_mask, table)
        r = review_ids.size(1)
        if not bool(memory.text.mask.any(-1).all()):
            raise ValueError("leave_one_out_loss needs R non-empty reviews per example")
        losses = []
        for i in range(r):
            keep = [j for j in range(r) if j != i]
            delta = ratings[:, i] - ratings[:, keep].mean(1)
            out = self(memory=memory.select_text(keep), labels=review_ids[:, i], delta=delta,
                       label_smoothing=label_smoothing, pad_in_loss=pad_in_loss)
            losses.append(out.loss)
        return torch.stack(losses).mean()

    # ---- generation
    def _adjust_logits(self, logits: torch.Tensor, cur_len: int, max_length: int, force_bos: bool) -> torch.Tensor:
        if force_bos and cur_len == 1:
            forced = self.config.bos_token_id
        elif cur_len == max_length - 1:
            forced = self.config.eos_token_id
        else:
            return logits
        out = torch.full_like(logits, float("-inf"))
        out[:, forced] = logits[:, forced]
        return out

    def _postprocess(self, scores: torch.Tensor, tokens: torch.Tensor, cur_len: int, min_length: int,
                     no_repeat_ngram_size: int) -> torch.Tensor:
        if cur_len < min_length:
            scores[:, self.config.eos_token_id] = float("-inf")
        if no_repeat_ngram_size > 0:
            for row, banned in enumerate(banned_ngram_tokens(tokens.tolist(), no_repeat_ngram_size)):
                if banned:
                    scores[row, banned] = float("-inf")
        return scores

    @torch.no_grad()
    def generate(self, review_ids: torch.Tensor | None = None, review_mask: torch.Tensor | None = None, *,
                 images: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                 table: TableBatch | None = None, memory: Memory | None = None, num_beams: int = 4,
                 length_penalty: float = 1.0, max_length: int = 20, min_length: int = 0,
                 no_repeat_ngram_size: int = 3, early_stopping: bool = True,
                 delta: torch.Tensor | float | None = None, decoder_start: str = "official") -> torch.Tensor:
        """Beam search (``num_beams > 1``) or greedy decoding -> ids [B, <= max_length], start tokens included,
        padded with pad. ``delta`` defaults to 0 (test time: the average sentiment). Call ``.eval()`` first (the
        official test script does; dropout stays as the module's mode says)."""
        if decoder_start not in ("official", "bos"):
            raise ValueError(f"decoder_start must be 'official' or 'bos', got {decoder_start!r}")
        if memory is None:
            memory = self.encode(review_ids, review_mask, images, image_mask, table)
        b = memory.batch_size
        device = self.rating_embedding.device
        cfg = self.config
        start = cfg.decoder_start_token_id if decoder_start == "official" else cfg.bos_token_id
        force_bos = decoder_start == "official"
        if delta is None:
            delta = torch.zeros(b, device=device)
        delta = torch.as_tensor(delta, dtype=self.rating_embedding.dtype, device=device).reshape(-1).expand(b)
        args = dict(max_length=max_length, min_length=min_length, no_repeat_ngram_size=no_repeat_ngram_size,
                    force_bos=force_bos, start=start)
        if num_beams == 1:
            return self._greedy(memory, delta, **args)
        return self._beam_search(memory, delta, num_beams=num_beams, length_penalty=length_penalty,
                                 early_stopping=early_stopping, **args)

    def _greedy(self, memory: Memory, delta: torch.Tensor, *, max_length: int, min_length: int,
                no_repeat_ngram_size: int, force_bos: bool, start: int) -> torch.Tensor:
        cfg = self.config
        b = memory.batch_size
        device = self.rating_embedding.device
        cross_kv = self._cross_kv(memory)
        tokens = torch.full((b, 1), start, dtype=torch.long, device=device)
        unfinished = torch.ones(b, dtype=torch.bool, device=device)
        cache = None
        cur_len = 1
        while cur_len < max_length:
            logits, cache = self.decode(tokens[:, -1:], cross_kv, delta, None, cache)
            scores = self._adjust_logits(logits[:, -1, :].float(), cur_len, max_length, force_bos)
            scores = self._postprocess(scores, tokens, cur_len, min_length, no_repeat_ngram_size)
            nxt = scores.argmax(-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, cfg.pad_token_id))
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            cur_len += 1
            unfinished &= nxt.ne(cfg.eos_token_id)
            if not bool(unfinished.any()):
                break
        return tokens

    def _beam_search(self, memory: Memory, delta: torch.Tensor, *, num_beams: int, length_penalty: float,
                     early_stopping: bool, max_length: int, min_length: int, no_repeat_ngram_size: int,
                     force_bos: bool, start: int) -> torch.Tensor:
        cfg = self.config
        eos, pad = cfg.eos_token_id, cfg.pad_token_id
        b = memory.batch_size
        device = self.rating_embedding.device
        expand = torch.arange(b, device=device).repeat_interleave(num_beams)
        # computed once; one row per example, whose beams are its queries (``_fused_cross_attention``), unless
        # ``share_memory_across_beams`` is off (then one row per beam, as the official code)
        cross_kv = self._cross_kv(memory if self.share_memory_across_beams else memory.index_batch(expand))
        delta = delta.index_select(0, expand)
        tokens = torch.full((b * num_beams, 1), start, dtype=torch.long, device=device)
        beam_scores = torch.zeros(b, num_beams, device=device)
        beam_scores[:, 1:] = -1e9
        beam_scores = beam_scores.view(-1)
        hyps = [_Hypotheses(num_beams, length_penalty, early_stopping) for _ in range(b)]
        done = [False] * b
        cache = None
        cur_len = 1
        while cur_len < max_length:
            logits, cache = self.decode(tokens[:, -1:], cross_kv, delta, None, cache)
            logits = self._adjust_logits(logits[:, -1, :].float(), cur_len, max_length, force_bos)
            scores = self._postprocess(F.log_softmax(logits, -1), tokens, cur_len, min_length, no_repeat_ngram_size)
            vocab = scores.size(-1)
            next_scores = (scores + beam_scores[:, None]).view(b, num_beams * vocab)
            next_scores, next_ids = torch.topk(next_scores, 2 * num_beams, dim=1)
            next_scores_l, next_ids_l = next_scores.tolist(), next_ids.tolist()
            token_rows = tokens.tolist()
            batch_beam: list[tuple[float, int, int]] = []
            for ex in range(b):
                if done[ex]:
                    batch_beam.extend([(0.0, pad, ex * num_beams)] * num_beams)
                    continue
                sent_beam = []
                for rank, (cand, score) in enumerate(zip(next_ids_l[ex], next_scores_l[ex])):
                    beam_id, token_id = divmod(cand, vocab)
                    row = ex * num_beams + beam_id
                    if token_id == eos:
                        if rank >= num_beams:
                            continue
                        hyps[ex].add(token_rows[row], score)
                    else:
                        sent_beam.append((score, token_id, row))
                    if len(sent_beam) == num_beams:
                        break
                done[ex] = done[ex] or hyps[ex].is_done(max(next_scores_l[ex]), cur_len)
                if len(sent_beam) != num_beams:
                    raise RuntimeError("beam search: fewer live candidates than beams")
                batch_beam.extend(sent_beam)
            if all(done):
                break
            beam_scores = torch.tensor([s for s, _, _ in batch_beam], device=device)
            beam_tokens = torch.tensor([t for _, t, _ in batch_beam], dtype=torch.long, device=device)
            beam_idx = torch.tensor([r for _, _, r in batch_beam], dtype=torch.long, device=device)
            tokens = torch.cat([tokens.index_select(0, beam_idx), beam_tokens[:, None]], 1)
            cache = [(k.index_select(0, beam_idx), v.index_select(0, beam_idx)) for k, v in cache]
            cur_len += 1
        token_rows = tokens.tolist()
        final = beam_scores.tolist()
        for ex in range(b):
            if done[ex]:
                continue
            for beam_id in range(num_beams):
                row = ex * num_beams + beam_id
                hyps[ex].add(token_rows[row], final[row])
        best = [sorted(h.beams, key=lambda sb: sb[0])[-1][1] for h in hyps]  # official: sort, pop the last
        lengths = [len(seq) for seq in best]
        width = min(max(lengths) + 1, max_length)
        out = torch.full((b, width), pad, dtype=torch.long, device=device)
        for ex, seq in enumerate(best):
            out[ex, :len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
            if len(seq) < max_length:
                out[ex, len(seq)] = eos
        return out

    # ---- training steps
    def trainable_parameters(self, step: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) that train in step "1" (text), "2a" (image), "2b" (table) or "3" (multimodal)."""
        if step not in STEPS:
            raise ValueError(f"step must be one of {sorted(STEPS)}, got {step!r}")
        step = STEPS[step]
        out = []
        for name, p in self.named_parameters():
            frozen_cnn = name.startswith(("image_encoder.stage1.", "image_encoder.stage2."))
            if step == "1":
                keep = name.startswith("bart.") or name == "rating_embedding"
            elif step == "2a":
                keep = name.startswith("image_encoder.") and not frozen_cnn
            elif step == "2b":
                keep = name.startswith("table_encoder.")
            else:
                keep = not frozen_cnn
            if keep:
                out.append((name, p))
        if not out:
            raise ValueError(f"step {step}: nothing to train (the model lacks that encoder)")
        return out

    def set_trainable(self, step: str) -> list[tuple[str, nn.Parameter]]:
        """``requires_grad`` True exactly for :meth:`trainable_parameters` of the step; returns them."""
        chosen = self.trainable_parameters(step)
        ids = {id(p) for _, p in chosen}
        for p in self.parameters():
            p.requires_grad_(id(p) in ids)
        return chosen

    _OFFICIAL_NO_DECAY = {"1": ("bias", "layer_norm.weight", "layernorm_embedding.weight"),
                          "2a": ("bias", "bn1.weight", "bn2.weight", "bn3.weight"),
                          "2b": ("bias",),
                          "3": ("bias", "bn1.weight", "bn2.weight", "bn3.weight", "layer_norm.weight",
                                "layernorm_embedding.weight")}

    def param_groups(self, step: str, weight_decay: float = 0.01, rule: str = "type") -> list[dict]:
        """AdamW groups for the step: ``weight_decay`` except biases and LayerNorm / BatchNorm weights (``rule=
        "type"``, by module type) or the official name substrings (``rule="official"``)."""
        chosen = self.trainable_parameters(step)
        if rule == "official":
            subs = self._OFFICIAL_NO_DECAY[STEPS[step]]
            no_decay = {n for n, _ in chosen if any(s in n for s in subs)}
        elif rule == "type":
            norm_weights = set()
            for mname, module in self.named_modules():
                if isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    norm_weights.add(f"{mname}.weight" if mname else "weight")
            no_decay = {n for n, _ in chosen if n.endswith(".bias") or n in norm_weights}
        else:
            raise ValueError(f"rule must be 'type' or 'official', got {rule!r}")
        return [{"params": [p for n, p in chosen if n not in no_decay], "weight_decay": weight_decay,
                 "names": [n for n, _ in chosen if n not in no_decay]},
                {"params": [p for n, p in chosen if n in no_decay], "weight_decay": 0.0,
                 "names": [n for n, _ in chosen if n in no_decay]}]
