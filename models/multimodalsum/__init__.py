"""MultimodalSum (Im et al., ACL 2021): evaluation protocol and training-free extractive baselines.

`rouge` holds the official ROUGE protocol (spec §5: PlanSum preprocessing + py-rouge 1.1, averaged over references)
and a secondary Google `rouge-score` column; `extractive` holds the random / clustroid / LexRank / oracle review
selectors scored with it. The model itself is not in `models/catalog.py` yet.
"""
