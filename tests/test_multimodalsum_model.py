"""MultimodalSum model (models/multimodalsum/modeling.py): tiny random BART configs, CPU, fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.multimodalsum.modeling import (
    AMAZON_SCHEMA,
    YELP_SCHEMA,
    EntityMemory,
    ImageEncoder,
    Memory,
    MultimodalSum,
    TableEncoder,
    banned_ngram_tokens,
    build_table_batch,
    fit_hours_clusters,
    hours_to_coordinate,
    kmeans,
    label_smoothed_loss,
    official_shift_tokens_right,
    silhouette,
    tiny_bart_config,
    to_binary,
)

PAD, BOS, EOS, V = 1, 0, 2, 96


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster (and kinder to a busy machine); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_tokenizer(text: str) -> list[int]:
    """Deterministic word-level ids in [4, V) (no special tokens), one id per word, two for long words."""
    out = []
    for w in text.split():
        h = sum((i + 1) * ord(c) for i, c in enumerate(w))
        out.append(4 + h % (V - 4))
        if len(w) > 8:
            out.append(4 + (h // 7) % (V - 4))
    return out


def make_model(seed: int = 0, table: str | None = None, image: str | None = None, init_std: float = 0.3,
               eos_bias: float = 0.0) -> MultimodalSum:
    torch.manual_seed(seed)
    model = MultimodalSum(tiny_bart_config(vocab_size=V, init_std=init_std), table_schema=table,
                          image_backbone=image)
    with torch.no_grad():
        model.bart.final_logits_bias.normal_(0.0, 0.1)
        model.bart.final_logits_bias[0, EOS] += eos_bias
    return model.eval()


def reviews(b: int, r: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (b, r, length), generator=g)
    lengths = torch.randint(2, length + 1, (b, r), generator=g)
    mask = torch.arange(length)[None, None, :] < lengths[..., None]
    ids = ids.masked_fill(~mask, PAD)
    return ids, mask


YELP_RECORD = {
    "name": "the golden spoon diner", "categories": ["breakfast brunch", "diners", "coffee tea"],
    "NoiseLevel": "average", "Alcohol": "beer and wine", "RestaurantsAttire": "casual", "WiFi": "free",
    "RestaurantsPriceRange2": "2", "BikeParking": True, "HasTV": False, "Ambience_casual": True,
    "avg_rating": 4.5, "hours_Monday": 1, "hours_Saturday": 3,
}


# ------------------------------------------------------------------------------------- (a) stock BART equivalence
def test_one_text_entity_equals_stock_bart():
    model = make_model()
    ids, mask = reviews(2, 1, 9)
    dec = torch.randint(3, V, (2, 6))
    dec[:, 0] = BOS
    dec[1, 4:] = PAD
    ours = model(review_ids=ids, review_mask=mask, decoder_input_ids=dec)
    ref = model.bart(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=dec,
                     decoder_attention_mask=dec.ne(PAD)).logits
    assert torch.allclose(ours.logits, ref, atol=1e-5)
    # a separately built stock model with the same weights; labels -> the official shift
    from transformers import BartForConditionalGeneration

    stock = BartForConditionalGeneration(model.config).eval()
    stock.load_state_dict(model.bart.state_dict())
    labels = ids[:, 0].clone()
    shifted = official_shift_tokens_right(labels, PAD, BOS, EOS)
    out = model(review_ids=ids, review_mask=mask, labels=labels, delta=0.0)
    ref2 = stock(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=shifted,
                 decoder_attention_mask=shifted.ne(PAD)).logits
    assert torch.allclose(out.logits, ref2, atol=1e-5)
    assert model.gate_stats["alpha"].abs().max() == 0 and model.gate_stats["beta"].abs().max() == 0


def test_from_pretrained_path_uses_official_dropouts(tmp_path):
    from transformers import BartForConditionalGeneration

    cfg = tiny_bart_config(vocab_size=V, attention_dropout=0.1, activation_dropout=0.1)
    BartForConditionalGeneration(cfg).save_pretrained(tmp_path / "bart")
    model = MultimodalSum(str(tmp_path / "bart"), table_schema=None, image_backbone=None)
    assert model.config.attention_dropout == 0.0 and model.config.activation_dropout == 0.0
    assert model.bart.model.decoder.layers[0].encoder_attn.dropout == 0.0
    assert model.bart.model.decoder.layers[0].activation_dropout == 0.0


def test_official_shift_tokens_right():
    labels = torch.tensor([[5, 6, 7, EOS, PAD, PAD], [5, 6, 7, 8, 9, 10]])
    out = official_shift_tokens_right(labels, PAD, BOS, EOS)
    assert out.tolist() == [[BOS, 5, 6, 7, PAD, PAD], [BOS, 5, 6, 7, 8, 9]]


# ----------------------------------------------------------------------------------------- (b) the parallel mean
def test_parallel_mean_equals_entity_loop():
    model = make_model()
    attn = model.bart.model.decoder.layers[1].encoder_attn
    torch.manual_seed(3)
    n, e, s, t, d = 3, 4, 5, 6, model.config.d_model
    states = torch.randn(n, e, s, d)
    lengths = torch.tensor([[5, 3, 1, 4], [2, 0, 5, 0], [0, 0, 0, 3]])  # 0 = an empty entity
    mask = torch.arange(s)[None, None, :] < lengths[..., None]
    x = torch.randn(n, t, d)
    k, v, m = model._cross_kv(Memory(text=EntityMemory(states, mask)))[1]["text"]
    assert k.is_contiguous() and v.is_contiguous() and k.shape == (n, attn.num_heads, e * s, attn.head_dim)
    got = model.entity_mean_attention(attn, x, k, v, m)
    for i in range(n):
        outs = []
        for j in range(e):
            if lengths[i, j] == 0:
                continue
            bias = torch.zeros(1, 1, t, s).masked_fill(~mask[i, j][None, None, None, :], torch.finfo(torch.float32).min)
            out, _ = attn(x[i:i + 1], key_value_states=states[i:i + 1, j], attention_mask=bias)
            outs.append(out)
        assert torch.allclose(got[i:i + 1], torch.stack(outs).mean(0), atol=1e-5)


def test_parallel_mean_model_level_variable_counts():
    model = make_model()
    ids, mask = reviews(2, 3, 8, seed=5)
    # example 1: one real review and two empty ones
    ids[1, 1:] = PAD
    mask[1, 1:] = False
    dec = torch.randint(3, V, (2, 5))
    dec[:, 0] = BOS
    both = model(review_ids=ids, review_mask=mask, decoder_input_ids=dec).logits
    alone1 = model(review_ids=ids[1:, :1], review_mask=mask[1:, :1], decoder_input_ids=dec[1:]).logits
    assert torch.allclose(both[1:], alone1, atol=1e-5)
    # the order of the entities does not matter, empty entities anywhere do not count
    perm = torch.tensor([2, 0, 1])
    ids0 = torch.cat([ids[:1, perm], torch.full((1, 2, 8), PAD)], 1)
    mask0 = torch.cat([mask[:1, perm], torch.zeros(1, 2, 8, dtype=torch.bool)], 1)
    again0 = model(review_ids=ids0, review_mask=mask0, decoder_input_ids=dec[:1]).logits
    assert torch.allclose(both[:1], again0, atol=1e-5)
    assert torch.isfinite(both).all()


# ---------------------------------------------------------------------------------------------------- (c) gates
def test_gates_zero_without_modality_and_open_with_it():
    model = make_model(table="yelp", image="resnet18")
    ids, mask = reviews(3, 2, 7)
    table = build_table_batch([YELP_RECORD, None, YELP_RECORD], YELP_SCHEMA, fake_tokenizer)
    torch.manual_seed(4)
    images = torch.randn(3, 2, 3, 64, 64)
    image_mask = torch.tensor([[True, False], [True, True], [False, False]])
    dec = torch.randint(3, V, (3, 5))
    dec[:, 0] = BOS
    out = model(review_ids=ids, review_mask=mask, images=images, image_mask=image_mask, table=table,
                decoder_input_ids=dec)
    alpha, beta = model.gate_stats["alpha_per_example"], model.gate_stats["beta_per_example"]
    assert alpha.shape == (model.config.decoder_layers, 3)
    assert (alpha[:, 1] == 0).all() and (beta[:, 2] == 0).all()
    assert (alpha[:, [0, 2]] > 0).all() and (beta[:, [0, 1]] > 0).all()
    assert torch.isfinite(model.gate_stats["alpha_present"]).all()
    # a fully masked table has no influence at all: example 1 equals a run without any table
    alone = model(review_ids=ids[1:2], review_mask=mask[1:2], images=images[1:2], image_mask=image_mask[1:2],
                  decoder_input_ids=dec[1:2])
    assert torch.allclose(out.logits[1:2], alone.logits, atol=1e-5)
    # no table, no images: both gates 0
    model(review_ids=ids, review_mask=mask, decoder_input_ids=dec)
    assert (model.gate_stats["alpha"] == 0).all() and (model.gate_stats["beta"] == 0).all()
    # eval mode: encoding only the real photos gives the same result as encoding the padding photos too
    model.encode_padding_images = False
    only_real = model(review_ids=ids, review_mask=mask, images=images, image_mask=image_mask, table=table,
                      decoder_input_ids=dec)
    assert torch.allclose(only_real.logits, out.logits, atol=1e-5)
    # training: gradients reach the gates, the rating vector, the table and image encoders, not conv1..layer2
    model.encode_padding_images = True
    model.train()
    loss = model(review_ids=ids, review_mask=mask, images=images, image_mask=image_mask, table=table,
                 labels=dec, delta=torch.tensor([0.5, -1.0, 0.0]), label_smoothing=0.1).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("gates.0.alpha_proj.weight", "gates.1.beta_proj.weight", "rating_embedding",
                 "table_encoder.fc.weight", "image_encoder.proj.weight", "bart.model.shared.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None for n, g in grads.items() if n.startswith(("image_encoder.stage1.", "image_encoder.stage2.")))


def test_unimodal_pretraining_modes():
    model = make_model(table="yelp", image="resnet18")
    table = build_table_batch([YELP_RECORD, YELP_RECORD], YELP_SCHEMA, fake_tokenizer)
    labels = torch.randint(3, V, (2, 6))
    out = model(table=table, labels=labels, label_smoothing=0.1)
    assert torch.isfinite(out.loss) and model.gate_stats == {}
    out = model(images=torch.randn(2, 1, 3, 32, 32), labels=labels, delta=0.0)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError):
        model(images=torch.randn(2, 1, 3, 32, 32), table=table, labels=labels)


# -------------------------------------------------------------------------------------------- (d) rating vector
def test_rating_vector_changes_logits_only_when_delta_nonzero():
    model = make_model()
    ids, mask = reviews(2, 2, 7)
    labels = torch.randint(3, V, (2, 5))
    base = model(review_ids=ids, review_mask=mask, labels=labels).logits
    zero = model(review_ids=ids, review_mask=mask, labels=labels, delta=torch.zeros(2)).logits
    assert torch.equal(base, zero)
    moved = model(review_ids=ids, review_mask=mask, labels=labels, delta=torch.tensor([0.0, 1.5])).logits
    assert torch.equal(moved[0], base[0])
    assert (moved[1] - base[1]).abs().max() > 1e-3
    # it enters before layernorm_embedding: the embedding output is LN(tok + pos + delta * r)
    dec = model.bart.model.decoder
    x = dec.embed_tokens(labels) + dec.embed_positions(labels, 0) + 1.5 * model.rating_embedding
    assert torch.isfinite(dec.layernorm_embedding(x)).all()


# -------------------------------------------------------------------------------------------- (e) image encoder
def test_image_encoder_tokens_and_frozen_stages():
    enc = ImageEncoder(32, "resnet18")
    images = torch.randn(1, 3, 224, 224)
    tokens = enc(images)
    assert tokens.shape == (1, 196, 32)
    tokens.pow(2).mean().backward()
    for name, p in enc.named_parameters():
        if name.startswith(("stage1.", "stage2.")):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert set(enc.frozen_parameter_names()) == {n for n, _ in enc.named_parameters()
                                                  if n.startswith(("stage1.", "stage2."))}
    big = ImageEncoder(16, "resnet101")
    assert big.proj.in_features == 1024 and big.proj.bias is None
    assert big(torch.randn(1, 3, 32, 32)).shape == (1, 4, 16)


def test_image_weights_path(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    enc = ImageEncoder(8, "resnet18", weights_path=str(tmp_path / "r18.pth"))
    assert torch.equal(enc.stage3[0].conv1.weight, net.layer3[0].conv1.weight)


# -------------------------------------------------------------------------------------------- (f) table encoder
def test_table_encoder_frozen_embedding():
    weight = torch.nn.Parameter(torch.randn(V, 16))
    enc = TableEncoder(16, YELP_SCHEMA.numeric_dims)
    batch = build_table_batch([YELP_RECORD, None], YELP_SCHEMA, fake_tokenizer)
    states, mask = enc(batch, weight)
    assert states.shape == (2, 47, 16) and mask.shape == (2, 47)
    states.pow(2).sum().backward()
    assert weight.grad is None
    assert enc.fc.weight.grad is not None and enc.linear.weight.grad is not None
    assert enc.numeric["rating"].weight.grad is not None and enc.numeric["hours"].weight.grad is not None
    # the model: step 2b trains the table encoder only; the shared BART embedding gets no gradient
    model = make_model(table="yelp")
    model.set_trainable("2b")
    out = model(table=batch.to("cpu"), labels=torch.randint(3, V, (2, 5)))
    out.loss.backward()
    assert model.bart.model.shared.weight.grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("table_encoder."))


def test_table_batch_yelp():
    clusters = fit_hours_clusters(["08:00-16:00"] * 3 + ["11:00-23:00"] * 3 + ["17:00-02:00"] * 2 + ["06:00-11:00"] * 2,
                                  ks=(2, 3), coverage=None)
    rec = dict(YELP_RECORD, hours_Tuesday="11:00-22:00")
    batch = build_table_batch([rec, None, {"name": "x"}], YELP_SCHEMA, fake_tokenizer, hours_clusters=clusters)
    assert batch.num_fields == 47 and batch.name_ids.shape[0] == 47
    names = YELP_SCHEMA.field_names
    fm = batch.field_mask
    assert not fm[1].any() and fm[0].any()  # a missing table is all masked
    assert fm[2, names.index("name")] and fm[2, names.index("ratings")]  # official: always present
    assert not fm[2, names.index("category")] and not fm[2, names.index("bike parking")]
    assert fm[0, names.index("bike parking")] and fm[0, names.index("has tv")]  # False -> "false" is a value
    assert not fm[0, names.index("wheelchair accessible")]
    assert fm[0, names.index("hours monday")] and not fm[0, names.index("hours sunday")]
    assert fm[0, names.index("hours tuesday")]
    stars = [g for g in batch.numeric_groups if g.kind == "rating"][0]
    assert stars.codes[0, 0].tolist() == [1, 0, 0, 1]  # 4.5 -> 100|1
    hours = [g for g in batch.numeric_groups if g.kind == "hours"][0]
    assert hours.codes.shape == (3, 7, 4) and hours.codes[0, 0].tolist() == [0, 1, 0, 0]
    # a category list is a mean over its strings: [a, a] encodes like [a]
    enc = TableEncoder(16, YELP_SCHEMA.numeric_dims)
    weight = torch.randn(V, 16)
    one = build_table_batch([dict(YELP_RECORD, categories=["diners"])], YELP_SCHEMA, fake_tokenizer)
    two = build_table_batch([dict(YELP_RECORD, categories="diners, diners")], YELP_SCHEMA, fake_tokenizer)
    assert torch.allclose(enc(one, weight)[0], enc(two, weight)[0], atol=1e-5)


def test_table_batch_amazon():
    rec = {"price": 19.99, "avg_rating": 4.3, "brand": "acme", "name": "a very nice kettle",
           "category_paths": [["home and kitchen", "kettles"], ["appliances"]], "description": "boils water fast"}
    batch = build_table_batch([rec, {"avg_rating": 3.0}], AMAZON_SCHEMA, fake_tokenizer)
    assert batch.num_fields == 133
    fm = batch.field_mask
    assert fm[0, :6].all() and fm[0, 5:8].all() and not fm[0, 8:].any()  # 3 description tokens
    assert not fm[1, 0] and fm[1, 1] and not fm[1, 2] and fm[1, 4]  # price 0 masked; rating, category always
    price = [g for g in batch.numeric_groups if g.kind == "price"][0]
    assert price.codes[0, 0].tolist() == to_binary(20.0, 11)
    states, mask = TableEncoder(16, AMAZON_SCHEMA.numeric_dims)(batch, torch.randn(V, 16))
    assert states.shape == (2, 133, 16) and torch.isfinite(states).all()


def test_to_binary_official_codes():
    assert to_binary(4.5, 4, rounding=False) == [1, 0, 0, 1]
    assert to_binary(5.0, 4, rounding=False) == [1, 0, 1, 0]
    assert to_binary(0.0, 11) == [0] * 11
    assert to_binary(4.3, 4) == [1, 0, 0, 1]  # rounded to 4.5
    assert to_binary(4.2, 4) == [1, 0, 0, 0]
    assert to_binary(3000.0, 11) == [1] * 11  # clamped
    assert hours_to_coordinate("17:30-02:00") == (17.5, 26.0)


def test_hours_clusters_kmeans_and_silhouette():
    rng = np.random.RandomState(0)
    groups = [(8, 16), (11, 22), (17, 26), (6, 11)]
    strings = []
    for s, e in groups:
        for _ in range(12):
            a, b = s + rng.randint(-1, 2) * 0.5, e + rng.randint(-1, 2) * 0.5
            strings.append(f"{int(a):02d}:{int(60 * (a % 1)):02d}-{int(b % 24):02d}:{int(60 * (b % 1)):02d}")
    fit = fit_hours_clusters(strings, seed=0, coverage=None)
    assert fit.k == 4 and set(fit.scores) <= {3, 4, 5, 7, 10}
    pred = fit.predict(["08:00-16:00", "11:00-22:00", "17:00-02:00", "06:00-11:00"])
    assert len(set(pred.tolist())) == 4
    assert fit_hours_clusters(strings, seed=0).k >= 3  # with the official 90% coverage filter
    x = rng.rand(30, 2)
    labels, centers, inertia = kmeans(x, 3, seed=1)
    assert np.isclose(inertia, ((x - centers[labels]) ** 2).sum())
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert np.isclose(silhouette(x, labels), sklearn_metrics.silhouette_score(x, labels))


# --------------------------------------------------------------------------------------------- (g) generation
def reference_greedy(model, memory, max_length):
    """Greedy decoding by full re-computation (no cache), official forcing rules."""
    b = memory.batch_size
    tokens = torch.full((b, 1), EOS)
    unfinished = torch.ones(b, dtype=torch.bool)
    for cur_len in range(1, max_length):
        logits = model(memory=memory, decoder_input_ids=tokens,
                       decoder_attention_mask=torch.ones_like(tokens, dtype=torch.bool), delta=0.0).logits[:, -1]
        if cur_len == 1:
            nxt = torch.full((b,), BOS)
        elif cur_len == max_length - 1:
            nxt = torch.full((b,), EOS)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, PAD))
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        unfinished &= nxt.ne(EOS)
        if not unfinished.any():
            break
    return tokens


@torch.no_grad()
def test_greedy_generation_matches_full_recompute():
    model = make_model(seed=2, eos_bias=2.2)
    ids, mask = reviews(4, 3, 7, seed=9)
    ids[2, 1:] = PAD
    mask[2, 1:] = False
    memory = model.encode(ids, mask)
    got = model.generate(memory=memory, num_beams=1, max_length=14, no_repeat_ngram_size=0)
    ref = reference_greedy(model, memory, 14)
    assert torch.equal(got, ref)
    lengths = (got.ne(PAD)).sum(1)
    assert got[:, :2].tolist() == [[EOS, BOS]] * 4
    # the beam-search code path with one beam gives the greedy output too
    beam1 = model._beam_search(memory, torch.zeros(4), num_beams=1, length_penalty=1.0, early_stopping=True,
                               max_length=14, min_length=0, no_repeat_ngram_size=0, force_bos=True, start=EOS)
    assert torch.equal(beam1, got[:, :beam1.size(1)]) and (got[:, beam1.size(1):] == PAD).all()
    assert lengths.min() >= 3
    # the training-consistent start: <s> first, nothing forced
    bos_start = model.generate(memory=memory, num_beams=2, max_length=8, decoder_start="bos")
    assert (bos_start[:, 0] == BOS).all() and bos_start.size(1) <= 8


@torch.no_grad()
def test_beam_search_shapes_trigrams_and_batching():
    model = make_model(seed=4, eos_bias=4.5)
    ids, mask = reviews(3, 2, 7, seed=11)
    out = model.generate(ids, mask, num_beams=3, length_penalty=1.0, max_length=16, no_repeat_ngram_size=3)
    assert out.dim() == 2 and out.size(0) == 3 and out.size(1) <= 16
    assert len(set(out.ne(PAD).sum(1).tolist())) > 1  # one summary ends early, the others run to max_length
    assert out[:, :2].tolist() == [[EOS, BOS]] * 3
    for row in out.tolist():
        seq = row[:row.index(EOS, 1) + 1] if EOS in row[1:] else row
        assert all(t == PAD for t in row[len(seq):])
        trigrams = [tuple(seq[i:i + 3]) for i in range(len(seq) - 2)]
        assert len(trigrams) == len(set(trigrams)), row
    # each example alone gives the same summary as in the batch
    for i in range(3):
        alone = model.generate(ids[i:i + 1], mask[i:i + 1], num_beams=3, max_length=16, no_repeat_ngram_size=3)
        row = out[i, :alone.size(1)]
        assert torch.equal(row, alone[0]) and (out[i, alone.size(1):] == PAD).all()
    # without the n-gram ban the tiny model repeats itself
    free = model.generate(ids, mask, num_beams=3, max_length=16, no_repeat_ngram_size=0)
    assert free.size(0) == 3


@torch.no_grad()
def test_beam_search_shared_memory_equals_memory_per_beam():
    """Beam search reads one memory row per example (its beams are that row's queries); the official layout repeats
    the memory per beam. Same logits at every step, so the same ids, with all three modalities and empty entities."""
    model = make_model(seed=6, table="yelp", image="resnet18", eos_bias=2.0)
    ids, mask = reviews(3, 3, 7, seed=12)
    ids[1, 2:] = PAD
    table = build_table_batch([YELP_RECORD, None, YELP_RECORD], YELP_SCHEMA, fake_tokenizer)
    torch.manual_seed(7)
    images = torch.randn(3, 2, 3, 64, 64)
    image_mask = torch.tensor([[True, False], [False, False], [True, True]])
    memory = model.encode(ids, mask, images, image_mask, table)
    kw = dict(num_beams=4, max_length=14, no_repeat_ngram_size=3)
    shared = model.generate(memory=memory, **kw)
    model.share_memory_across_beams = False
    per_beam = model.generate(memory=memory, **kw)
    assert torch.equal(shared, per_beam)
    # one decoding step: the folded cross-attention equals the expanded one (and the gates per row)
    expand = torch.arange(3).repeat_interleave(4)
    x = torch.randn(12, 1, model.config.d_model)
    attn = model.bart.model.decoder.layers[0].encoder_attn
    stats = {k: [] for k in ("alpha", "beta", "alpha_present", "beta_present")}
    folded = model._fused_cross_attention(0, attn, x, model._cross_kv(memory)[0], stats)
    stats2 = {k: [] for k in stats}
    expanded = model._fused_cross_attention(0, attn, x, model._cross_kv(memory.index_batch(expand))[0], stats2)
    assert torch.allclose(folded, expanded, atol=1e-5)
    assert torch.allclose(stats["alpha"][0], stats2["alpha"][0]) and stats["alpha"][0].shape == (12,)
    assert (stats["beta"][0][4:8] == 0).all()  # example 1 has no real photo
    with pytest.raises(ValueError, match="not a multiple"):
        model._fused_cross_attention(0, attn, x[:10], model._cross_kv(memory)[0], stats)


def test_banned_ngrams():
    assert banned_ngram_tokens([[5, 6, 7, 5, 6]], 3) == [[7]]
    assert banned_ngram_tokens([[5, 6]], 3) == [[]]


# ------------------------------------------------------------------------------------------------- (h) loss
def test_pad_in_loss_faithful_vs_fixed():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V)
    labels = torch.randint(3, V, (2, 5))
    for eps in (0.0, 0.1):
        a = label_smoothed_loss(logits, labels, eps, PAD, "faithful")
        b = label_smoothed_loss(logits, labels, eps, PAD, "fixed")
        assert torch.allclose(a, b, atol=1e-6)
    padded = labels.clone()
    padded[1, 3:] = PAD
    a = label_smoothed_loss(logits, padded, 0.0, PAD, "faithful")
    b = label_smoothed_loss(logits, padded, 0.0, PAD, "fixed")
    assert not torch.allclose(a, b)
    assert torch.allclose(a, F.cross_entropy(logits.view(-1, V), padded.view(-1)), atol=1e-6)
    keep = padded.ne(PAD)
    assert torch.allclose(b, F.cross_entropy(logits[keep], padded[keep]), atol=1e-6)
    # the official LabelSmoothingLoss: eps / (V - 1) off target, 1 - eps on it, mean over all positions
    eps = 0.1
    logp = logits.view(-1, V).log_softmax(-1)
    true = torch.full_like(logp, eps / (V - 1)).scatter_(1, padded.view(-1, 1), 1 - eps)
    assert torch.allclose(label_smoothed_loss(logits, padded, eps, PAD, "faithful"),
                          (-true * logp).sum(-1).mean(), atol=1e-6)
    with pytest.raises(ValueError):
        label_smoothed_loss(logits, padded, 0.0, PAD, "other")


def test_model_loss_and_leave_one_out():
    model = make_model()
    ids, mask = reviews(2, 3, 6, seed=13)
    ratings = torch.tensor([[5.0, 3.0, 4.0], [1.0, 2.0, 2.0]])
    loo = model.leave_one_out_loss(ids, mask, ratings, label_smoothing=0.1)
    manual = []
    for i in range(3):
        keep = [j for j in range(3) if j != i]
        manual.append(model(review_ids=ids[:, keep], review_mask=mask[:, keep], labels=ids[:, i],
                            delta=ratings[:, i] - ratings[:, keep].mean(1), label_smoothing=0.1).loss)
    assert torch.allclose(loo, torch.stack(manual).mean(), atol=1e-5)
    f = model(review_ids=ids[:, 1:], review_mask=mask[:, 1:], labels=ids[:, 0], pad_in_loss="faithful").loss
    x = model(review_ids=ids[:, 1:], review_mask=mask[:, 1:], labels=ids[:, 0], pad_in_loss="fixed").loss
    assert bool(ids[:, 0].eq(PAD).any()) and not torch.allclose(f, x)


# ------------------------------------------------------------------------------------- (i) trainable parameters
def test_trainable_parameters_per_step():
    model = make_model(table="yelp", image="resnet18")
    names = {s: {n for n, _ in model.trainable_parameters(s)} for s in ("1", "2a", "2b", "3")}
    all_names = {n for n, _ in model.named_parameters()}
    frozen_cnn = {n for n in all_names if n.startswith(("image_encoder.stage1.", "image_encoder.stage2."))}
    assert frozen_cnn
    assert names["1"] == {n for n in all_names if n.startswith("bart.")} | {"rating_embedding"}
    assert "bart.model.shared.weight" in names["1"]
    assert names["2a"] == {n for n in all_names if n.startswith("image_encoder.")} - frozen_cnn
    assert names["2a"] and all(n.startswith(("image_encoder.stage3.", "image_encoder.proj.")) for n in names["2a"])
    assert names["2b"] == {n for n in all_names if n.startswith("table_encoder.")}
    assert not any("shared" in n or "embed" in n for n in names["2b"])
    assert names["3"] == all_names - frozen_cnn
    assert {"rating_embedding", "gates.0.alpha_proj.weight", "bart.model.shared.weight"} <= names["3"]
    model.set_trainable("2a")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names["2a"]
    groups = model.param_groups("3")
    decay, no_decay = set(groups[0]["names"]), set(groups[1]["names"])
    assert decay | no_decay == names["3"] and not decay & no_decay
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert "bart.model.decoder.layers.0.self_attn_layer_norm.weight" in no_decay
    assert "bart.model.encoder.layernorm_embedding.weight" in no_decay
    assert "image_encoder.stage3.0.bn1.weight" in no_decay and "image_encoder.stage3.0.downsample.1.weight" in no_decay
    assert "gates.1.beta_proj.bias" in no_decay and "rating_embedding" in decay
    official = model.param_groups("3", rule="official")
    assert "image_encoder.stage3.0.downsample.1.weight" in official[0]["names"]
    torch.optim.AdamW(groups, lr=1e-5)  # the extra "names" key is kept by torch optimizers
    with pytest.raises(ValueError):
        model.trainable_parameters("4")
