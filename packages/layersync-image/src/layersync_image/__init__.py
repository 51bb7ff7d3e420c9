"""LayerSync image plugin: SiT-2D backbone, image datasets, VAE latents and FID."""
