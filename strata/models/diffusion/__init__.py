"""Diffusion models (DiT, DDPM U-Net) as ordered layers, noise schedules and samplers."""
