"""LayerSync audio modality: audio representation, SiT-1D backbone, FAD.

Placeholder package: it registers no modality yet (see its README).
"""
