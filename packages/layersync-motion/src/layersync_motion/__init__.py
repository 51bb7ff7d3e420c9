"""LayerSync motion modality: MDM backbone, Gaussian diffusion, HumanML3D, R-Precision.

Placeholder package: it registers no modality yet (see its README).
"""
