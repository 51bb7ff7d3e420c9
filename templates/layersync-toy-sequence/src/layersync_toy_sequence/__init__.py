"""Template LayerSync plugin: MDM-shaped masked sequence diffusion."""
