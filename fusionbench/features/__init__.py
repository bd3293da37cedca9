"""Offline item-feature extraction: text (MiniLM), images (EfficientNet-Lite0), modality codes, caching.

Modules are imported on demand (``from fusionbench.features.tables import modality_tables``) so that
importing this package costs nothing and pulls in neither transformers nor torchvision.
"""
