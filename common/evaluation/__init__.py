"""How well a head separates COVID-19 from other pneumonia, computed the same
at a site and at the server: the heads (`linear_head.py`) and the features they
are fitted on (`feature_kinds.py`, `radiomics.py`), ROC analysis from pooled
histograms (`metrics.py`), exact DeLong statistics (`roc_stats.py`) and what a
lone site releases about its scores (`site_evaluation.py`)."""
