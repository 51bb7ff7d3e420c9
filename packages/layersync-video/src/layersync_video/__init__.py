"""LayerSync video modality: SiT-3D (tubelets), video datasets, FVD.

Placeholder package: it registers no modality yet (see its README).
"""
